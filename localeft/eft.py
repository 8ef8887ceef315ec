"""The EFT formula, vectorised: log p(y) ∝ base(y) + Σ_i w_i · (ft_i(y) − ref_i(y)).

Why raw logits suffice: each model's log-softmax is its logits minus one constant (its
log-normaliser) per position, so

    ls_base + Σ w_i (ls_ft_i − ls_ref_i) = logits_base + Σ w_i (logits_ft_i − logits_ref_i) + C

with C the same for every token. Renormalising removes C, so one softmax of the combined raw
logits is exactly the EFT distribution (the tests check this against per-model log-softmaxes in
float64). Padded vocabularies: only ids [0, n_shared) are combined; ids that only some models
have are never produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from .errors import InvalidParameterError


@dataclass(frozen=True)
class Term:
    """One fine-tuning delta: weight · (logits of ft − logits of ref), by row index."""

    ft: int
    ref: int
    weight: float


def check_weight(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v):
        raise InvalidParameterError(f"{name} must be finite, got {value!r}")
    return v


class Combiner:
    """Combines the logits of several models into one EFT logits vector, into preallocated
    buffers (no per-step allocation of vocabulary-sized arrays)."""

    def __init__(
        self,
        n_shared: int,
        base: int,
        terms: Sequence[Term],
        max_rows: int = 1,
        never: np.ndarray | None = None,
    ):
        """`never`: ids whose combined logit is -inf whatever the models say (padding)."""
        self.n = n_shared
        self.base = base
        self.terms = list(terms)
        self.never = never if never is not None and never.size else None
        self._out = np.empty((max_rows, n_shared), dtype=np.float32)
        self._tmp = np.empty((max_rows, n_shared), dtype=np.float32)

    def combine(self, logits: Sequence[np.ndarray]) -> np.ndarray:
        """`logits[i]` are model i's rows (shape (m, n_vocab_i) or (n_vocab_i,)); returns the
        combined rows, shape like the input, over the shared range. Valid until the next call."""
        n = self.n
        one_row = logits[self.base].ndim == 1
        rows = 1 if one_row else logits[self.base].shape[0]
        if rows > self._out.shape[0]:
            self._out = np.empty((rows, n), dtype=np.float32)
            self._tmp = np.empty((rows, n), dtype=np.float32)
        out, tmp = self._out[:rows], self._tmp[:rows]

        def view(i: int) -> np.ndarray:
            x = logits[i]
            return x[None, :n] if one_row else x[:, :n]

        src = view(self.base)
        for t in self.terms:
            if t.weight == 0:
                continue
            if t.weight == 1:
                np.add(src, view(t.ft), out=out)
                np.subtract(out, view(t.ref), out=out)
            else:
                np.subtract(view(t.ft), view(t.ref), out=tmp)
                tmp *= np.float32(t.weight)
                np.add(src, tmp, out=out)
            src = out
        if src is not out:
            np.copyto(out, src)
        if self.never is not None:
            out[:, self.never] = -np.inf
        return out[0] if one_row else out


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Float64 log-softmax over the last axis."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
