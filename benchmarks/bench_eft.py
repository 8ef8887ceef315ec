#!/usr/bin/env python3
"""EFT speed vs the models alone, one run, alternating repetitions (the engine of `localeft bench`).

    python benchmarks/bench_eft.py LARGE_BASE SMALL_FT SMALL_BASE [-n 32] [--reps 3] [--json]

On this project's CPU machines the stand-in trio is ../shared/models/ (fetch.sh):
    python benchmarks/bench_eft.py M/qwen2.5-coder-1.5b-instruct.gguf \
        M/qwen2.5-coder-0.5b-instruct.gguf M/qwen2.5-coder-0.5b-instruct.gguf
"""

import argparse
import json
import sys

import llama_cpp  # noqa: F401  (before numpy; see localeft/__init__.py)

from trioargs import trio_parser  # noqa: E402

from localeft.bench import format_table, run


def main() -> None:
    ap = trio_parser(__doc__, tokens=32, reps=3)
    ap.add_argument("-c", "--ctx-size", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int)
    ap.add_argument("-ngl", "--gpu-layers", type=int, default=0)
    ap.add_argument("--draft", type=int, help="fixed draft length (default: adaptive)")
    ap.add_argument("--top-p", type=float, help="sample with temperature 0.8 and this top-p")
    ap.add_argument(
        "--repack",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="llama.cpp's repacked CPU weights (default: mmap, as localeft's commands)",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sampling = {"temperature": 0.8, "top_p": a.top_p} if a.top_p else {}
    r = run(
        a.large_base,
        a.small_ft,
        a.small_base,
        n_tokens=a.tokens,
        reps=a.reps,
        n_ctx=a.ctx_size,
        n_threads=a.threads,
        n_gpu_layers=a.gpu_layers,
        draft_tokens=a.draft,
        sampling=sampling,
        repack=a.repack,
        log=lambda s: print(s, file=sys.stderr),
    )
    print(json.dumps(r, indent=2) if a.json else format_table(r))


if __name__ == "__main__":
    main()
