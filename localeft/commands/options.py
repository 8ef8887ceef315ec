"""What the commands share: the option sets (declared once), the one-line `Failure`, and the
way options become an Emulator (`open_emulator`: explicit paths > preset roles > a download the
user agreed to) and a request's settings (`sampling`, `constraint_kwargs`).
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import registry, rpc
from ..errors import ContextOverflowError, LocaleftWarning
from ..terminal import BETA, DRAFT, MAX_TOKENS, MIN_P, MODES, SEED, TEMP, TOP_K, TOP_P
from ..lora import LoRA
from ..terminal import adapter_lines, placement_line, stdin_is_tty
from ..validate import MAX_DRAFT
from .remote import cached, connect, given, names_models

if TYPE_CHECKING:
    from ..engine import Emulator

# llama.cpp and NumPy load inside the functions that load models (localeft/__init__.py): a
# command that talks to a server (--server) starts without them.


class Failure(click.ClickException):
    """A one-line error: `localeft: error: MESSAGE`, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"localeft: error: {self.message}", err=True)


def context_message(e: ContextOverflowError) -> str:
    if e.tokens is None:
        return f"{e} (-c/--ctx-size sets the context size)"
    return (
        f"the prompt is {'at least ' * e.at_least}{e.tokens} tokens but the context holds "
        f"{e.n_ctx}; shorten it or raise -c/--ctx-size"
    )


class ExpertType(click.ParamType):
    """FT:REF[:WEIGHT] -> Expert (paths containing ':' are not supported here)."""

    name = "FT:REF[:WEIGHT]"

    def convert(self, value, param, ctx):
        from ..engine import Expert

        if isinstance(value, Expert):
            return value
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            self.fail(f"{value!r} is not FT:REF or FT:REF:WEIGHT", param, ctx)
        try:
            return Expert(parts[0], parts[1], float(parts[2]) if len(parts) == 3 else 1.0)
        except ValueError:
            self.fail(f"weight {parts[2]!r} in {value!r} is not a number", param, ctx)


class AdapterType(click.ParamType):
    """ADAPTER[:NUMBER] -> (path, number): the number after the last ':' when there is one
    (1 by default), so paths with ':' in them still work."""

    name = "ADAPTER[:SCALE]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        path, sep, tail = value.rpartition(":")
        try:
            number = float(tail) if sep else 1.0
        except ValueError:
            path, number = value, 1.0
        path = path if sep and path else value
        if not path or not math.isfinite(number):
            self.fail(f"{value!r} is not ADAPTER or ADAPTER:NUMBER", param, ctx)
        return path, number


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
        "--small-ft-lora",
        multiple=True,
        type=AdapterType(),
        help="The small fine-tuned model is --small-base with this LoRA adapter GGUF at SCALE "
        "(default 1) applied, sharing its weights; repeatable (adapters stack).",
    ),
    opt(
        "--expert-lora",
        multiple=True,
        type=AdapterType(),
        metavar="ADAPTER[:WEIGHT]",
        help="Add WEIGHT*(small base with ADAPTER - small base) to --large-base (repeatable: "
        "one expert per adapter, all over one load of --small-base).",
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
        "--repack/--no-repack",
        default=False,
        help="Read the weights into llama.cpp's repacked CPU layout: ~11% faster CPU decoding, "
        "a load seconds longer, different rounding (default: mmap them, shared through the "
        "page cache; every command the same, so their outputs agree).",
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
        "--rpc-output",
        type=click.Choice(["auto", "local", "remote"]),
        default="auto",
        show_default=True,
        help="Where the large base's output layer runs: here (a hidden state crosses the "
        "network per token instead of the logits), on its server, or as the measured link "
        "and this CPU say.",
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


def resolve_models(o: dict, find=None) -> tuple[dict, dict]:
    """Models by role (explicit paths > preset roles) and the preset's settings ({} if none).
    `small_ft` may be a LoRA (--small-ft-lora, or a preset's adapters); with --expert or
    --expert-lora, `experts` holds the Expert list and there is no small_ft. `find(ref)`: a
    preset file's path (default: local or cached, else downloaded when allowed)."""
    lora_ft, lora_experts = o.get("small_ft_lora") or (), o.get("expert_lora") or ()
    if o["experts"] and (o["small_ft"] or (o["small_base"] and not lora_experts)):
        raise click.UsageError(
            "--expert replaces --small-ft/--small-base: give every pair as --expert FT:REF:WEIGHT"
        )
    if lora_ft and (o["small_ft"] or o["experts"] or lora_experts):
        raise click.UsageError(
            "--small-ft-lora makes the small fine-tuned model from --small-base: give no "
            "--small-ft, --expert or --expert-lora with it"
        )
    if lora_experts and o["small_ft"]:
        raise click.UsageError(
            "--expert-lora puts each adapter on --small-base: give no --small-ft with it"
        )
    if o["experts"] or lora_experts:
        needed = ["large_base", "small_base"] if lora_experts else ["large_base"]
    elif lora_ft:
        needed = ["large_base", "small_base"]
    else:
        needed = list(registry.ROLES)
    paths = {role: o[role] for role in needed if o[role]}
    missing = [role for role in needed if role not in paths]
    settings = {}
    if missing or o["preset"]:
        preset = registry.get_preset(o["preset"], o["config"])
        refs = [r for role in missing for r in preset.files(role)]
        if find is None:
            todo = [r for r in refs if r.path is None and registry.is_cached(r) is None]
            download = bool(todo) and not o["offline"] and (o["yes"] or _ask_download(preset, todo))

            def find(ref):
                return registry.resolve(ref, download=download, offline=o["offline"] or None)

        found = {ref: find(ref) for ref in refs}
        for role in missing:
            if role == "small_ft" and preset.adapters:
                continue
            paths[role] = found[preset.roles[role]]
        if "small_ft" in missing and preset.adapters:
            lora_ft = [(found[ref], scale) for ref, scale in preset.adapters]
        settings = preset.settings
    if lora_ft:
        paths["small_ft"] = LoRA(paths["small_base"], list(lora_ft))
    if o["experts"] or lora_experts:
        from ..engine import Expert

        paths["experts"] = list(o["experts"]) + [
            Expert(LoRA(paths["small_base"], adapter), paths["small_base"], weight)
            for adapter, weight in lora_experts
        ]
        paths.pop("small_base", None)
    return paths, settings


def model_file(model) -> str:
    """The GGUF file of a model argument (a LoRA's model)."""
    return str(model.model if isinstance(model, LoRA) else model)


def constraint_kwargs(o: dict) -> dict:
    """Grammar and penalty keyword arguments from the options (files read, JSON parsed)."""
    if sum(bool(o.get(k)) for k in ("grammar", "json_schema", "json_output")) > 1:
        raise click.UsageError("give one of --grammar, --json-schema, --json-output")
    if o.get("grammar") or o.get("json_schema") or o.get("json_output"):
        from ..grammar import any_json_object, schema_grammar
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
    base's layers went, when RPC servers hold some); with --server, the running server in its
    place (commands/remote.py)."""
    if o.get("server"):
        o["constraints"] = constraint_kwargs(o)
        return connect(o, resolve_models(o, find=cached) if names_models(o) else None)
    _note_local(o)
    em, settings = _open_emulator(o)
    if o.get("verbose") and em.placement:
        click.echo(placement_line(em.placement, em.rpc_output_choice), err=True)
    if o.get("verbose"):
        for line in adapter_lines(em):
            click.echo(line, err=True)
    return em, settings


def _note_local(o: dict) -> None:
    """$LOCALEFT_SERVER set, and a command that has no --server (compare, eval) loads the
    models here: say so, or the user waits for a load they thought a server would spare."""
    ctx = click.get_current_context(silent=True)
    name = ctx.info_name if ctx is not None else None
    if "server" not in o and os.environ.get("LOCALEFT_SERVER") and name in ("compare", "eval"):
        warnings.warn(
            f"LOCALEFT_SERVER is set, but `localeft {name}` loads the models here (generate, "
            "chat and score can use a server)",
            LocaleftWarning,
            stacklevel=2,
        )


def _open_emulator(o: dict) -> tuple[Emulator, dict]:
    from ..engine import Emulator

    kwargs, settings = emulator_kwargs(o)
    return Emulator(**kwargs), settings


def emulator_kwargs(o: dict) -> tuple[dict, dict]:
    """The Emulator's arguments the options describe (files resolved, downloads done), and the
    preset's settings. A grammar is checked against the fine-tuned model's vocabulary before
    any weights load."""
    from ..backend import Model
    from ..grammar import Grammar

    o["constraints"] = constraint_kwargs(o)
    paths, settings = resolve_models(o)
    if o["constraints"].get("grammar"):
        ft = paths["experts"][0].ft if "experts" in paths else paths["small_ft"]
        head = Model(model_file(ft), vocab_only=True)
        try:
            Grammar(head, o["constraints"]["grammar"]).close()
        finally:
            head.close()
    common = dict(
        n_ctx=o["ctx_size"] or settings.get("n_ctx", 4096),
        n_threads=o["threads"],
        n_gpu_layers=o["gpu_layers"],
        base_prompt=o["base_prompt"],
        repack=o["repack"],
        beta=o["beta"] if o.get("beta") is not None else settings.get("beta", 1.0),
        rpc=list(o["rpc"]) or None,
        rpc_split=o["rpc_split"],
        rpc_timeout=o["rpc_timeout"],
        rpc_output=o["rpc_output"],
    )
    if o["rpc_split"] and not o["rpc"]:
        raise click.UsageError("--rpc-split needs --rpc (the servers it splits the layers over)")
    for name, flag in (("rpc_output", "--rpc-output"), ("rpc_timeout", "--rpc-timeout")):
        if given(name) and not o["rpc"]:  # else silently without effect
            raise click.UsageError(f"{flag} needs --rpc (the servers of the large base's layers)")
    if "experts" in paths:
        return dict(base=paths["large_base"], experts=paths["experts"], **common), settings
    return dict(**paths, **common), settings


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
