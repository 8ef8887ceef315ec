"""What the commands (cli.py) and the chat REPL (repl.py) share: running a request with its
text streamed to the terminal, the stats and note lines, and the value types of the settings
that both options and `/set` accept (one definition per number)."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING

import click

from . import lora, tokenview
from .errors import LocaleftError
from .reports import ROLE_NAMES
from .results import Generation, Stats
from .validate import MAX_DRAFT, MAX_WEIGHT

if TYPE_CHECKING:
    from .engine import Emulator

MODES = {"eft": "eft", "large": "base", "small": "ft"}  # CLI name -> engine mode

# One definition per number, shared by the options and the chat REPL's /set.
BETA, TEMP = click.FloatRange(0, MAX_WEIGHT), click.FloatRange(min=0)
TOP_K, SEED, MAX_TOKENS = click.IntRange(min=0), click.IntRange(min=0), click.IntRange(min=1)
TOP_P, MIN_P = click.FloatRange(0, 1, min_open=True), click.FloatRange(0, 1, max_open=True)
DRAFT = click.IntRange(1, MAX_DRAFT)
SETTABLE = {
    "beta": ("beta", BETA),
    "temp": ("temperature", TEMP),
    "top_k": ("top_k", TOP_K),
    "top_p": ("top_p", TOP_P),
    "min_p": ("min_p", MIN_P),
    "seed": ("seed", SEED),
    "max_tokens": ("max_tokens", MAX_TOKENS),
}


EXPLAIN_TOP = 5  # alternatives shown when hovering a token of the view


def explained(records) -> str:
    """The token view for this terminal: colours on a TTY, brackets when piped."""
    color = stdout_is_tty()
    body = tokenview.ansi(records) if color else tokenview.plain(records)
    return body.rstrip("\n") + "\n" + tokenview.legend(color)


def stdout_is_tty() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()


def stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def run(em: Emulator, request, *, echo: bool, partial: bool = False, **kw) -> Generation | None:
    """Generate, streaming to stdout if `echo`. Ctrl-C propagates, or with `partial` returns what
    was generated (finish_reason "interrupted"; None if the generation never started). An
    error mid-reply (a --server that went away) propagates after the line shown is ended, so
    its one-line message starts a line of its own."""
    stream = em.stream(request, **kw)
    last = ""
    try:
        for piece in stream:
            if echo:
                click.echo(piece, nl=False)
                last = piece
    except KeyboardInterrupt:
        stream.close()  # the Ctrl-C may have landed outside the engine's generator
        if not partial:
            raise
    except LocaleftError:
        if last and not last.endswith("\n"):
            click.echo()
        raise
    return stream.generation


def stats_line(s: Stats, full: bool = False) -> str:
    line = (
        f"prompt: {s.prompt_tokens} tokens, {s.prompt_evaluated} evaluated "
        f"({s.prompt_seconds:.2f} s) | generated: {s.generated_tokens} tokens, "
        f"{s.tokens_per_second:.1f} tok/s ({s.ms_per_token:.1f} ms/token)"
    )
    if s.speculative:
        line += (
            f" | speculative: {s.accepted}/{s.drafted} drafted accepted "
            f"({s.acceptance_rate:.0%}), k={s.draft_tokens}"
        )
    if s.layout:
        line += f" | CPU layout: {s.layout}"
        if s.layout_probe:
            line += (
                " (measured "
                + ", ".join(f"{k} {v:.1f}" for k, v in s.layout_probe.items())
                + " ms/step)"
            )
    if s.weights:
        line += f" | weights: {s.weights}"
    if full:
        per = ", ".join(f"{k} {v:.3f} s" for k, v in s.model_seconds.items())
        line += f"\nmodel time: {per}; numpy {s.numpy_seconds:.3f} s; total {s.seconds:.3f} s"
    return line


def adapter_lines(em: Emulator) -> list[str]:
    """One line per role with LoRA adapters (-v): its model file, then each adapter with its
    scale, rank and alpha."""
    lines = []
    for label, src in em.sources.items():
        if src.adapters:
            parts = [
                f"LoRA {p.name} x{scale:g} ({lora.summary(em.group.headers[p])})"
                for p, scale in src.adapters
            ]
            lines.append(f"{ROLE_NAMES.get(label, label)}: {src.path.name} + " + " + ".join(parts))
    return lines


def placement_line(rows: list[dict], output: dict | None = None) -> str:
    """Where the large base's layers are (Emulator.placement) on one line, the links measured
    to the servers, and (`output`: Emulator.rpc_output_choice) why the output layer is where
    it is on a second line."""
    parts = []
    for r in rows:
        layers = r["layers"] if r["device"] == "local" else f"layers {r['layers'] or 'none'}"
        parts.append(f"{r['device']} {layers} ({r['weights_mib']:.1f} MiB)")
    text = "large base: " + " | ".join(parts)
    links = [
        f"{r['device']} {r['link']['rtt_ms']:.2f} ms, {r['link']['down_mbit_s']:,.0f} Mbit/s"
        for r in rows
        if r.get("link")
    ]
    if links:
        text += "\nRPC links (round trip, to here): " + "; ".join(links)
    if output:
        text += f"\noutput layer: {'here' if output['where'] == 'local' else 'remote'} "
        text += f"({output['why']})"
    return text


def notes(g: Generation, verbose: bool, prefix: str = "") -> None:
    if g.finish_reason == "context":
        click.echo(f"{prefix}(stopped: the context window is full; raise -c/--ctx-size)", err=True)
    if verbose:
        seed = f" | seed {g.seed}" if g.seed is not None else ""
        click.echo(prefix + stats_line(g.stats) + seed, err=True)


def json_text(data, **kw) -> str:
    """JSON for stdout, strict (non-finite floats as strings: `strict`), with characters as they
    are where its encoding can write them, else JSON's \\u escapes (a Latin-1 or ASCII
    terminal gets the same data, never a UnicodeEncodeError)."""
    data = strict(data)
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, **kw)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(data, allow_nan=False, **kw)
    return text


def strict(data):
    """`data` with JSON's own numbers only: a non-finite float (a -inf logit bias) becomes the
    string "-inf", "inf" or "nan" (Python writes -Infinity, which jq and most parsers refuse;
    logit_bias takes "-inf" back)."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: strict(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict(v) for v in data]
    return data
