"""`localeft bench` on the default preset's shape: a random-weight trio of exactly that size and
quantisation (Qwen2.5-7B-shaped Q4_K_M + two Qwen2.5-0.5B-shaped Q8_0, 152k vocabulary), written
and quantised once into a cache, then measured like any trio.

Speed does not depend on the weights' values, so this is the default preset's speed where its
files cannot be downloaded. Needs the `gguf` package (the test extra) and ~25 GB of free disk
while the 7B is converted (~5 GB kept).

    .venv/bin/python benchmarks/shape_bench.py [--shape 7b] [-n 16] [--reps 3] [--top-p 0.9]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_cpp  # noqa: E402

from localeft import bench  # noqa: E402
from random_gguf import write  # noqa: E402

# shape -> (large shape, large quant, small shape, small quant), as the presets ship them
TRIOS = {
    "7b": ("7b", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "0.5b", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
    "1.5b": (
        "1.5b",
        llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "0.5b",
        llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    ),
}


def cache_dir(shape: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "localeft" / "shapes" / shape


def quantised(path: Path, shape: str, ftype: int, seed: int, log) -> Path:
    """The quantised random-weight model at `path`, made once."""
    if path.exists():
        return path
    f16 = path.with_suffix(".f16.gguf")
    t = time.perf_counter()
    log(f"writing {f16.name} ({shape}, F16) ...")
    write(f16, shape, seed=seed)
    log(f"quantising to {path.name} ...")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    tmp = path.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
        raise SystemExit(f"quantising {f16} failed")
    tmp.rename(path)
    f16.unlink()
    log(f"{path} ready in {time.perf_counter() - t:.0f} s")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(TRIOS), default="7b")
    ap.add_argument("-n", "--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top-p", type=float, help="sample at T 0.8 with this top-p (else greedy)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    large, large_q, small, small_q = TRIOS[a.shape]
    d = cache_dir(a.shape)
    d.mkdir(parents=True, exist_ok=True)
    trio = [
        quantised(d / "large_base.gguf", large, large_q, 0, log),
        quantised(d / "small_ft.gguf", small, small_q, 1, log),
        quantised(d / "small_base.gguf", small, small_q, 2, log),
    ]
    sampling = {"temperature": 0.8, "top_p": a.top_p} if a.top_p else {}
    r = bench.run(*trio, n_tokens=a.tokens, reps=a.reps, n_ctx=2048, sampling=sampling, log=log)
    if a.json:
        import json

        print(json.dumps(r, indent=2))
    else:
        print(bench.format_table(r))


if __name__ == "__main__":
    main()
