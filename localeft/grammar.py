"""llama.cpp's own grammar engine (GBNF), through llama-cpp-python's sampler bindings: which
tokens a grammar allows next, advancing its state, and cloning that state (speculative
decoding drafts on a copy and keeps only what was accepted).

JSON schemas become GBNF through localeft.schema, which enforces every keyword it accepts and
refuses the others (llama-cpp-python's converter ignored numeric limits and more, silently).
"""

from __future__ import annotations

import ctypes
import json

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF

from .backend import Model
from .native import captured_stderr, last_llama_error, llama_log_tail_clear
from .errors import InvalidParameterError
from .schema import schema_to_gbnf

_TOKEN = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)
assert _TOKEN.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


def _reason(printed: list[str]) -> str:
    """llama.cpp's own words for a rejected grammar, on one line."""
    for text in printed:  # the parser prints "parse: error parsing grammar: WHAT\n\nSOURCE"
        for line in text.splitlines():
            if "error parsing grammar:" in line:
                return line.split("error parsing grammar:", 1)[1].strip()
    return last_llama_error(anything=True) or "llama.cpp rejected it"


def schema_grammar(schema) -> str:
    """GBNF for a JSON schema (a dict, or JSON text); InvalidParameterError (one line) if it is
    not one, or uses a keyword the grammar cannot enforce (see localeft.schema)."""
    if isinstance(schema, (bytes, str)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise InvalidParameterError(
                f"the JSON schema is not JSON: {e.msg} at {e.pos}"
            ) from None
        except RecursionError:  # json's decoder recurses once per level
            raise InvalidParameterError(
                "cannot use this JSON schema: it nests too deeply"
            ) from None
    if not isinstance(schema, dict):
        raise InvalidParameterError("a JSON schema must be an object")
    return schema_to_gbnf(schema)


def any_json_object() -> str:
    """GBNF for any JSON object (llama.cpp's json.gbnf)."""
    return JSON_GBNF


class Grammar:
    """One grammar state over a model's vocabulary. `mask(row)` sets what it forbids to -inf;
    `allows(token)` checks one token cheaply; `accept(token)` advances; `clone()` branches."""

    def __init__(self, model: Model, text: str, root: str = "root", *, _sampler=None):
        self.model = model
        self.text, self.root = text, root
        if _sampler is None:
            if not isinstance(text, str) or not text.strip():
                raise InvalidParameterError("the grammar is empty", param="grammar")
            llama_log_tail_clear()
            with captured_stderr() as printed:
                _sampler = llama_cpp.llama_sampler_init_grammar(
                    model.vocab_ptr, text.encode("utf-8"), root.encode("utf-8")
                )
            if not _sampler:
                raise InvalidParameterError(f"invalid grammar: {_reason(printed)}", param="grammar")
        self._smpl = _sampler
        self._n = model.n_vocab
        self._data = np.zeros(self._n, dtype=_TOKEN)
        self._data["id"] = np.arange(self._n, dtype=np.int32)
        self._one = np.zeros(1, dtype=_TOKEN)
        self._arr = self._array(self._data)
        self._arr_one = self._array(self._one)

    @staticmethod
    def _array(data: np.ndarray):
        return llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=data.size,
            selected=-1,
            sorted=False,
        )

    def mask(self, row: np.ndarray) -> np.ndarray:
        """Set every token the grammar forbids next to -inf, in place (row: ids 0..len-1)."""
        n = row.size
        data = self._data[:n]
        data["logit"] = row
        self._arr.size = n
        self._arr.selected = -1
        llama_cpp.llama_sampler_apply(self._smpl, ctypes.byref(self._arr))
        np.copyto(row, data["logit"])
        return row

    def allows(self, token: int) -> bool:
        self._one["id"] = token
        self._one["logit"] = 0.0
        self._arr_one.selected = -1
        llama_cpp.llama_sampler_apply(self._smpl, ctypes.byref(self._arr_one))
        return bool(np.isfinite(self._one["logit"][0]))

    def accept(self, token: int) -> None:
        """Advance past `token` (which must be allowed: llama.cpp aborts otherwise)."""
        llama_cpp.llama_sampler_accept(self._smpl, token)

    def clone(self) -> Grammar:
        return Grammar(
            self.model, self.text, self.root, _sampler=llama_cpp.llama_sampler_clone(self._smpl)
        )

    def close(self) -> None:
        if getattr(self, "_smpl", None):
            llama_cpp.llama_sampler_free(self._smpl)
            self._smpl = None

    __del__ = close
