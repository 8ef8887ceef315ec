"""`localeft generate` and `localeft compare`: one prompt, printed (or as JSON / the token view)."""

from __future__ import annotations

import shutil
import textwrap
from itertools import zip_longest
from typing import TYPE_CHECKING

import click

from ..reports import write_page
from ..results import Generation
from ..terminal import EXPLAIN_TOP, MODES, explained, json_text, notes, run
from ..validate import MAX_TOP_LOGPROBS
from . import batch
from .options import CHAT_OR_RAW, JSON, MODE, MODEL_OPTIONS, PROMPT, SAMPLING_OPTIONS, opt
from .options import Failure, make_request, open_emulator, read_prompt, sampling
from .remote import SERVER

if TYPE_CHECKING:
    from ..engine import Emulator

TITLES = {"small": "small fine-tuned alone", "large": "large base alone", "eft": "EFT"}


def result(g: Generation, em: Emulator, kw: dict, mode: str) -> dict:
    return {
        "text": g.text,
        "tokens": g.tokens,
        "finish_reason": g.finish_reason,
        "mode": mode,
        "settings": {
            **kw,
            "seed": g.seed,
            "beta": em.beta if kw.get("beta") is None else kw["beta"],
            "n_ctx": em.n_ctx,
            "base_prompt": em.base_prompt,
        },
        "models": {label: str(m.path) for label, m in em.models.items()},
        **({"adapters": em.adapters} if em.adapters else {}),
        "stats": g.stats.as_dict(),
        **({"logprobs": [r.as_dict() for r in g.logprobs]} if g.logprobs is not None else {}),
    }


def show_side_by_side(gens: dict[str, Generation]) -> None:
    width = shutil.get_terminal_size().columns
    if width < 120:
        for name, g in gens.items():
            click.echo(f"── {TITLES[name]} ({g.finish_reason}) ".ljust(min(width, 80), "─"))
            click.echo((g.text.strip() or "(empty)") + "\n")
        return
    w = (width - 6) // 3
    cols = [
        [f"{TITLES[name]} ({g.finish_reason})", "─" * w]
        + [
            line
            for para in (g.text.strip() or "(empty)").splitlines()
            for line in textwrap.wrap(para, w) or [""]
        ]
        for name, g in gens.items()
    ]
    for row in zip_longest(*cols, fillvalue=""):
        click.echo(" │ ".join(cell.ljust(w) for cell in row).rstrip())


@click.command()
@PROMPT
@MODEL_OPTIONS
@SAMPLING_OPTIONS
@CHAT_OR_RAW
@MODE
@JSON
@opt(
    "--logprobs",
    type=click.IntRange(0, MAX_TOP_LOGPROBS),
    metavar="N",
    help="With --json: per-token log-probs (EFT and each model) and the top N alternatives.",
)
@opt(
    "--explain",
    is_flag=True,
    help="Show where fine-tuning changed the large base's choice (colours on a terminal, "
    "[brackets] when piped; with --json: the per-token records).",
)
@opt("--html", type=click.Path(dir_okay=False), help="Also write the token view as a web page.")
@opt(
    "--jsonl",
    metavar="FILE|-",
    help='Many prompts, one load: a request per line ({"prompt"|"messages", "id", settings '
    'such as "max_tokens", "temperature", "seed", "beta", "mode"}), a --json result per line.',
)
@SERVER
def generate(prompt, chat, mode, as_json, logprobs, explain, html, jsonl, **o):
    """Generate a reply to PROMPT (or to stdin, also with PROMPT '-') and print it.

    \b
    Examples:
      localeft generate "Give me three names for a cat."
      echo "Summarise: ..." | localeft generate --temp 0.7 --seed 42
      localeft generate --raw -n 32 "The capital of France is"
      localeft generate --mode large "Hi"        # the large base model alone
      localeft generate --json --beta 1.5 "Hi" | jq .stats
      localeft generate --large-base big.gguf --small-ft ft.gguf --small-base base.gguf "Hi"
      localeft generate --large-base big.gguf --expert chat.gguf:base.gguf:1 \\
          --expert code.gguf:base.gguf:0.5 "Write a sort function"
      localeft generate --jsonl prompts.jsonl -n 64 > results.jsonl
      localeft generate --server http://127.0.0.1:8080 "Hi"   # a running `localeft serve`
    """
    if jsonl is not None:
        return generate_lines(jsonl, prompt, chat, mode, logprobs, explain or html, o)
    request = make_request(read_prompt(prompt), chat, o["system"])
    view = explain or html is not None
    if view and logprobs is None:
        logprobs = EXPLAIN_TOP
    em, settings = open_emulator(o)
    with em:
        kw = dict(sampling(o, settings), mode=MODES[mode], logprobs=logprobs)
        g = run(em, request, echo=not (as_json or explain), **kw)
        if as_json:
            click.echo(json_text(result(g, em, kw, mode), indent=2))
        elif explain:
            click.echo(explained(g.logprobs), color=True)
        elif not g.text.endswith("\n"):
            click.echo()
        if html is not None:
            write_page(html, g, request, em, em.beta)
            click.echo(f"(token view written to {html})", err=True)
        notes(g, o["verbose"])


def generate_lines(path: str, prompt, chat: bool, mode: str, logprobs, view: bool, o: dict):
    """--jsonl: every line of FILE through one Emulator (commands/batch.py)."""
    if prompt is not None:
        raise click.UsageError("--jsonl replaces PROMPT")
    if view:
        raise click.UsageError(
            'with --jsonl, ask for per-token records with --logprobs N (or "logprobs" on a line)'
        )
    raw = batch.read(path)
    if not raw:  # nothing to generate: no load
        click.echo(f"localeft: {'stdin' if path == '-' else path} holds no lines", err=True)
        return
    em, settings = open_emulator(o)
    with em:
        defaults = dict(sampling(o, settings), logprobs=logprobs)
        lines = [batch.parse(n, text, defaults, mode, chat, o["system"]) for n, text in raw]
        failed = batch.run_lines(em, lines, lambda g, kw, m: result(g, em, kw, m))
    if failed:
        raise Failure(f"{failed} of {len(lines)} lines of {path} failed (see their error objects)")


@click.command()
@PROMPT
@MODEL_OPTIONS
@SAMPLING_OPTIONS
@CHAT_OR_RAW
@JSON
def compare(prompt, chat, as_json, **o):
    """Run PROMPT three ways with the same settings: the small fine-tuned model alone, the large
    base model alone, and EFT. Columns side by side on a wide terminal (120+ columns).

    \b
    Examples:
      localeft compare "What is the boiling point of water at altitude?"
      localeft compare --temp 0.7 --seed 3 -n 128 "Tell me a story"
      localeft compare --json "Hi" > compare.json
    """
    request = make_request(read_prompt(prompt), chat, o["system"])
    em, settings = open_emulator(o)
    with em:
        kw, gens = sampling(o, settings), {}
        for name in TITLES:
            gens[name] = run(em, request, echo=False, mode=MODES[name], **kw)
            notes(gens[name], o["verbose"], prefix=f"[{name}] ")
        if as_json:
            out = {n: result(g, em, dict(kw, mode=MODES[n]), n) for n, g in gens.items()}
            click.echo(json_text({"prompt": request, "results": out}, indent=2))
        else:
            show_side_by_side(gens)
