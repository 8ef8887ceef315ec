"""Does a request's output depend on what ran before it? The issue's cases, on real models, for
this checkout's engine and (optionally) another checkout's, in one process.

    .venv/bin/python benchmarks/determinism.py L.gguf F.gguf B.gguf [--other /tmp/old]

Cases (greedy unless said): the same chat request fresh, after an unrelated request, repeated
at once; logprobs(q) after a request for a shorter prefix of q; the server's echo of a text
(score(ids[:1], ids[1:])) against score(prompt, continuation) of the same text; a seeded
sampled request after other requests. Prints, per engine, whether the text repeats and the
largest log-prob difference in nats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_compare import import_as  # noqa: E402

import localeft  # noqa: E402

ASK = [{"role": "user", "content": "Give me a one-liner to reverse a string s in Python."}]
FIB = "def fib(n):"
Q = "The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly. " * 3
PROMPT, CHOICE = "Question: What is the capital of France?\nAnswer:", " The capital is Paris."


def lps(g) -> np.ndarray:
    return np.array([r.logprob for r in g.logprobs])


def cases(pkg, trio: dict, n_ctx: int) -> dict[str, str]:
    out = {}

    def fresh():
        return pkg.Emulator(**trio, n_ctx=n_ctx, overlap=False)

    kw = dict(max_tokens=24, temperature=0.0, logprobs=1)
    em = fresh()
    ref = em.chat(ASK, **kw)
    em.close()
    em = fresh()
    em.generate("Once upon a time", max_tokens=8)
    unrelated = em.chat(ASK, **kw)
    repeated = em.chat(ASK, **kw)
    for name, g in (("after an unrelated request", unrelated), ("repeated at once", repeated)):
        n = min(len(g.logprobs), len(ref.logprobs))
        diff = np.abs(lps(g)[:n] - lps(ref)[:n]).max()
        out[f"chat, {name}"] = f"same text: {g.text == ref.text}, max |d logprob| {diff:.3g}"
    # the server's identical fib request, twice
    a = em.generate(FIB, **kw)
    b = em.generate(FIB, **kw)
    diff = np.abs(lps(a)[: len(b.logprobs)] - lps(b)[: len(a.logprobs)]).max()
    out["raw 'def fib(n):' twice"] = f"same text: {a.text == b.text}, max |d logprob| {diff:.3g}"
    em.close()
    # logprobs(q) after a shorter prefix
    em = fresh()
    want = em.logprobs(Q)
    em.close()
    em = fresh()
    em.logprobs(Q[: len(Q) // 3])
    got = em.logprobs(Q)
    finite = np.isfinite(want)  # (ids never generated, such as padding, are -inf in both)
    same_inf = np.array_equal(finite, np.isfinite(got))
    d = np.abs(got[finite] - want[finite]).max()
    out["logprobs(q) after a shorter prefix"] = f"max |d| {d:.3g} nats (same -inf: {same_inf})"
    # echo vs score of the same text
    ids = em.prompt_tokens(PROMPT + CHOICE)["ft"]
    s = em.score(PROMPT, CHOICE)
    echo = em.score(ids[:1], ids[1:])
    m = len(s.tokens)
    d = np.abs(np.array([t.logprob for t in echo.tokens[-m:]]) - [t.logprob for t in s.tokens])
    out["echo vs score of one text"] = f"max |d| {d.max():.3g} nats over {m} tokens"
    # a seeded sampled request in two histories
    skw = dict(max_tokens=24, temperature=0.8, top_p=0.95, seed=3, logprobs=1)
    first = em.chat(ASK, **skw)
    em.generate("Hello", max_tokens=4)
    second = em.chat(ASK, **skw)
    out["sampled (seed 3), two histories"] = f"same text: {first.text == second.text}"
    em.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("large_base")
    ap.add_argument("small_ft")
    ap.add_argument("small_base")
    ap.add_argument("--other", type=Path, help="another checkout to compare (e.g. an old one)")
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    a = ap.parse_args()
    trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
    engines = {"this": localeft}
    if a.other:
        engines["other"] = import_as(a.other, "localeft_other")
    for name, pkg in engines.items():
        print(f"== {name} ({Path(pkg.__file__).parent})")
        for case, result in cases(pkg, trio, a.ctx_size).items():
            print(f"  {case:<38} {result}")


if __name__ == "__main__":
    main()
