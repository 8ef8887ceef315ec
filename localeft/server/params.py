"""OpenAI request bodies -> `request.Request`s (one per prompt), and what the response must
carry (stream, usage, logprobs, echo).

This module only maps OpenAI's field names onto `request.build`'s settings, which validates
them as it does for the Python API and the CLI (one message per setting); it checks what is the
API's alone (shapes, `n`, `echo`, `logprobs` forms) and fills OpenAI's defaults (temperature 1).
Unknown fields are ignored, as OpenAI-compatible servers do; fields that would change the output
but cannot be honoured (`n` > 1, `suffix`) are errors.

Tools (`tools`, `tool_choice`, `parallel_tool_calls`) are request.build's settings of the same
names; the legacy `functions` / `function_call` are refused with a pointer to them.

Penalties and `logit_bias` take llama.cpp's semantics (as llama-server does: the penalties look
back `repeat_last_n` tokens, prompt included); `response_format` (json_object / json_schema),
llama-server's `grammar` and `json_schema` constrain the combined distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import request, validate
from ..errors import InvalidParameterError
from ..grammar import any_json_object
from ..request import MAX_TOP_LOGPROBS

MODES = {"eft": "eft", "large": "base", "small": "ft"}  # API name -> engine mode (as the CLI's)

# Settings the Emulator checks itself, by the name its messages use (the same as the API's).
ENGINE_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "beta")
ENGINE_FIELDS += ("speculative", "draft_tokens", "logprobs", "prompt", "messages", "mode")


@dataclass
class ApiRequest:
    """One validated API request."""

    chat: bool
    prompts: list  # chat: one list of messages; completions: strings or token-id lists
    requests: list[request.Request]  # one per prompt (echo-only prompts: checked, not run)
    stream: bool = False
    include_usage: bool = False
    top_logprobs: int | None = None  # None: no logprobs asked
    echo: bool = False
    max_tokens: int | None = None  # 0: score the prompt only (echo)


def _get(body: dict, name: str):
    """A field's value; JSON null counts as absent (clients send it for "default")."""
    return body.get(name)


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = _get(body, name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be true or false, got {value!r}", param=name)
    return value


def _unsupported(body: dict) -> None:
    n = _get(body, "n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise InvalidParameterError(f"n must be 1 (one choice per request), got {n!r}", param="n")
    best_of = _get(body, "best_of")
    if best_of is not None and (isinstance(best_of, bool) or best_of != 1):
        raise InvalidParameterError(f"best_of must be 1, got {best_of!r}", param="best_of")
    if _get(body, "suffix"):
        raise InvalidParameterError("suffix is not supported", param="suffix")
    for old in ("functions", "function_call"):
        if _get(body, old) is not None:
            raise InvalidParameterError(
                f"{old} is OpenAI's deprecated form: use tools and tool_choice", param=old
            )


def _settings(body: dict, max_tokens, n_ctx: int) -> dict:
    """Emulator.stream keyword arguments: OpenAI's defaults where the field is absent."""
    mode = _get(body, "mode")
    mode = "eft" if mode is None else validate.choice("mode", mode, tuple(MODES))
    s = dict(
        max_tokens=n_ctx if max_tokens is None else max_tokens,  # until the end or a full context
        temperature=1.0,  # OpenAI's default
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        mode=MODES[mode],
    )
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "beta"):
        value = _get(body, name)
        if value is not None:
            s[name] = value
    for name in ("speculative", "draft_tokens") + PENALTIES + TOOLS:
        if _get(body, name) is not None:
            s[name] = body[name]
    s.update(_format(body))
    return s


PENALTIES = ("frequency_penalty", "presence_penalty", "repeat_penalty", "repeat_last_n")
PENALTIES += ("logit_bias",)
TOOLS = ("tools", "tool_choice", "parallel_tool_calls")


def _format(body: dict) -> dict:
    """Structured output: OpenAI's response_format, or llama-server's grammar / json_schema."""
    out = {}
    fmt = _get(body, "response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            raise InvalidParameterError(
                "response_format must be {type: text | json_object | json_schema}",
                param="response_format",
            )
        if fmt["type"] == "json_object":
            out["grammar"] = any_json_object()
        elif fmt["type"] == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise InvalidParameterError(
                    "response_format.json_schema needs a schema object", param="response_format"
                )
            out["json_schema"] = schema
    for name in ("grammar", "json_schema"):
        if _get(body, name) is not None:
            if out:
                raise InvalidParameterError(
                    "give one of response_format, grammar, json_schema", param=name
                )
            out[name] = body[name]
    return out


def _max_tokens(body: dict, chat: bool):
    if chat and _get(body, "max_completion_tokens") is not None:
        return body["max_completion_tokens"]
    return _get(body, "max_tokens")


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _flag(body, "stream")
    options = _get(body, "stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidParameterError(
            f"stream_options must be an object, got {options!r}", param="stream_options"
        )
    usage = _flag(options or {}, "include_usage")
    return stream, usage


def chat(body: dict, n_ctx: int) -> ApiRequest:
    """A /v1/chat/completions body."""
    _unsupported(body)
    messages = _get(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidParameterError(
            "messages must be a non-empty list of {role, content}", param="messages"
        )
    top = None
    if _flag(body, "logprobs"):
        n = _get(body, "top_logprobs")
        top = 0 if n is None else validate.integer("top_logprobs", n, 0, MAX_TOP_LOGPROBS)
    elif _get(body, "top_logprobs") is not None:
        raise InvalidParameterError("top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = _max_tokens(body, chat=True)
    stream, usage = _stream(body)
    settings = _settings(body, max_tokens, n_ctx)
    if top is not None:
        settings["logprobs"] = top
    req = request.build(messages, **settings)
    return ApiRequest(True, [messages], [req], stream, usage, top, max_tokens=max_tokens)


def _prompts(prompt) -> list:
    """A completions prompt: a string, token ids, or a batch of either (one choice each)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(
            isinstance(p, list)
            and p
            and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompt
        ):
            return list(prompt)
    raise InvalidParameterError(
        "prompt must be a string, a list of token ids, or a list of either (a batch)",
        param="prompt",
    )


def completion(body: dict, n_ctx: int) -> ApiRequest:
    """A /v1/completions body. `echo` with `max_tokens: 0` scores the prompt's own tokens."""
    _unsupported(body)
    prompts = _prompts(_get(body, "prompt"))
    n = _get(body, "logprobs")
    top = None if n is None else validate.integer("logprobs", n, 0, MAX_TOP_LOGPROBS)
    echo = _flag(body, "echo")
    stream, usage = _stream(body)
    max_tokens = _max_tokens(body, chat=False)
    if stream and len(prompts) > 1:
        raise InvalidParameterError("stream takes one prompt", param="prompt")
    if type(max_tokens) is int and max_tokens == 0:
        if not echo:
            raise InvalidParameterError(
                "max_tokens must be >= 1 (0 only with echo), got 0", param="max_tokens"
            )
        settings = _settings(body, 1, n_ctx)  # checked like a generation's
    else:
        settings = _settings(body, max_tokens if max_tokens is not None else 16, n_ctx)
        max_tokens = settings["max_tokens"]
    if top is not None:
        settings["logprobs"] = top
    if echo and top is not None and settings["mode"] != "eft":
        raise InvalidParameterError(
            "echo with logprobs scores the prompt under EFT only (beta 0 is the large base "
            "alone): mode must be eft",
            param="mode",
        )
    reqs = [request.build(p, **settings) for p in prompts]
    return ApiRequest(False, prompts, reqs, stream, usage, top, echo, max_tokens)
