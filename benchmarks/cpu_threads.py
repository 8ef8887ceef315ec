#!/usr/bin/env python3
"""Is it faster on a CPU to decode the EFT models one after another with every core each, or
concurrently in Python threads (ctypes releases the GIL) with the cores split between them?

    python benchmarks/cpu_threads.py LARGE SMALL_FT SMALL_BASE [-n 24]

Prints the median ms per EFT step (three decodes) for each layout, measured alternately.
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import llama_cpp  # noqa: F401

from localeft.backend import Model
from localeft.context import Context
from localeft.native import default_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs=3)
    ap.add_argument("-n", type=int, default=24)
    a = ap.parse_args()
    cores = default_threads()
    models = {p: Model(p) for p in dict.fromkeys(a.paths)}
    prompt = models[a.paths[0]].tokenize("def fibonacci(n):\n    ")
    # Layout 1: sequential, all cores per model. Layout 2: large on cores-1 threads, the two
    # small ones (one after the other) on 1 thread, both groups at once.
    seq = [Context(models[p], n_ctx=512, n_threads=cores) for p in a.paths]
    par_large = Context(models[a.paths[0]], n_ctx=512, n_threads=max(1, cores - 1))
    par_small = [Context(models[p], n_ctx=512, n_threads=1) for p in a.paths[1:]]
    pool = ThreadPoolExecutor(2)
    for c in seq + [par_large] + par_small:
        c.eval(prompt, 1)

    def step_seq(tok):
        for c in seq:
            c.eval([tok], 1)

    def step_par(tok):
        f = pool.submit(par_large.eval, [tok], 1)
        for c in par_small:
            c.eval([tok], 1)
        f.result()

    times = {"sequential": [], "threads": []}
    for i in range(a.n):
        for name, fn in (("sequential", step_seq), ("threads", step_par))[:: 1 if i % 2 else -1]:
            t = time.perf_counter()
            fn(prompt[-1])
            times[name].append(time.perf_counter() - t)
    for name, v in times.items():
        print(f"{name:<11} {1000 * statistics.median(v):7.1f} ms per EFT step (cores={cores})")


if __name__ == "__main__":
    main()
