"""`localeft bench`: EFT against each model alone, measured in one run (bench.py)."""

from __future__ import annotations

import json

import click

from ..terminal import DRAFT, TOP_P
from ..validate import MAX_DRAFT
from .options import JSON, MODEL_OPTIONS, opt, resolve_models


@click.command()
@MODEL_OPTIONS
@opt(
    "-n",
    "--tokens",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Tokens generated per measurement.",
)
@opt(
    "--reps",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Repetitions (variants alternate; medians are reported).",
)
@opt(
    "--draft",
    type=DRAFT,
    metavar="N",
    help=f"Fixed draft length, 1-{MAX_DRAFT} (default: adaptive).",
)
@opt("--top-p", type=TOP_P, help="Sample at temperature 0.8 with this top-p (default: greedy).")
@opt("--no-baselines", is_flag=True, help="Skip the models-alone runs.")
@JSON
def bench(tokens, reps, draft, top_p, no_baselines, as_json, **o):
    """Measure EFT against each model alone (plain llama-cpp-python), in one run: tok/s medians,
    EFT time ÷ the three models' summed time, speculative EFT, per-step split, combine+sample
    cost at the real vocabulary size, prompt speed, peak RSS vs GGUF + KV sizes.

    \b
    Examples:
      localeft bench --preset qwen2.5-7b -ngl 99
      localeft bench --large-base big.gguf --small-ft ft.gguf --small-base base.gguf --json
    """
    from .. import bench as benchmark

    if o["experts"] or o["expert_lora"]:
        raise click.UsageError(
            "bench measures a trio: give --large-base/--small-ft (or --small-ft-lora)/--small-base"
        )
    if o["rpc"]:
        raise click.UsageError("bench runs locally; benchmarks/rpc_bench.py measures RPC")
    paths, settings = resolve_models(o)
    r = benchmark.run(
        paths["large_base"],
        paths["small_ft"],
        paths["small_base"],
        n_tokens=tokens,
        reps=reps,
        n_ctx=o["ctx_size"] or min(settings.get("n_ctx", 2048), 2048),
        n_threads=o["threads"],
        n_gpu_layers=o["gpu_layers"],
        draft_tokens=draft,
        baselines=not no_baselines,
        repack=o["repack"],
        sampling={"temperature": 0.8, "top_p": top_p} if top_p else {},
        log=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)),
    )
    click.echo(json.dumps(r, indent=2) if as_json else benchmark.format_table(r))
