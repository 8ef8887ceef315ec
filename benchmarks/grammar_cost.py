"""What a JSON schema costs per EFT step, on real models.

In one run, alternating: EFT generation of a JSON reply with the schema and without (greedy and
sampled), median ms/token; then llama.cpp's grammar engine alone on a real row: a full mask of
the vocabulary, and the one-token check that serves most steps (the drawn token is asked about
alone; only a rejected draw pays for a full mask).

    .venv/bin/python benchmarks/grammar_cost.py L.gguf F.gguf B.gguf -n 64 --reps 5
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from trioargs import trio_parser  # noqa: E402

from localeft import Emulator  # noqa: E402
from localeft.grammar import Grammar, schema_grammar  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "languages"],
}
PROMPT = [
    {
        "role": "user",
        "content": "Describe a fictional programmer as JSON with name, age and languages.",
    }
]


def main() -> None:
    ap = trio_parser(__doc__, tokens=64, reps=5)
    a = ap.parse_args()
    em = Emulator(a.large_base, a.small_ft, a.small_base, n_ctx=2048)
    em.chat(PROMPT, max_tokens=2)
    variants = {
        "greedy": {},
        "greedy+schema": {"json_schema": SCHEMA},
        "T0.8": {"temperature": 0.8, "seed": 1},
        "T0.8+schema": {"temperature": 0.8, "seed": 1, "json_schema": SCHEMA},
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    masks = []
    for rep in range(a.reps):
        names = list(variants)[rep % 4 :] + list(variants)[: rep % 4]
        for name in names:
            g = em.chat(PROMPT, max_tokens=a.tokens, speculative=False, **variants[name])
            times[name].append(g.stats.decode_seconds / max(g.stats.generated_tokens, 1))
            if rep == 0 and "schema" in name:
                print(f"{name}: {g.finish_reason}, {g.text[:100]!r}", file=sys.stderr)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<16}{v:8.1f} ms/token")
    for base in ("greedy", "T0.8"):
        extra = med[base + "+schema"] - med[base]
        print(f"schema cost, {base}: {extra:+.1f} ms/token ({100 * extra / med[base]:+.1f}%)")
    # the engine alone, on a real row
    group = em.group
    rows = [r.ctx.logits(1)[0] for r in group.roles]
    row = group.combiner(1.0).combine(rows).copy()
    grammar = Grammar(group.ft_model, schema_grammar(json.dumps(SCHEMA)))
    for prefix in ("", '{"name": "Ada", "age": 3'):
        state = grammar.clone()
        for tok in group.ft_model.tokenize(prefix, add_bos=False, special=False):
            state.accept(tok)
        full, one = [], []
        for _ in range(20):
            t = time.perf_counter()
            state.mask(row.copy())
            full.append(time.perf_counter() - t)
            t = time.perf_counter()
            state.allows(int(np.argmax(row)))
            one.append(time.perf_counter() - t)
        masks.append((prefix, 1000 * statistics.median(full), 1000 * statistics.median(one)))
    for prefix, f, o in masks:
        print(f"after {prefix!r:<28} full mask {f:.2f} ms, one-token check {o:.3f} ms")
    em.close()


if __name__ == "__main__":
    main()
