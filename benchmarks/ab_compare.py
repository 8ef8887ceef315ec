"""A/B: this checkout's engine against another checkout's, in ONE process, runs interleaved.

Separate `localeft bench` runs on a shared 2-core machine differ by 10-30% from run to run;
interleaving both engines' generations in one process (same models, same page cache, same
noise) leaves a ratio that means something. The other checkout's package is imported under
another name (its imports are relative), e.g. a worktree of the previous commit:

    git worktree add /tmp/old HEAD~1
    .venv/bin/python benchmarks/ab_compare.py /tmp/old L.gguf F.gguf B.gguf -n 48 --reps 7

Prints median ms/token of plain EFT for each engine (greedy, the bench's chat prompt), the
three models alone through llama-cpp-python, and each engine's EFT time ÷ their sum.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localeft import Emulator  # noqa: E402
from localeft.bench import PROMPT, _Alone  # noqa: E402


def import_as(checkout: Path, name: str):
    """Import checkout/localeft as package `name` (a copy, so its files can't change under us)."""
    tmp = Path(tempfile.mkdtemp()) / name
    shutil.copytree(checkout / "localeft", tmp)
    spec = importlib.util.spec_from_file_location(
        name, tmp / "__init__.py", submodule_search_locations=[str(tmp)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="the other checkout (a directory with localeft/)")
    ap.add_argument("large_base")
    ap.add_argument("small_ft")
    ap.add_argument("small_base")
    ap.add_argument("-n", "--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument(
        "--layout",
        choices=["measured", "overlap", "sequential"],
        default="measured",
        help="force one CPU layout on both engines (default: each measures its own)",
    )
    ap.add_argument(
        "--repack",
        action="store_true",
        help="every load with repacked weights (default: every load mmap'd; one layout for all)",
    )
    a = ap.parse_args()
    other = import_as(a.other, "localeft_other")
    trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
    overlap = {"measured": None, "overlap": True, "sequential": False}[a.layout]
    common = dict(n_ctx=2048, n_threads=a.threads, overlap=overlap, repack=a.repack)
    engines = {"this": Emulator(**trio, **common), "other": other.Emulator(**trio, **common)}
    threads = a.threads or engines["this"].group.roles[0].ctx.n_threads_batch
    alone = {role: _Alone(p, 2048, threads, 0, a.repack) for role, p in trio.items()}
    prompt_ids = engines["this"].prompt_tokens(PROMPT)["base"]
    for em in engines.values():
        em.chat(PROMPT, max_tokens=2, speculative=False)  # warm-up
    for m in alone.values():
        m.decode_seconds(prompt_ids, 2)
    times: dict[str, list[float]] = {k: [] for k in [*engines, *alone]}
    for rep in range(a.reps):
        names = list(times)
        names = names[rep % len(names) :] + names[: rep % len(names)]
        for name in names:
            if name in engines:
                g = engines[name].chat(PROMPT, max_tokens=a.tokens, speculative=False)
                times[name].append(g.stats.decode_seconds / g.stats.generated_tokens)
            else:
                times[name].append(alone[name].decode_seconds(prompt_ids, a.tokens) / a.tokens)
        print(f"rep {rep + 1}/{a.reps}", file=sys.stderr)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    total = sum(med[r] for r in alone)
    for k, v in med.items():
        print(f"{k:<12}{v:8.1f} ms/token")
    for k, em in engines.items():
        print(f"{k}: EFT / sum of the models alone = {med[k] / total:.3f} ({em.group.layout})")
    print(f"this / other = {med['this'] / med['other']:.3f}")


if __name__ == "__main__":
    main()
