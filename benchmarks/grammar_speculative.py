"""Speculative decoding with a grammar, against plain decoding, on real models: a one-token
reply (a yes/no grammar) and a short JSON-schema reply, greedy and sampled, alternating plain
and speculative in one run. Prints the median seconds of each, their ratio, the llama_decode
calls and tokens each model decoded for the last reply of each (the work itself, which a busy
machine does not blur), and the stats of the last speculative run (generated, drafted,
accepted).

Times are the reply's own (`Stats.decode_seconds`: without the prompt's evaluation, which
differs between the two as their caches do).

    .venv/bin/python benchmarks/grammar_speculative.py L.gguf F.gguf B.gguf --reps 5
    (--source DIR runs another checkout's localeft, to compare)
"""

from __future__ import annotations

import collections
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trioargs import trio_parser  # noqa: E402

MESSAGES = [{"role": "user", "content": "Is Python dynamically typed? Answer yes or no."}]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["name", "year"],
}
CASES = {
    "yes/no": dict(grammar='root ::= "yes" | "no"', max_tokens=8),
    "schema": dict(json_schema=SCHEMA, max_tokens=40),
}


def counting(context) -> collections.Counter:
    """Count each model's llama_decode calls and tokens (Context._decode wrapped)."""
    counts: collections.Counter = collections.Counter()
    real = context.Context._decode

    def decode(self, chunk, *args, **kw):
        name = self.model.path.stem
        counts[name, "calls"] += 1
        counts[name, "tokens"] += len(chunk)
        return real(self, chunk, *args, **kw)

    context.Context._decode = decode
    return counts


def shown(counts) -> str:
    names = sorted({name for name, _ in counts})
    return "; ".join(f"{n} {counts[n, 'calls']} calls/{counts[n, 'tokens']} tokens" for n in names)


def main() -> None:
    ap = trio_parser(__doc__, tokens=40, reps=5)
    ap.add_argument("--source", default=str(Path(__file__).resolve().parent.parent))
    args = ap.parse_args()
    sys.path.insert(0, args.source)
    from localeft import Emulator, context

    counts = counting(context)
    em = Emulator(args.large_base, args.small_ft, args.small_base)
    for name, kw in CASES.items():
        for temperature in (0.0, 1.0):
            times: dict[bool, list[float]] = {False: [], True: []}
            work, last = {}, None
            for rep in range(args.reps + 1):  # the first round warms the caches up
                for spec in (False, True):
                    counts.clear()
                    g = em.chat(MESSAGES, speculative=spec, temperature=temperature, seed=rep, **kw)
                    work[spec] = shown(counts)
                    if rep:
                        times[spec].append(g.stats.decode_seconds)
                    if spec:
                        last = g
            plain, spec = statistics.median(times[False]), statistics.median(times[True])
            s = last.stats
            print(
                f"{name:7} T={temperature:g}: plain {plain:.2f} s, speculative {spec:.2f} s "
                f"({spec / plain:.2f}x); last speculative: {len(last.tokens)} generated, "
                f"{s.drafted} drafted, {s.accepted} accepted\n"
                f"    decoded, plain: {work[False]}\n    decoded, speculative: {work[True]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
