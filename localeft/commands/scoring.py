"""`localeft score` and `localeft eval`: log-probs of given text, accuracy over a file."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click

from .. import validate
from ..errors import ContextOverflowError, InvalidParameterError
from ..reports import eval_table, model_names, plot_accuracy, plot_format, token_table
from ..reports import totals_table
from ..terminal import BETA, json_text
from .options import JSON, MODEL_OPTIONS, Failure, context_message, make_request, open_emulator
from .options import opt, read_prompt
from .remote import SERVER


def _progress(items, label: str):
    """A progress bar with ETA on a terminal's stderr; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(items)
    return click.progressbar(items, label=label, file=sys.stderr, show_eta=True, show_pos=True)


def _score_line(d):
    """(prompt, completion) of one JSONL line; InvalidParameterError names what is wrong."""
    from ..scoring import line_prompt

    if not isinstance(d, dict):
        raise InvalidParameterError("expected an object with prompt or messages, and completion")
    completion = d.get("completion")
    if not isinstance(completion, str) or not completion:
        raise InvalidParameterError('needs a non-empty "completion" string')
    return line_prompt(d), completion


@click.command()
@click.argument("prompt", required=False)
@click.argument("continuation", required=False)
@MODEL_OPTIONS
@opt("--beta", type=BETA, help="Strength of the fine-tuning delta (default: preset's, else 1).")
@opt(
    "--jsonl",
    type=click.Path(dir_okay=False),
    help='Score each line: {"prompt": ..., "completion": ...} or {"messages": [...], '
    '"completion": ...}.',
)
@opt("--per-token", is_flag=True, help="Also a table of every token's log-probs.")
@opt(
    "--chat/--raw",
    default=False,
    help="PROMPT as a user message under the chat template "
    "(the continuation is the assistant's reply), or raw text (default).",
)
@opt("--system", metavar="TEXT", help="System message, with --chat.")
@JSON
@SERVER
def score(prompt, continuation, jsonl, per_token, chat, system, as_json, **o):
    """How likely is CONTINUATION after PROMPT under EFT, and under each model alone?
    Log-probabilities per token and in total, perplexity.

    \b
    Examples:
      localeft score "The capital of France is" " Paris."
      localeft score --per-token "def add(a, b):" "\n    return a + b"
      localeft score --chat "Say hi." "Hello! How can I help?" --json
      localeft score --jsonl pairs.jsonl --beta 1.5 --json > scores.jsonl
    """
    if jsonl is None and (prompt is None or continuation is None):
        raise click.UsageError("give PROMPT and CONTINUATION, or --jsonl FILE")
    if jsonl is not None and (prompt is not None or continuation is not None):
        raise click.UsageError("--jsonl replaces PROMPT and CONTINUATION")
    lines = []
    errors = []
    if jsonl is not None:
        lines, errors = _read_score_lines(jsonl)
    else:
        request = make_request(read_prompt(prompt), chat, system)
        lines = [(0, request, continuation)]
    em, _ = open_emulator(o)
    with em:
        for e in errors:
            click.echo(f"localeft: error: {jsonl} {e}", err=True)
        totals: dict[str, list] = {}
        with _progress(lines, "scoring") as bar:
            for n, request, completion in bar:
                try:
                    sc = em.score(request, completion)
                except (InvalidParameterError, ContextOverflowError) as e:
                    if jsonl is None:
                        raise
                    message = context_message(e) if isinstance(e, ContextOverflowError) else e
                    click.echo(f"localeft: error: {jsonl} line {n}: {message}", err=True)
                    errors.append(n)
                    continue
                for k, t in sc.totals.items():
                    totals.setdefault(k, []).append(t)
                if as_json:
                    d = sc.as_dict(per_token=per_token)
                    click.echo(json_text({"line": n, **d} if n else d))
                elif jsonl is None:
                    click.echo(totals_table(sc, em))
                    if per_token:
                        click.echo("\n" + token_table(sc, em))
                else:
                    t = sc.totals
                    click.echo(
                        f"line {n}: {t['eft'].tokens} tokens, EFT {t['eft'].logprob:.3f}, "
                        + ", ".join(
                            f"{model_names(em)[k]} {v.logprob:.3f}"
                            for k, v in t.items()
                            if k != "eft"
                        )
                    )
        if jsonl is not None and not as_json and totals:
            click.echo(f"\nall {len(totals['eft'])} lines:")
            for k, ts in totals.items():
                name = f"EFT (beta {em.beta:g})" if k == "eft" else model_names(em)[k]
                lp, n_tok = sum(t.logprob for t in ts), sum(t.tokens for t in ts)
                click.echo(f"{name:<20}{n_tok:>8}{lp:>12.3f}{lp / n_tok:>10.3f}")
    if errors:
        raise Failure(f"{len(errors)} line(s) of {jsonl} could not be scored (see above)")


def _read_score_lines(path: str):
    from ..scoring import read_jsonl  # NumPy: not before it is needed (--server never needs it)

    lines, errors = read_jsonl(path, lambda n, d: (n, *_score_line(d)))
    if not lines and not errors:
        raise Failure(f"{path} has no lines to score")
    return lines, errors


def _betas(value: str) -> list[float]:
    """B1,B2,...: every item a number, each a valid beta (checked before the models load)."""
    betas = []
    for i, item in enumerate(value.split(","), 1):
        try:
            number = float(item)
        except ValueError:
            raise click.BadParameter(
                f"{value!r}: item {i} ({item.strip()!r}) is not a number"
            ) from None
        try:
            betas.append(validate.beta(number))
        except InvalidParameterError as e:
            raise click.BadParameter(f"{value!r}: {e}") from None
    return list(dict.fromkeys(betas))


@click.command("eval")
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTIONS
@opt(
    "--beta",
    "betas",
    default="0,0.5,1,2",
    show_default=True,
    metavar="B1,B2,...",
    help="Betas to evaluate EFT at: one row each.",
)
@opt("--plot", type=click.Path(dir_okay=False), help="Draw accuracy against beta (PNG).")
@JSON
def eval_command(file, betas, plot, as_json, **o):
    """Multiple-choice accuracy on your own data: EFT at each beta, the large base alone and
    the small fine-tuned model alone, by summed and by length-normalised log-likelihood.

    Each line of FILE: {"prompt": "..." or "messages": [...], "choices": [...], "answer": N}.
    A choice is scored as the continuation of the prompt (as the assistant's reply for
    messages); the choice with the highest log-likelihood is the model's answer.

    \b
    Examples:
      localeft eval examples/eval-sample.jsonl
      localeft eval mine.jsonl --beta 0,0.25,0.5,1,1.5,2 --plot accuracy.png
      localeft eval mine.jsonl --json > results.json
    """
    from ..scoring import evaluate, read_items

    try:
        beta_list = _betas(betas)
    except click.BadParameter as e:
        raise click.UsageError(f"--beta: {e.message}") from None
    if plot is not None:
        plot_format(plot)
    items, errors = read_items(file)
    em, _ = open_emulator({**o, "beta": None})
    with em:
        for e in errors:
            click.echo(f"localeft: error: {file} {e}", err=True)
        if not items:
            raise Failure(f"{file}: no item to evaluate")
        labels = {
            "large base alone": "base",
            "small fine-tuned alone": em.group.roles[em.group.drafter].label,
        }
        t0 = time.perf_counter()
        rows = []
        with _progress(range(len(items)), "evaluating") as bar:
            progress = iter(bar)
            for _, so_far in evaluate(em.score, items, beta_list, labels):
                rows = so_far
                next(progress, None)
        seconds = time.perf_counter() - t0
        report = {
            "file": str(file),
            "items": len(items),
            "skipped_lines": len(errors),
            "seconds_per_item": seconds / len(items),
            "rows": [r.as_dict() for r in rows],
        }
        if as_json:
            click.echo(json_text(report, indent=2))
        else:
            click.echo(eval_table(rows, len(items)))
            click.echo(f"({seconds / len(items):.2f} s per item)", err=True)
        if plot is not None:
            plot_accuracy(rows, plot, Path(file).name)
            click.echo(f"(plot written to {plot})", err=True)
    if errors:
        raise Failure(f"{len(errors)} line(s) of {file} were skipped (see above)")
