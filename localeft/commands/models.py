"""`localeft pull`, `localeft models`, `localeft check`: presets, the cache, and whether a trio
can be combined."""

from __future__ import annotations

import warnings

import click

from .. import lora, registry, rpc
from ..errors import LocaleftWarning
from ..reports import ROLE_NAMES
from ..terminal import adapter_lines, placement_line
from .options import MODEL_OPTIONS, Failure, open_emulator, opt


@click.command()
@click.argument("preset", required=False)
@opt("--config", type=click.Path(dir_okay=False), help="User models.toml.")
@opt("--offline", is_flag=True, help="Download nothing; only check the cache.")
def pull(preset, config, offline):
    """Download PRESET's models (default: the default preset) into the Hugging Face cache.

    \b
    Examples:
      localeft pull                    # the default preset
      localeft pull gemma3-1b
      localeft pull --offline qwen3-8b # is everything already cached?
    """
    p = registry.get_preset(preset, config)
    if offline:
        rows = registry.describe(p)
        for row in rows:
            click.echo(f"{row['role']:<11} {row['path'] or 'MISSING ' + row['label']}")
        missing = sum(not row["cached"] for row in rows)
        if missing:
            pull_command = next(iter(p.roles.values())).pull_command
            raise Failure(
                f"{missing} file(s) of preset {p.name} are not cached; "
                f"run `{pull_command}` with network access"
            )
        return
    for role, path in registry.pull(p).items():
        click.echo(f"{role:<11} {path}")
    config_arg = f" --config {config}" if config else ""
    click.echo(f"preset {p.name} is ready: localeft chat{config_arg} --preset {p.name}")


@click.command()
@opt("--config", type=click.Path(dir_okay=False), help="User models.toml.")
def models(config):
    """List the presets, their model files, and whether each is downloaded (* = default).

    \b
    Examples:
      localeft models
      localeft models --config ./my-models.toml
    """
    presets, default = registry.load_presets(config)
    for name, p in presets.items():
        click.echo(
            f"{'*' if name == default else ' '} {name}"
            + (f" - {p.description}" if p.description else "")
        )
        for row in registry.describe(p):
            gb = row["size_gb"]
            size = "" if gb is None else (f"{gb:.2f} GB" if gb >= 0.1 else f"{gb * 1e3:.1f} MB")
            if size and row["size_estimated"]:
                size += " (est.)"
            state = (
                ("local" if row["local"] else "cached")
                if row["cached"]
                else ("file missing" if row["local"] else "not downloaded")
            )
            click.echo(f"    {row['role']:<11} {state:<15}{size:>15}  {row['label']}")


@click.command()
@MODEL_OPTIONS
def check(**o):
    """Load the models (a preset, or paths) and check that EFT can combine them: one shared
    vocabulary, padding, a chat template; whether RPC is available, and with --rpc where the
    large base's layers went. Exits non-zero on a mismatch.

    \b
    Examples:
      localeft check --preset qwen2.5-7b
      localeft check --large-base big.gguf --small-ft ft.gguf --small-base base.gguf
      localeft check --preset llama3.1-8b --rpc 192.168.1.20:50052 --rpc 192.168.1.21:50052
    """
    em, _ = open_emulator({**o, "ctx_size": o["ctx_size"] or 256})
    with em:
        by_path = {m.path: m for m in em.models.values()}
        for label, src in em.sources.items():
            m = by_path[src.path]
            click.echo(
                f"{ROLE_NAMES.get(label, label):<11} n_vocab {m.n_vocab:<7} "
                f"n_ctx_train {m.n_ctx_train:<7} {src.describe()}"
            )
        for line in adapter_lines(em):
            click.echo(line)
        if em.adapters:
            click.echo(
                f"weights: {len(by_path)} model file(s) loaded once each for "
                f"{len(em.sources)} roles"
            )
        for e in em.experts:
            ft, ref = lora.source(e.ft), lora.source(e.ref)
            if ft == ref:
                warnings.warn(
                    f"the fine-tuned and the reference model are the same ({ft.path.name}"
                    + (" with the same adapters" if ft.adapters else "")
                    + "): their delta is zero, so EFT equals the base model alone",
                    LocaleftWarning,
                    stacklevel=1,
                )
        v = em.vocab
        click.echo(f"vocabulary: compatible, {v.n_shared} shared token ids")
        click.echo(
            "padding: "
            + (
                f"yes, sizes {sorted(set(v.sizes.values()))}; only ids below "
                f"{v.n_shared} are combined"
                if v.padded
                else "none"
            )
        )
        if v.unused.size:
            click.echo(f"unused ids: {v.unused.size} marked unused (padding), never generated")
        ft = next(m for label, m in em.models.items() if label.startswith("ft"))
        click.echo(
            f"chat template: {'yes' if ft.chat_template else 'none'} ({ft.path.name})"
            + ("" if ft.chat_template else "; chat prompts fall back to a plain transcript")
        )
        click.echo(
            f"weights: {em.weights}"
            + ("" if em.repack else " (--repack: llama.cpp's repacked CPU layout, faster decoding)")
        )
        click.echo(
            "RPC: available (localeft rpc-server, --rpc HOST:PORT)"
            if rpc.available()
            else "RPC: not available (llama.cpp built without -DGGML_RPC=ON; "
            "reinstall with scripts/install.sh)"
        )
        if em.placement:
            click.echo(placement_line(em.placement, em.rpc_output_choice))
