"""The models' tokenizer over HTTP, in the shapes llama-server and vLLM answer, so clients need
no separate copy of it (lm-evaluation-harness's `tokenizer_backend=remote` asks for these):

    POST /tokenize      {"content" | "prompt": text, "add_special" | "add_special_tokens",
                         "parse_special", "with_pieces"}  -> {"tokens": [...], "count": n}
    POST /detokenize    {"tokens": [...]}                 -> {"content": text, "prompt": text}
    GET  /tokenizer_info                                  -> eos/bos tokens, chat template, n_ctx

`add_special` (BOS) defaults to off for llama-server's `content`, on for vLLM's `prompt`, as each
server does; control tokens written in the text are parsed unless `parse_special` is false.
"""

from __future__ import annotations

from ..backend import Model
from ..errors import InvalidParameterError
from ..request import check_text, token_ids


def _flag(body: dict, names: tuple[str, ...], default: bool) -> bool:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, bool):
                raise InvalidParameterError(f"{name} must be true or false", param=name)
            return value
    return default


def tokenize(model: Model, body: dict) -> dict:
    vllm = "content" not in body and "prompt" in body
    text = body.get("prompt" if vllm else "content")
    if not isinstance(text, str):
        raise InvalidParameterError("content must be a string", param="content")
    check_text(text, "content")
    add = _flag(body, ("add_special", "add_special_tokens"), vllm)
    special = _flag(body, ("parse_special",), True)
    ids = model.tokenize(text, add_bos=add, special=special)
    out: dict = {"tokens": ids, "count": len(ids)}
    if _flag(body, ("with_pieces",), False):
        pieces = []
        for t in ids:
            raw = model.piece(t) if not model.is_special_attr(model.token_attr(t)) else b""
            raw = raw or model.token_text(t)
            try:
                piece = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)  # llama-server's form for a partial UTF-8 sequence
            pieces.append({"id": t, "piece": piece})
        out["tokens"] = pieces
    return out


def detokenize(model: Model, body: dict) -> dict:
    ids = token_ids("tokens", body.get("tokens", []), model.n_vocab)
    text = model.detokenize(ids)
    return {"content": text, "prompt": text}


def info(model: Model, n_ctx: int) -> dict:
    return {
        "eos_token": model.special_text("eos") or None,
        "bos_token": model.special_text("bos") or None,
        "pad_token": None,
        "add_bos_token": model.add_bos,
        "chat_template": model.chat_template,
        "model_max_length": n_ctx,
    }
