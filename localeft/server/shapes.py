"""OpenAI's response shapes, built from what the Emulator returns: completions, chat
completions, their stream chunks, logprobs in both APIs' forms, usage and errors.

Each response also carries a `localeft` object that OpenAI clients ignore: the generation's
stats (tokens/s, speculative acceptance), the seed it used, and, when logprobs were asked, the
per-token records of `TokenInfo.as_dict()` (EFT and each model's log-probs, what the large base
alone would have picked) for the chat page's token view.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable, Sequence

from ..engine import Generation
from ..scoring import TokenInfo

# engine finish reasons -> OpenAI's ("grammar": no token could continue it, the output ends)
FINISH = {"eog": "stop", "stop": "stop", "grammar": "stop", "length": "length", "context": "length"}
FINISH["tool_calls"] = "tool_calls"
FINISH["interrupted"] = "stop"  # the server shut down mid-reply: the reply ends there


class APIError(Exception):
    """An error answered as OpenAI does: a status and {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def extension(g: Generation | None, records: Sequence[TokenInfo] | None = None, **more) -> dict:
    """The `localeft` object: stats and seed of a generation, per-token records if asked."""
    d = dict(more)
    if g is not None:
        d.update(stats=g.stats.as_dict(), seed=g.seed, finish_reason=g.finish_reason)
    if records is not None:
        d["tokens"] = [r.as_dict() for r in records]
    return d


# --- chat ------------------------------------------------------------------------------------
def chat_logprobs(records: Sequence[TokenInfo], top: int, piece: Callable[[int], bytes]) -> dict:
    """Chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def entry(token_id: int, text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(piece(token_id))}

    return {
        "content": [
            {
                **entry(r.id, r.text, r.logprob),
                "top_logprobs": [entry(i, t, lp) for i, t, lp in r.top[:top]],
            }
            for r in records
        ],
        "refusal": None,
    }


def message(g: Generation) -> dict:
    """The assistant's message: its content, and the calls it made."""
    out = {"role": "assistant", "content": g.content, "refusal": None}
    if g.tool_calls:
        out["tool_calls"] = [c.as_dict() for c in g.tool_calls]
    return out


def tool_deltas(g: Generation, split) -> list[dict]:
    """The last deltas of a streamed reply with tools: the content held back (`split`, a
    toolformat.ContentStream), then one delta per call, as OpenAI streams them."""
    if split is None:
        return []
    out = []
    rest = split.finish(g.content)
    if rest:
        out.append({"content": rest})
    for i, call in enumerate(g.tool_calls):
        out.append({"tool_calls": [{"index": i, **call.as_dict()}]})
    return out


def chat_completion(rid: str, model: str, g: Generation, logprobs: dict | None, ext: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message(g),
                "logprobs": logprobs,
                "finish_reason": FINISH.get(g.finish_reason),
            }
        ],
        "usage": usage(g.stats.prompt_tokens, len(g.tokens)),
        "localeft": ext,
    }


def chat_chunk(
    rid: str,
    model: str,
    delta: dict | None,
    *,
    logprobs: dict | None = None,
    finish: str | None = None,
    ext: dict | None = None,
    usage_: dict | None = None,
) -> dict:
    """One chunk of a streamed chat completion; `delta` None: the usage chunk (no choices)."""
    chunk = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    if ext:
        chunk["localeft"] = ext
    return chunk


# --- completions -----------------------------------------------------------------------------
def completion_logprobs(
    texts: Sequence[str],
    logprobs: Sequence[float | None],
    tops: Sequence[Sequence[tuple[int, str, float]] | None],
    start: int,
) -> dict:
    """Legacy logprobs: tokens, token_logprobs, top_logprobs ({text: logprob}), text_offset
    (where each token starts in the choice's text, counting from `start`)."""
    offsets, at = [], start
    for t in texts:
        offsets.append(at)
        at += len(t)
    top_dicts = []
    for top in tops:
        if top is None:
            top_dicts.append(None)
            continue
        d: dict[str, float] = {}
        for _, text, lp in top:  # texts may repeat (byte tokens): keep the most likely
            d.setdefault(text, lp)
        top_dicts.append(d)
    return {
        "tokens": list(texts),
        "token_logprobs": list(logprobs),
        "top_logprobs": top_dicts,
        "text_offset": offsets,
    }


def completion_choice(index: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion(rid: str, model: str, choices: list[dict], usage_: dict, ext: dict) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage_,
        "localeft": ext,
    }


def completion_chunk(
    rid: str,
    model: str,
    choice: dict | None,
    *,
    ext: dict | None = None,
    usage_: dict | None = None,
) -> dict:
    chunk = {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [] if choice is None else [choice],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    if ext:
        chunk["localeft"] = ext
    return chunk
