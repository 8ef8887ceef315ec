"""Settings -> one validated `Request`, the same way for every door: the Python API
(`Emulator.stream(prompt, **settings)`), the CLI and the server (whose `server/params.py` only maps
OpenAI's field names onto these).

Everything that can be checked without the models is checked here, once, with one message per
setting (`InvalidParameterError`); what needs the vocabulary (token ids in range, a grammar's
literals) is checked when the Emulator binds the request (`Emulator.bind`). A sampled request
without a seed gets one here, so a Request is the whole recipe of its output.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal, Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from . import validate
from .constraints import Penalties
from .errors import InvalidParameterError
from .grammar import schema_grammar
from .prompts import Message, check_messages
from .sampling import SamplingParams
from .validate import MAX_DRAFT, MAX_TOP_LOGPROBS
from .tools import check_choice, check_tools, strings

Mode = Literal["eft", "base", "ft"]
MODES = ("eft", "base", "ft")


@dataclass(frozen=True)
class Request:
    """One generation request, validated. `prompt` is raw text, chat messages, or token ids
    (`kind` says which); `beta` None means the Emulator's own."""

    prompt: str | tuple[Message, ...] | tuple[int, ...]
    kind: Literal["text", "chat", "ids"]
    max_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stops: tuple[str, ...] = ()
    beta: float | None = None
    mode: Mode = "eft"
    speculative: bool | None = None  # None: the default for the hardware
    draft_tokens: int | None = None
    logprobs: int | None = None
    penalties: Penalties = field(default_factory=Penalties)
    grammar: str | None = None  # GBNF text (a JSON schema is converted here)
    tools: tuple[dict, ...] = ()  # function definitions (tools.check_tools)
    tool_choice: str = "none"  # auto | none | required | a tool's name
    parallel_tool_calls: bool = True

    @property
    def forced_call(self) -> bool:
        """A call must be made (required, or a named function): a grammar makes it parse."""
        return self.tool_choice not in ("auto", "none")


def build(
    prompt,
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    beta: float | None = None,
    mode: Mode = "eft",
    speculative: bool | None = None,
    draft_tokens: int | None = None,
    logprobs: int | None = None,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    grammar: str | None = None,
    json_schema: dict | str | None = None,
    tools: Sequence[dict] | None = None,
    tool_choice: str | dict | None = None,
    parallel_tool_calls: bool | None = None,
) -> Request:
    """A Request from a prompt and `Emulator.stream`'s keyword settings."""
    kind, checked_prompt = check_prompt(prompt)
    checked_tools = check_tools(tools)
    choice = check_choice(tool_choice, checked_tools)
    validate.flag("parallel_tool_calls", parallel_tool_calls)
    for text in strings(checked_tools):
        check_text(text, "tools")
    if checked_tools and kind != "chat":
        raise InvalidParameterError("tools need chat messages, not a raw prompt", param="tools")
    validate.choice("mode", mode, MODES)
    if logprobs is not None:
        validate.integer("logprobs", logprobs, 0, MAX_TOP_LOGPROBS)
    if beta is not None:
        beta = validate.beta(beta)
    if draft_tokens is not None:
        validate.integer("draft_tokens", draft_tokens, 1, MAX_DRAFT)
    validate.flag("speculative", speculative)
    params = SamplingParams(temperature, top_k, top_p, min_p, seed)
    if params.seed is None and not params.greedy:  # every sampled run can be repeated
        params = SamplingParams(temperature, top_k, top_p, min_p, secrets.randbits(31))
    penalties = Penalties.checked(
        None,
        repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logit_bias=logit_bias,
    )
    if grammar is not None and json_schema is not None:
        raise InvalidParameterError("give grammar or json_schema, not both", param="grammar")
    if choice not in ("auto", "none") and (grammar is not None or json_schema is not None):
        raise InvalidParameterError(
            f"tool_choice {choice!r} constrains the output to a call itself: give no grammar "
            "or JSON schema with it",
            param="tool_choice",
        )
    text = grammar
    if json_schema is not None:
        try:
            text = schema_grammar(json_schema)
        except InvalidParameterError as e:
            e.param = e.param or "json_schema"
            raise
    if text is not None and not isinstance(text, str):
        raise InvalidParameterError(f"grammar must be GBNF text, got {text!r}", param="grammar")
    return Request(
        prompt=checked_prompt,
        kind=kind,
        max_tokens=validate.integer("max_tokens", max_tokens, 1),
        sampling=params,
        stops=stops(stop),
        beta=beta,
        mode=mode,
        speculative=speculative,
        draft_tokens=draft_tokens,
        logprobs=logprobs,
        penalties=penalties,
        grammar=text,
        tools=checked_tools,
        tool_choice=choice,
        parallel_tool_calls=parallel_tool_calls is not False,
    )


def check_prompt(prompt) -> tuple[str, str | tuple]:
    """("text", str) | ("chat", messages) | ("ids", token ids), checked for shape and text."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidParameterError("the prompt is empty", param="prompt")
        check_text(prompt)
        return "text", prompt
    if is_ids(prompt):
        return "ids", tuple(token_ids("prompt", prompt))
    messages = check_messages(prompt)
    for m in messages:
        for text in strings(m, "messages"):
            check_text(text, "messages")
    return "chat", tuple(messages)


def is_ids(x) -> bool:
    """A non-empty list of token ids (ints, not bools)?"""
    return (
        isinstance(x, (list, tuple, np.ndarray))
        and len(x) > 0
        and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in x)
    )


def token_ids(name: str, ids, n_vocab: int | None = None) -> list[int]:
    """Token ids, each in [0, n_vocab) (below any bound when n_vocab is None)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise validate.bad(name, f"{name} must be a list of token ids, got {ids!r}")
    hi = None if n_vocab is None else n_vocab - 1
    return [validate.integer(f"{name} token id", t, 0, hi) for t in ids]


def stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) for x in stop):
        raise InvalidParameterError(
            f"stop must be a string or a list of strings, got {stop!r}", param="stop"
        )
    return tuple(x for x in stop if x)


def check_text(text: str, param: str = "prompt") -> None:
    """Text must be encodable as UTF-8 (a str from undecodable bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameterError(
            "the prompt is not valid UTF-8 text (undecodable bytes in the input?)", param=param
        ) from None
