"""What per-token log-probs (`logprobs=N`) cost in generation, on real models.

Two measures in one run: plain EFT generation with and without logprobs=5, alternating (median
ms/token of each), and the record-building call alone timed on the real rows of a step (less
noisy on a shared machine). Also times `Emulator.score` per token and the explain path.

    .venv/bin/python benchmarks/logprobs_cost.py L.gguf F.gguf B.gguf -n 48 --reps 5
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trioargs import trio_parser  # noqa: E402

from localeft import Emulator  # noqa: E402
from localeft.bench import PROMPT  # noqa: E402
from localeft.scoring import Recorder  # noqa: E402


def main() -> None:
    ap = trio_parser(__doc__, tokens=48, reps=5)
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    em = Emulator(a.large_base, a.small_ft, a.small_base, n_ctx=2048)
    em.chat(PROMPT, max_tokens=2)  # warm-up
    times: dict[str, list[float]] = {"off": [], "on": []}
    for rep in range(a.reps):
        for name in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            lp = a.top if name == "on" else None
            g = em.chat(PROMPT, max_tokens=a.tokens, logprobs=lp, speculative=False)
            times[name].append(g.stats.decode_seconds / g.stats.generated_tokens)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    # the record-building call alone, on one step's real rows
    group = em.group
    rows = {i: r.ctx.logits(1)[0].copy() for i, r in enumerate(group.roles)}
    combined = group.combiner(em.beta).combine([rows[i] for i in sorted(rows)]).copy()
    rec = Recorder(group, group.indices("eft"), group.ft_model, a.top)
    calls = []
    for _ in range(200):
        t = time.perf_counter()
        rec(int(combined.argmax()), combined, rows)
        calls.append(time.perf_counter() - t)
    call_ms = 1000 * statistics.median(calls)
    print(f"EFT step, logprobs off: {med['off']:.1f} ms/token")
    ratio = med["on"] / med["off"]
    print(f"EFT step, logprobs={a.top}:  {med['on']:.1f} ms/token  (ratio {ratio:.3f})")
    share = 100 * call_ms / med["off"]
    print(f"record-building call alone: {call_ms:.2f} ms = {share:.1f}% of a step")
    text = em.chat(PROMPT, max_tokens=a.tokens, speculative=False).text
    t = time.perf_counter()
    s = em.score(PROMPT, text)
    dt = time.perf_counter() - t
    print(
        f"score of a {len(s.tokens)}-token reply: {dt:.2f} s, "
        f"{1000 * dt / len(s.tokens):.1f} ms/token (generation: {med['off']:.1f} ms/token)"
    )
    em.close()


if __name__ == "__main__":
    main()
