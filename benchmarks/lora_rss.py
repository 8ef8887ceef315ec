"""Peak RSS of the small pair: a LoRA adapter on the small base (one load of its weights, two
contexts) against the merged-model way (a second GGUF of the small model's size beside the
base: two loads), each in its own process (peak RSS is per process), variants interleaved.

    python benchmarks/lora_rss.py LARGE.gguf SMALL.gguf ADAPTER.gguf [--merged MERGED.gguf]
        [--reps 2] [-n 16] [-c 1024]

Variants, all with the same large base and the same 16 greedy tokens of a chat prompt:
  shared   small_ft = small_base = SMALL (one load, two contexts: the floor)
  lora     small_ft = LoRA(SMALL, ADAPTER), small_base = SMALL
  merged   small_ft = MERGED, small_base = SMALL (default MERGED: a copy of SMALL, which is what
           an adapter merged and re-exported at the same quantisation weighs)
Prints each variant's median peak RSS, and lora and merged minus shared: what the fine-tuned
side costs beyond the small base.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
from localeft import Emulator, LoRA
from localeft.bench import peak_rss_bytes
large, small, ft, adapter, n, n_ctx = sys.argv[1:7]
small_ft = LoRA(small, adapter) if ft == "lora" else ft
em = Emulator(large_base=large, small_ft=small_ft, small_base=small, n_ctx=int(n_ctx))
g = em.chat([{"role": "user", "content": "Name three rivers in Europe."}], max_tokens=int(n))
loads = len({m.path for m in em.models.values()})
print(json.dumps({"rss": peak_rss_bytes(), "loads": loads, "text": g.text}))
"""


def run(variant: str, a, merged: Path) -> dict:
    ft = {"shared": a.small, "lora": "lora", "merged": str(merged)}[variant]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, a.large, a.small, ft, a.adapter, str(a.n), str(a.ctx)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("large")
    p.add_argument("small")
    p.add_argument("adapter")
    p.add_argument("--merged", help="A merged fine-tune GGUF (default: a copy of SMALL).")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("-n", type=int, default=16)
    p.add_argument("-c", "--ctx", type=int, default=1024)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(a.merged) if a.merged else Path(tmp) / "merged-standin.gguf"
        if not a.merged:
            shutil.copyfile(a.small, merged)
        results: dict[str, list[dict]] = {"shared": [], "lora": [], "merged": []}
        for _ in range(a.reps):
            for variant in results:
                results[variant].append(run(variant, a, merged))
                r = results[variant][-1]
                print(f"  {variant:<7} {r['rss'] / 2**20:8.1f} MiB  ({r['loads']} model loads)")
        mib = {k: statistics.median(r["rss"] for r in v) / 2**20 for k, v in results.items()}
        sizes = {
            "small": Path(a.small).stat().st_size / 2**20,
            "adapter": Path(a.adapter).stat().st_size / 2**20,
        }
    print(f"small GGUF {sizes['small']:.1f} MiB, adapter GGUF {sizes['adapter']:.1f} MiB")
    print(f"{'variant':<8}{'peak RSS MiB':>14}{'minus shared':>14}")
    for k, v in mib.items():
        print(f"{k:<8}{v:>14.1f}{v - mib['shared']:>14.1f}")
    extra_lora, extra_merged = mib["lora"] - mib["shared"], mib["merged"] - mib["shared"]
    print(
        f"the fine-tuned side costs {extra_lora:.1f} MiB as an adapter, {extra_merged:.1f} MiB "
        f"as a merged model ({extra_merged / max(extra_lora, 1e-9):.1f}x)"
    )


if __name__ == "__main__":
    main()
