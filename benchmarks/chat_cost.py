"""What a chat turn costs with this engine against another checkout's, in one process: a
10-turn chat (the same user messages; each engine's own replies go back into its history, as a
chat client sends them), turn by turn, the two engines alternating.

    .venv/bin/python benchmarks/chat_cost.py L.gguf F.gguf B.gguf --other /tmp/old -n 32

Per turn and engine: prompt tokens evaluated (over the three contexts; the rest came from the
KV caches), prompt seconds, and the whole turn's seconds. Medians and the ratio this/other.
Both engines load the same weight layout (mmap'd, or repacked with --repack).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_compare import import_as  # noqa: E402
from trioargs import trio_parser  # noqa: E402

import localeft  # noqa: E402

TURNS = [
    "What is a Python list comprehension? One sentence.",
    "Show one that squares the even numbers below 10.",
    "Now the same with map and filter.",
    "Which of the two is faster, and why?",
    "How would I time them myself?",
    "Write that as a small script.",
    "Add a command-line option for the size.",
    "What does the script print for size 1000?",
    "Rewrite it to use a generator instead.",
    "Summarise what we did in two sentences.",
]


def main() -> None:
    ap = trio_parser(__doc__, tokens=32, reps=1)
    ap.add_argument("--other", type=Path, required=True, help="the other checkout")
    ap.add_argument("--turns", type=int, default=len(TURNS))
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument(
        "--repack",
        action="store_true",
        help="both engines with repacked weights (default: both mmap'd; the same layout either "
        "way, whatever each checkout's default)",
    )
    a = ap.parse_args()
    trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
    pkgs = {"this": localeft, "other": import_as(a.other, "localeft_other")}
    ems = {
        k: p.Emulator(**trio, n_ctx=a.ctx_size, overlap=False, repack=a.repack)
        for k, p in pkgs.items()
    }
    history = {k: [] for k in ems}
    rows = {k: [] for k in ems}  # (evaluated, prompt s, turn s)
    same: list[bool] = []  # this engine's replies that re-tokenize to the ids generated
    for turn, text in enumerate(TURNS[: a.turns]):
        order = list(ems) if turn % 2 == 0 else list(ems)[::-1]
        for k in order:
            history[k].append({"role": "user", "content": text})
            t = time.perf_counter()
            g = ems[k].chat(history[k], max_tokens=a.tokens, temperature=0.0)
            seconds = time.perf_counter() - t
            history[k].append({"role": "assistant", "content": g.text})
            rows[k].append((g.stats.prompt_evaluated, g.stats.prompt_seconds, seconds))
            if k == "this":  # does the reply's text give back its ids? (else the next turn
                # re-decodes it from where they part: one token per call in the canonical layout)
                ft = ems[k].models["ft"]
                same.append(ft.tokenize(g.text, add_bos=False, special=False) == g.tokens)
        print(
            f"turn {turn + 1:>2}: "
            + "  ".join(
                f"{k} {rows[k][-1][0]:>4} evaluated {rows[k][-1][1]:6.2f} s prompt "
                f"{rows[k][-1][2]:6.2f} s turn"
                for k in ems
            ),
            file=sys.stderr,
        )
    print(f"{'':<8}{'evaluated (sum)':>16}{'prompt s (med)':>16}{'turn s (med)':>14}")
    for k, r in rows.items():
        ev = sum(x[0] for x in r[1:])  # turns after the first: what reuse saves
        print(
            f"{k:<8}{ev:>16}{statistics.median(x[1] for x in r[1:]):>16.2f}"
            f"{statistics.median(x[2] for x in r[1:]):>14.2f}"
        )
    per_turn = [x[2] / y[2] for x, y in zip(rows["this"][1:], rows["other"][1:])]
    print(f"this / other, turn time: median {statistics.median(per_turn):.3f} (turns 2-)")
    print(f"replies whose text re-tokenizes to the ids generated: {sum(same)} of {len(same)}")


if __name__ == "__main__":
    main()
