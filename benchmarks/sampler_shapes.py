"""Sampling cost at a 152k vocabulary on every row shape: peaked (as real models give), flat
noise (random-weight models), plateaus of tied logits, all equal, bimodal, a linear ramp, zipf.
Median ms of `Sampler.__call__` (each decoding step) or `Sampler.dist` (the whole distribution,
for speculative decoding and constrained filters) per setting, and the worst cases.

    .venv/bin/python benchmarks/sampler_shapes.py [--dist] [--reps 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localeft.sampling import Sampler, SamplingParams  # noqa: E402

N = 151936
SETTINGS = {
    "greedy": {},
    "T1": dict(temperature=1.0),
    "T0.8 p0.9": dict(temperature=0.8, top_p=0.9),
    "llama.cpp chain": dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    "k40": dict(temperature=1.0, top_k=40),
    "p0.5": dict(temperature=1.0, top_p=0.5),
    "m0.1": dict(temperature=1.0, min_p=0.1),
    "k1000 T2": dict(temperature=2.0, top_k=1000),
    "p0.99 T1.5": dict(temperature=1.5, top_p=0.99),
    "T0.01 p0.9": dict(temperature=0.01, top_p=0.9),
}


def rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {f"flat σ{s}": (rng.standard_normal(N) * s).astype(np.float32) for s in (3, 1, 0.3)}
    peaked = (rng.standard_normal(N) * 3).astype(np.float32)
    peaked[:20] += 25
    out["peaked"] = peaked
    plateau = np.full(N, -5, np.float32)
    plateau[:50000] = 0.0
    plateau[50000:50003] = 0.5
    out["plateau 50k + 3 above"] = plateau
    ties = np.full(N, -5, np.float32)
    ties[:100000] = 0.0
    out["plateau 100k at the top"] = ties
    out["all equal"] = np.zeros(N, np.float32)
    half = N // 2
    out["bimodal"] = np.concatenate(
        [rng.standard_normal(half) * 0.5 + 5, rng.standard_normal(N - half) * 0.5]
    ).astype(np.float32)
    out["linear ramp"] = np.linspace(0, 30, N).astype(np.float32)
    out["zipf"] = (-np.log1p(np.arange(N, dtype=np.float32)))[rng.permutation(N)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", action="store_true", help="time dist() instead of a draw")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    worst = []
    for shape, row in rows(np.random.default_rng(0)).items():
        cells = []
        for name, kw in SETTINGS.items():
            s = Sampler(SamplingParams(seed=0, **kw), N)
            call = s.dist if a.dist else s
            times = []
            for _ in range(a.reps):
                r = row.copy()
                t = time.perf_counter()
                call(r)
                times.append(time.perf_counter() - t)
            ms = 1000 * statistics.median(times)
            cells.append(f"{name} {ms:.2f}")
            worst.append((ms, shape, name))
        print(f"{shape:<24}" + " | ".join(cells), flush=True)
    print("worst:", ", ".join(f"{s} / {n}: {ms:.2f} ms" for ms, s, n in sorted(worst)[-5:]))


if __name__ == "__main__":
    main()
