"""The `localeft` command line: generate, chat, compare, pull, models, check, bench.

Commands stay thin: options are declared once (MODEL_OPTIONS, SAMPLING_OPTIONS), `open_emulator`
resolves the models (explicit paths > preset roles > a download the user agreed to), the engine
does the rest. A deliberate error ends as one line `localeft: error: ...` and exit status 1;
click's usage errors exit 2; Ctrl-C exits 130 ("interrupted"); a closed stdout pipe exits quietly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys
import textwrap
import time
import warnings
from itertools import zip_longest
from pathlib import Path

import click

from . import __version__, registry, rpc
from .backend import Model
from .engine import MAX_TOP_LOGPROBS, Emulator, Expert, Generation
from .errors import ContextOverflowError, InvalidParameterError, LocaleftError, LocaleftWarning
from .grammar import Grammar, any_json_object, schema_grammar
from .repl import CHAT_HELP, ChatSession, history_dir, latest_history
from .reports import ROLE_NAMES, check_plotting, eval_table, model_names, plot_accuracy
from .reports import token_table
from .reports import totals_table, write_page
from .scoring import evaluate, read_items, read_jsonl
from .speculative import MAX_DRAFT
from .terminal import BETA, DRAFT, EXPLAIN_TOP, MAX_TOKENS, MIN_P, MODES, SEED, TEMP, TOP_K
from .terminal import TOP_P
from .terminal import explained, notes, placement_line, run, stdin_is_tty

TITLES = {"small": "small fine-tuned alone", "large": "large base alone", "eft": "EFT"}


class Failure(click.ClickException):
    """A one-line error: `localeft: error: MESSAGE`, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"localeft: error: {self.message}", err=True)


class _Group(click.Group):
    """Turns deliberate errors, Ctrl-C, bad input bytes and failed writes into one line and an
    exit code; shows library warnings as one line each."""

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", LocaleftWarning)
            warnings.showwarning = _show_warning
            try:
                result = super().invoke(ctx)
                sys.stdout.flush()  # a full disk shows here, not in the interpreter's exit
                return result
            except ContextOverflowError as e:
                raise Failure(_context_message(e)) from None
            except LocaleftError as e:
                raise Failure(str(e)) from None
            except (KeyboardInterrupt, click.Abort):
                click.echo("\nlocaleft: interrupted", err=True)
                ctx.exit(130)
            except UnicodeDecodeError:
                raise Failure("the input is not valid UTF-8 text") from None
            except BrokenPipeError:  # as the Python docs recommend (signal module, SIGPIPE note):
                with contextlib.suppress(OSError, ValueError):  # (no real stdout in CliRunner)
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                ctx.exit(1)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EDQUOT):
                    with contextlib.suppress(OSError, ValueError):  # nothing more to write out
                        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    raise Failure(f"cannot write the output: {e.strerror or e}") from None
                raise


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"localeft: warning: {message}", err=True)


def _context_message(e: ContextOverflowError) -> str:
    if e.tokens is None:
        return f"{e} (-c/--ctx-size sets the context size)"
    return (
        f"the prompt is {e.tokens} tokens but the context holds {e.n_ctx}; "
        "shorten it or raise -c/--ctx-size"
    )


class ExpertType(click.ParamType):
    """FT:REF[:WEIGHT] -> Expert (paths containing ':' are not supported here)."""

    name = "FT:REF[:WEIGHT]"

    def convert(self, value, param, ctx):
        if isinstance(value, Expert):
            return value
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            self.fail(f"{value!r} is not FT:REF or FT:REF:WEIGHT", param, ctx)
        try:
            return Expert(parts[0], parts[1], float(parts[2]) if len(parts) == 3 else 1.0)
        except ValueError:
            self.fail(f"weight {parts[2]!r} in {value!r} is not a number", param, ctx)


class SplitType(click.ParamType):
    """W,W[,W] -> a tuple of weights (>= 0)."""

    name = "W,W[,W]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            weights = tuple(float(w) for w in value.split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if any(not 0 <= w < float("inf") for w in weights):
            self.fail(f"{value!r}: weights must be numbers >= 0", param, ctx)
        return weights


def _stack(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


opt = click.option
MODEL_OPTIONS = _stack(
    opt("--preset", metavar="NAME", help="Preset from models.toml (default: the default one)."),
    opt("--large-base", metavar="PATH", help="Large pre-trained GGUF (overrides the preset)."),
    opt("--small-ft", metavar="PATH", help="Small fine-tuned GGUF (overrides the preset)."),
    opt("--small-base", metavar="PATH", help="Small pre-trained GGUF (overrides the preset)."),
    opt(
        "--expert",
        "experts",
        multiple=True,
        type=ExpertType(),
        help="Instead of the small pair: add WEIGHT*(FT - REF) to --large-base (repeatable).",
    ),
    opt(
        "-c",
        "--ctx-size",
        type=click.IntRange(min=8),
        help="Context size in tokens (default: the preset's, else 4096).",
    ),
    opt(
        "-ngl",
        "--gpu-layers",
        type=click.IntRange(min=-1),
        default=0,
        show_default=True,
        help="Layers to offload to the GPU (-1: all).",
    ),
    opt("-t", "--threads", type=click.IntRange(min=1), help="CPU threads (default: all)."),
    opt(
        "--no-repack",
        is_flag=True,
        help="mmap the weights (shared through the page cache, faster to load) instead of "
        "reading them into llama.cpp's faster CPU layout: ~10% slower on a CPU.",
    ),
    opt(
        "--base-prompt",
        type=click.Choice(["template", "transcript"]),
        default="template",
        show_default=True,
        help="What pre-trained models see of a chat.",
    ),
    opt(
        "--config",
        type=click.Path(dir_okay=False),
        help="User models.toml (default: ~/.config/localeft/models.toml).",
    ),
    opt("--offline", is_flag=True, help="Never download; use cached files only."),
    opt("-y", "--yes", is_flag=True, help="Download missing preset files without asking."),
    opt(
        "--rpc",
        "rpc",
        multiple=True,
        metavar="HOST:PORT",
        help="Put the large base's layers on this `localeft rpc-server` (repeatable).",
    ),
    opt(
        "--rpc-split",
        type=SplitType(),
        metavar="W,W[,W]",
        help="Shares of the large base's layers: one weight per --rpc server, then optionally "
        "one for this machine (default: all remote, by the servers' free memory).",
    ),
    opt(
        "--rpc-timeout",
        type=click.FloatRange(min=0.1),
        default=rpc.DEFAULT_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="End with an error when an RPC server does not answer one call in this time.",
    ),
)
SAMPLING_OPTIONS = _stack(
    opt("--beta", type=BETA, help="Strength of the fine-tuning delta (default: preset's, else 1)."),
    opt("-n", "--max-tokens", type=MAX_TOKENS, default=256, show_default=True),
    opt("--temp", type=TEMP, help="Temperature, 0 = greedy (default: the preset's, else 0)."),
    opt("--top-k", type=TOP_K, default=0, show_default=True, help="0: off."),
    opt("--top-p", type=TOP_P, default=1.0, show_default=True),
    opt("--min-p", type=MIN_P, default=0.0, show_default=True),
    opt("--seed", type=SEED, help="Random seed (default: a fresh one)."),
    opt("--stop", multiple=True, metavar="TEXT", help="Stop at this text (repeatable)."),
    opt("--system", metavar="TEXT", help="System message for chat prompts."),
    opt(
        "--draft",
        type=DRAFT,
        metavar="N",
        help=f"Speculative decoding with a fixed draft length N (1-{MAX_DRAFT}).",
    ),
    opt(
        "--speculative/--no-speculative",
        default=None,
        help="Draft with the small fine-tuned model, verify in blocks (default: on with GPU "
        "offload, where it is faster; off on a CPU).",
    ),
    opt(
        "--grammar",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="GBNF grammar file: the output follows it (llama.cpp's grammar engine).",
    ),
    opt("--json-schema", metavar="FILE|JSON", help="The output is JSON matching this schema."),
    opt("--json-output", is_flag=True, help="The output is a JSON object."),
    opt(
        "--repeat-penalty",
        type=click.FloatRange(min=0, min_open=True),
        default=1.0,
        show_default=True,
        help="Penalise repeats in the last --repeat-last-n tokens (1: off).",
    ),
    opt(
        "--repeat-last-n",
        type=click.IntRange(min=-1),
        default=64,
        show_default=True,
        help="Tokens the penalties look back on (0: off, -1: the context).",
    ),
    opt("--presence-penalty", type=float, default=0.0, show_default=True),
    opt("--frequency-penalty", type=float, default=0.0, show_default=True),
    opt(
        "-l",
        "--logit-bias",
        multiple=True,
        metavar="ID(+|-)BIAS",
        help="Add BIAS to token ID's logit, e.g. 15043+1 or 15043-inf (repeatable).",
    ),
    opt("-v", "--verbose", is_flag=True, help="Timings and KV-cache reuse on stderr."),
)
CHAT_OR_RAW = opt("--chat/--raw", default=True, help="Chat template (default) or raw completion.")
JSON = opt("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
MODE = opt(
    "--mode",
    type=click.Choice(list(MODES)),
    default="eft",
    show_default=True,
    help="EFT, or the large base / small fine-tuned model alone.",
)
PROMPT = click.argument("prompt", required=False)


# --- models --------------------------------------------------------------------------------
def _ask_download(preset: registry.Preset, refs: list) -> bool:
    if not stdin_is_tty() or registry._env_offline():
        return False
    size = sum(r.size_gb or 0 for r in refs)
    return click.confirm(
        f"Preset {preset.name} needs {len(refs)} file(s) that are not in the "
        f"Hugging Face cache ({', '.join(r.label for r in refs)}; about "
        f"{size:.1f} GB). Download now?",
        default=True,
        err=True,
    )


def _resolve_models(o: dict) -> tuple[dict, dict]:
    """Paths by role (explicit paths > preset roles) and the preset's settings ({} if none)."""
    if o["experts"] and (o["small_ft"] or o["small_base"]):
        raise click.UsageError(
            "--expert replaces --small-ft/--small-base: give every pair as --expert FT:REF:WEIGHT"
        )
    needed = ["large_base"] if o["experts"] else list(registry.ROLES)
    paths = {role: o[role] for role in needed if o[role]}
    missing = [role for role in needed if role not in paths]
    if not missing and not o["preset"]:
        return paths, {}
    preset = registry.get_preset(o["preset"], o["config"])
    refs = [preset.roles[role] for role in missing]
    todo = [r for r in refs if r.path is None and registry.is_cached(r) is None]
    download = bool(todo) and not o["offline"] and (o["yes"] or _ask_download(preset, todo))
    for ref in refs:
        paths[ref.role] = registry.resolve(ref, download=download, offline=o["offline"] or None)
    return paths, preset.settings


def constraint_kwargs(o: dict) -> dict:
    """Grammar and penalty keyword arguments from the options (files read, JSON parsed)."""
    if sum(bool(o.get(k)) for k in ("grammar", "json_schema", "json_output")) > 1:
        raise click.UsageError("give one of --grammar, --json-schema, --json-output")
    kw: dict = {}
    if o.get("grammar"):
        kw["grammar"] = _read_text(o["grammar"], "grammar")
    elif o.get("json_schema"):
        value = o["json_schema"]
        text = value if value.lstrip().startswith("{") else _read_text(value, "JSON schema")
        kw["grammar"] = schema_grammar(text)
    elif o.get("json_output"):
        kw["grammar"] = any_json_object()
    if "repeat_penalty" in o:
        kw.update(
            repeat_penalty=o["repeat_penalty"],
            repeat_last_n=o["repeat_last_n"],
            presence_penalty=o["presence_penalty"],
            frequency_penalty=o["frequency_penalty"],
            logit_bias=_logit_bias(o.get("logit_bias") or ()),
        )
    return kw


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Failure(f"{what} file {path} is not valid UTF-8 text") from None
    except OSError as e:
        raise Failure(f"cannot read the {what} file {path}: {e.strerror or e}") from None


def _logit_bias(values) -> dict[int, float]:
    out = {}
    for v in values:
        m = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(inf|[0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*", v)
        if not m:
            raise click.UsageError(f"--logit-bias {v!r}: expected ID+BIAS or ID-BIAS, e.g. 15043+1")
        out[int(m.group(1))] = float(m.group(2) + m.group(3))
    return out


def open_emulator(o: dict) -> tuple[Emulator, dict]:
    """The Emulator the options describe, and the preset's settings (with -v: where the large
    base's layers went, when RPC servers hold some)."""
    em, settings = _open_emulator(o)
    if o.get("verbose") and em.placement:
        click.echo(placement_line(em.placement), err=True)
    return em, settings


def _open_emulator(o: dict) -> tuple[Emulator, dict]:
    """A grammar is checked against the fine-tuned model's vocabulary before any weights
    load."""
    o["constraints"] = constraint_kwargs(o)
    paths, settings = _resolve_models(o)
    if o["constraints"].get("grammar"):
        ft = o["experts"][0].ft if o["experts"] else paths["small_ft"]
        head = Model(ft, vocab_only=True)
        try:
            Grammar(head, o["constraints"]["grammar"]).close()
        finally:
            head.close()
    common = dict(
        n_ctx=o["ctx_size"] or settings.get("n_ctx", 4096),
        n_threads=o["threads"],
        n_gpu_layers=o["gpu_layers"],
        base_prompt=o["base_prompt"],
        repack=not o["no_repack"],
        beta=o["beta"] if o.get("beta") is not None else settings.get("beta", 1.0),
        rpc=list(o["rpc"]) or None,
        rpc_split=o["rpc_split"],
        rpc_timeout=o["rpc_timeout"],
    )
    if o["rpc_split"] and not o["rpc"]:
        raise click.UsageError("--rpc-split needs --rpc (the servers it splits the layers over)")
    if o["experts"]:
        return Emulator(base=paths["large_base"], experts=list(o["experts"]), **common), settings
    return Emulator(**paths, **common), settings


def sampling(o: dict, settings: dict) -> dict:
    """Keyword arguments for Emulator.stream from the sampling options."""
    if o["draft"] and o["speculative"] is False:
        raise click.UsageError("--draft and --no-speculative contradict each other")
    temp = o["temp"] if o["temp"] is not None else settings.get("temperature", 0.0)
    return dict(
        max_tokens=o["max_tokens"],
        temperature=float(temp),
        top_k=o["top_k"],
        top_p=o["top_p"],
        min_p=o["min_p"],
        seed=o["seed"],
        stop=list(o["stop"]) or None,
        speculative=True if o["draft"] else o["speculative"],
        draft_tokens=o["draft"],
        **o.get("constraints", {}),
    )


# --- prompts and output --------------------------------------------------------------------
def read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if sys.stdin is None or (prompt is None and stdin_is_tty()):
            raise click.UsageError("give a PROMPT, or pipe one on stdin")
        try:
            prompt = sys.stdin.read().rstrip("\n")
        except UnicodeDecodeError:
            raise Failure("standard input is not valid UTF-8 text") from None
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes Python could not decode
        raise Failure("the prompt is not valid UTF-8 text") from None
    if not prompt.strip():
        raise Failure("the prompt is empty")
    return prompt


def make_request(text: str, chat: bool, system: str | None) -> str | list[dict]:
    """A raw completion string, or chat messages (system message first, if any)."""
    if not chat:
        if system:
            raise click.UsageError("--system needs a chat prompt (drop --raw)")
        return text
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


def result(g: Generation, em: Emulator, kw: dict, mode: str) -> dict:
    return {
        "text": g.text,
        "tokens": g.tokens,
        "finish_reason": g.finish_reason,
        "mode": mode,
        "settings": {
            **kw,
            "seed": g.seed,
            "beta": em.beta,
            "n_ctx": em.n_ctx,
            "base_prompt": em.base_prompt,
        },
        "models": {label: str(m.path) for label, m in em.models.items()},
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


# --- commands ------------------------------------------------------------------------------
@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(
    __version__, "-V", "--version", prog_name="localeft", message="%(prog)s %(version)s"
)
def cli():
    """Emulated fine-tuning (EFT) on your machine: a large pre-trained model steered by a small
    fine-tuned one, combined token by token through llama.cpp.

    \b
    Examples:
      localeft models                      # presets, and which files are downloaded
      localeft pull qwen2.5-7b             # download a preset into the Hugging Face cache
      localeft chat                        # talk to the default preset
      localeft generate "Explain KV caching in two sentences."
      localeft compare "Write a limerick about GPUs." --temp 0.7 --seed 1
      localeft check --large-base big.gguf --small-ft ft.gguf --small-base base.gguf
    """


@cli.command()
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
def generate(prompt, chat, mode, as_json, logprobs, explain, html, **o):
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
    """
    request = make_request(read_prompt(prompt), chat, o["system"])
    view = explain or html is not None
    if view and logprobs is None:
        logprobs = EXPLAIN_TOP
    em, settings = open_emulator(o)
    with em:
        kw = dict(sampling(o, settings), mode=MODES[mode], logprobs=logprobs)
        g = run(em, request, echo=not (as_json or explain), **kw)
        if as_json:
            click.echo(json.dumps(result(g, em, kw, mode), ensure_ascii=False, indent=2))
        elif explain:
            click.echo(explained(g.logprobs), color=True)
        elif not g.text.endswith("\n"):
            click.echo()
        if html is not None:
            write_page(html, g, request, em, em.beta)
            click.echo(f"(token view written to {html})", err=True)
        notes(g, o["verbose"])


@cli.command()
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
            click.echo(
                json.dumps({"prompt": request, "results": out}, ensure_ascii=False, indent=2)
            )
        else:
            show_side_by_side(gens)


def _progress(items, label: str):
    """A progress bar with ETA on a terminal's stderr; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(items)
    return click.progressbar(items, label=label, file=sys.stderr, show_eta=True, show_pos=True)


def _score_line(d):
    """(prompt, completion) of one JSONL line; InvalidParameterError names what is wrong."""
    if not isinstance(d, dict):
        raise InvalidParameterError("expected an object with prompt or messages, and completion")
    completion = d.get("completion")
    if not isinstance(completion, str) or not completion:
        raise InvalidParameterError('needs a non-empty "completion" string')
    if isinstance(d.get("messages"), list) and d["messages"]:
        return d["messages"], completion
    if isinstance(d.get("prompt"), str) and d["prompt"]:
        return d["prompt"], completion
    raise InvalidParameterError('needs "prompt" (text) or "messages" (a list)')


@cli.command()
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
                    message = _context_message(e) if isinstance(e, ContextOverflowError) else e
                    click.echo(f"localeft: error: {jsonl} line {n}: {message}", err=True)
                    errors.append(n)
                    continue
                for k, t in sc.totals.items():
                    totals.setdefault(k, []).append(t)
                if as_json:
                    d = sc.as_dict(per_token=per_token)
                    click.echo(json.dumps({"line": n, **d} if n else d, ensure_ascii=False))
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
    lines, errors = read_jsonl(path, lambda n, d: (n, *_score_line(d)))
    if not lines and not errors:
        raise Failure(f"{path} has no lines to score")
    return lines, errors


def _betas(value: str) -> list[float]:
    try:
        betas = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not betas or any(not math.isfinite(b) or b < 0 for b in betas):
        raise click.BadParameter(f"{value!r}: betas must be numbers >= 0")
    return list(dict.fromkeys(betas))


@cli.command("eval")
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
    try:
        beta_list = _betas(betas)
    except click.BadParameter as e:
        raise click.UsageError(f"--beta: {e.message}") from None
    if plot is not None:
        check_plotting()
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
            click.echo(json.dumps(report, indent=2))
        else:
            click.echo(eval_table(rows, len(items)))
            click.echo(f"({seconds / len(items):.2f} s per item)", err=True)
        if plot is not None:
            plot_accuracy(rows, plot, Path(file).name)
            click.echo(f"(plot written to {plot})", err=True)
    if errors:
        raise Failure(f"{len(errors)} line(s) of {file} were skipped (see above)")


@cli.command(
    help="""Chat interactively; replies stream as they are generated. The KV cache is
reused between turns, so each turn evaluates only its new tokens (-v or /stats shows it).

\b
Examples:
  localeft chat
  localeft chat --preset gemma3-1b --temp 0.7 --system "You are terse."
  localeft chat --large-base big.gguf --small-ft ft.gguf --small-base base.gguf -v

\b
"""
    + CHAT_HELP
)
@MODEL_OPTIONS
@SAMPLING_OPTIONS
@MODE
@opt(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[FILE]",
    help="Continue the latest conversation of the history (or one saved with /save).",
)
def chat(mode, resume, **o):
    history = None
    if resume == "latest":
        history = latest_history()
        if history is None:
            raise Failure(f"no conversation to resume in {history_dir()}")
    elif resume is not None and not os.path.isfile(os.path.expanduser(resume)):
        raise Failure(f"cannot resume: no such file {resume}")
    em, settings = open_emulator(o)
    with em:
        if stdin_is_tty():
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
        session = ChatSession(
            em, sampling(o, settings), mode, o["system"], o["verbose"], history=history
        )
        rpc.at_fault(session.fault_note)  # a lost RPC server ends the process: say what is kept
        if resume is not None and not session.load(history or resume):
            raise Failure(f"cannot resume from {history or resume}")
        session.loop()


@cli.command()
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


@cli.command()
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


@cli.command()
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
        files = em.group.files
        for label, path in files.items():
            m = by_path[path]
            click.echo(
                f"{ROLE_NAMES.get(label, label):<11} n_vocab {m.n_vocab:<7} "
                f"n_ctx_train {m.n_ctx_train:<7} {m.path}"
            )
        for e in em.experts:
            ft, ref = (Path(x).expanduser().resolve() for x in (e.ft, e.ref))
            if ft == ref:
                warnings.warn(
                    f"the fine-tuned and the reference model are the same file ({ft.name}): "
                    "their delta is zero, so EFT equals the base model alone",
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
            "RPC: available (localeft rpc-server, --rpc HOST:PORT)"
            if rpc.available()
            else "RPC: not available (llama.cpp built without -DGGML_RPC=ON; "
            "reinstall with scripts/install.sh)"
        )
        if em.placement:
            click.echo(placement_line(em.placement))


@cli.command()
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
    from . import bench as benchmark

    if o["experts"]:
        raise click.UsageError("bench measures a trio: give --large-base/--small-ft/--small-base")
    if o["rpc"]:
        raise click.UsageError("bench runs locally; benchmarks/rpc_bench.py measures RPC")
    paths, settings = _resolve_models(o)
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
        repack=not o["no_repack"],
        sampling={"temperature": 0.8, "top_p": top_p} if top_p else {},
        log=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)),
    )
    click.echo(json.dumps(r, indent=2) if as_json else benchmark.format_table(r))


@cli.command()
@MODEL_OPTIONS
@opt("--beta", type=BETA, help="Beta of requests that give none (default: preset's, else 1).")
@opt("--host", default="127.0.0.1", show_default=True, help="Address to bind (this machine only).")
@opt("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@opt(
    "--api-key",
    envvar="LOCALEFT_API_KEY",
    metavar="KEY",
    help="Require 'Authorization: Bearer KEY' on /v1 (also from $LOCALEFT_API_KEY).",
)
@opt(
    "--queue",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Requests that may wait behind the running one; beyond: 503 with Retry-After.",
)
@opt("--model-name", default="localeft", show_default=True, help="The model id the API reports.")
@opt("-v", "--verbose", is_flag=True, help="Log every request.")
def serve(host, port, api_key, queue, model_name, verbose, **o):
    """Serve EFT behind OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models) with
    a chat page at /. One request runs at a time; others wait in line (--queue).

    \b
    Examples:
      localeft serve --preset qwen2.5-7b
      localeft serve --large-base big.gguf --small-ft ft.gguf --small-base base.gguf --port 8000
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"messages": [{"role": "user", "content": "Hi"}], "beta": 1.5}'
    """
    from . import server

    absent = server.missing()
    if absent:
        raise Failure(f"localeft serve needs {absent}: {server.INSTALL}")
    if not server.is_loopback(host) and not api_key:
        warnings.warn(
            f"serving on {host} without --api-key: anyone who can reach this port can use "
            "the models",
            LocaleftWarning,
            stacklevel=1,
        )
    em, _ = open_emulator(o)
    with em:
        click.echo(
            f"localeft: serving {model_name} on http://{host}:{port}/ (chat page), "
            f"API at http://{host}:{port}/v1; Ctrl-C stops",
            err=True,
        )
        server.serve(
            em,
            host=host,
            port=port,
            model=model_name,
            api_key=api_key,
            queue=queue,
            log_level="info" if verbose else "warning",
        )


@cli.command("rpc-server")
@opt("--host", default="127.0.0.1", show_default=True, help="IPv4 address to listen on.")
@opt(
    "--port",
    type=click.IntRange(1, 65535),
    default=rpc.DEFAULT_PORT,
    show_default=True,
    help="TCP port to listen on.",
)
@opt("-t", "--threads", type=click.IntRange(min=1), help="CPU threads (default: all).")
@opt(
    "--cache",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Keep received weights in DIR (by hash): reloading a model skips sending them again.",
)
@opt(
    "--trusted-network",
    is_flag=True,
    help="Allow a --host other machines can reach (the protocol has no authentication).",
)
def rpc_server(host, port, threads, cache, trusted_network):
    """Lend this machine's backend (its GPU when llama.cpp was built with one, else the CPU) to
    a localeft on another machine, which puts layers of its large base here with --rpc
    HOST:PORT: the weights and their KV cache live here, only activations cross the network.
    One client at a time; Ctrl-C stops it. Listens on loopback unless told otherwise.

    \b
    Examples:
      localeft rpc-server                                  # 127.0.0.1:50052, for tests
      localeft rpc-server --host 192.168.1.20 --trusted-network --cache ~/.cache/localeft/rpc
      # then, on the machine with the small models:
      localeft chat --preset llama3.1-8b --rpc 192.168.1.20:50052
    """
    import socket

    rpc.require()
    try:
        address = socket.gethostbyname(host)  # llama.cpp's server wants an IPv4 address
    except (OSError, UnicodeError):
        raise Failure(f"cannot listen on {host!r}: not an IPv4 address or a known name") from None
    if not rpc.is_loopback(address):
        if not trusted_network:
            raise Failure(
                f"--host {host} can be reached from other machines, and llama.cpp's RPC protocol "
                "has no authentication; add --trusted-network if only machines you trust can "
                "reach it"
            )
        click.echo(
            f"localeft: warning: anyone who can reach {address}:{port} can use this machine's "
            "memory and compute and read what it computes (llama.cpp's RPC protocol has no "
            "authentication or encryption): use it only on a trusted network",
            err=True,
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # fail here, in plain words
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise Failure(f"cannot listen on {address}:{port}: {e.strerror or e}") from None
    if cache:
        cache = os.path.expanduser(cache)
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as e:
            raise Failure(f"cannot create the cache directory {cache}: {e.strerror}") from None
    from .backend import default_threads

    n = threads or default_threads()
    what = "; ".join(rpc.describe_devices(rpc.serving_devices()))
    click.echo(
        f"localeft rpc-server: lending {what} on {address}:{port} ({n} thread{'s' * (n != 1)}); "
        "one client at a time, Ctrl-C stops it"
    )
    sys.stdout.flush()
    why = rpc.serve(address, port, n, cache)
    if why != "signal":
        raise Failure(why)
    click.echo("localeft rpc-server: stopped")
    sys.stdout.flush()
    sys.stderr.flush()
    # llama.cpp's server thread is still inside accept() or a computation: leave without running
    # the interpreter's and llama.cpp's teardown under its feet.
    os._exit(0)


def main() -> None:
    if sys.stdout is None:  # started with stdout closed (`localeft ... >&-`)
        print("localeft: error: standard output is closed", file=sys.stderr)
        sys.exit(1)
    cli.main(prog_name="localeft")
