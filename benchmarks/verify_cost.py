#!/usr/bin/env python3
"""Cost of verifying a block of k tokens in one batch (logits at every position) vs one step.

    python benchmarks/verify_cost.py MODEL.gguf [-ngl N]

Speculative decoding pays where this stays near 1x (GPU); on a CPU it grows almost linearly.
"""

import argparse
import statistics
import time

import llama_cpp  # noqa: F401  (before numpy)

from localeft.backend import Model
from localeft.context import Context


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-ngl", type=int, default=0)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    m = Model(a.model, n_gpu_layers=a.ngl)
    c = Context(m, n_ctx=2048)
    prompt = m.tokenize("def fibonacci(n):\n    " * 10)
    c.eval(prompt, 1)
    start = len(c.tokens)
    base = None
    for k in (1, 2, 4, 8, 12, 16):
        times = []
        for _ in range(a.reps):
            c.truncate(start)
            t = time.perf_counter()
            c.eval(prompt[:k], k)
            times.append(time.perf_counter() - t)
        ms = 1000 * statistics.median(times)
        base = base or ms
        print(f"k={k:<3} {ms:8.2f} ms  x{ms / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
