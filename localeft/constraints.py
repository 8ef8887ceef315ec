"""What shapes the combined EFT row before sampling: logit bias, repetition penalties (llama.cpp's
semantics and names) and a grammar, with their state (the token history, the grammar's position).

Order, as llama.cpp's sampler chain: logit bias, then penalties, then the grammar mask, then the
Sampler's temperature / top-k / top-p / min-p. The same object serves the target p and the
draft q of speculative decoding: `branch()` copies the state for a drafted position, so both
see identical transforms there, and only accepted tokens ever reach the real state.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from . import validate
from .errors import InvalidParameterError
from .grammar import Grammar
from .sampling import Dist, Sampler

TOKEN_ID = re.compile(r"-?[0-9]+")  # a logit_bias key written as text


class GrammarDeadEnd(Exception):
    """No token can continue the grammar here (generation ends, finish_reason "grammar")."""


@dataclass(frozen=True)
class Penalties:
    """llama.cpp's penalties: over the last `repeat_last_n` tokens (prompt included; -1: the
    whole context, 0: off), a token seen c times has its logit divided by `repeat_penalty`
    (multiplied when negative), then lowered by c·frequency_penalty + presence_penalty.
    `logit_bias` adds to chosen ids' logits first (-inf bans a token)."""

    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @classmethod
    def checked(cls, n_vocab: int | None, **kw) -> Penalties:
        """Validated settings; logit_bias ids below n_vocab (None: checked later, `within`)."""
        repeat = validate.number("repeat_penalty", kw.get("repeat_penalty", 1.0), 0.0, 1e6)
        if repeat <= 0:
            raise InvalidParameterError(
                f"repeat_penalty must be > 0, got {repeat!r}", param="repeat_penalty"
            )
        last_n = validate.integer("repeat_last_n", kw.get("repeat_last_n", 64), -1)
        presence = validate.number("presence_penalty", kw.get("presence_penalty", 0.0), -1e6, 1e6)
        frequency = validate.number(
            "frequency_penalty", kw.get("frequency_penalty", 0.0), -1e6, 1e6
        )
        bias = kw.get("logit_bias") or {}
        if not isinstance(bias, dict):
            raise InvalidParameterError(
                "logit_bias must be a mapping {token id: bias}", param="logit_bias"
            )
        checked = {}
        for key, value in bias.items():
            tok = key
            if isinstance(key, str):  # JSON's keys: digits only ("1_0", "٣" or " 1" are typos)
                if not TOKEN_ID.fullmatch(key):
                    raise InvalidParameterError(
                        f"logit_bias key {key!r} is not a token id", param="logit_bias"
                    )
                tok = int(key)
            tok = validate.integer(
                "logit_bias token id", tok, 0, None if n_vocab is None else n_vocab - 1
            )
            if tok in checked:  # "1" and "01": which bias was meant?
                raise InvalidParameterError(
                    f"logit_bias gives token {tok} twice", param="logit_bias"
                )
            if value == "-inf" or isinstance(value, (int, float)) and value == -math.inf:
                checked[tok] = -math.inf
            else:
                checked[tok] = validate.number(f"logit_bias[{tok}]", value, -1e6, 1e6)
        return cls(repeat, last_n, presence, frequency, checked)

    def within(self, n_vocab: int) -> Penalties:
        """These settings, if every logit_bias id is below n_vocab."""
        for tok in self.logit_bias:
            validate.integer("logit_bias token id", tok, 0, n_vocab - 1)
        return self

    @property
    def active(self) -> bool:
        return bool(
            self.logit_bias
            or (self.repeat_last_n != 0 and self.repeat_penalty != 1.0)
            or (self.repeat_last_n != 0 and (self.presence_penalty or self.frequency_penalty))
        )


class Constraints:
    """Penalties and a grammar applied to rows, with their state. `choose` samples one token
    exactly from the constrained distribution; `dist` gives that distribution."""

    def __init__(
        self,
        penalties: Penalties,
        history: list[int],
        grammar: Grammar | None,
        n_ctx: int,
    ):
        self.penalties, self.history, self.grammar = penalties, history, grammar
        self.n_ctx = n_ctx
        self._bias_ids = np.array(list(penalties.logit_bias), dtype=np.int64)
        self._bias = np.array(list(penalties.logit_bias.values()), dtype=np.float32)
        self._forbidden: np.ndarray | None = None  # the grammar's mask at this state, once known

    def branch(self) -> Constraints:
        grammar = self.grammar.clone() if self.grammar is not None else None
        return Constraints(self.penalties, list(self.history), grammar, self.n_ctx)

    def accept(self, token: int) -> None:
        self.history.append(token)
        if self.grammar is not None:
            self.grammar.accept(token)
            self._forbidden = None

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()

    # --- transforms ---------------------------------------------------------------------------
    def apply(self, row: np.ndarray) -> np.ndarray:
        """Logit bias and penalties, in place (the grammar comes in `choose` / `dist`)."""
        p = self.penalties
        if self._bias_ids.size:
            ids = self._bias_ids[self._bias_ids < row.size]
            row[ids] += self._bias[: ids.size]
        n = self.n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
        if (
            n
            and self.history
            and (p.repeat_penalty != 1 or p.presence_penalty or p.frequency_penalty)
        ):
            recent = np.asarray(self.history[-n:])
            ids, counts = np.unique(recent[recent < row.size], return_counts=True)
            x = row[ids]
            if p.repeat_penalty != 1:
                x = np.where(
                    x <= 0, x * np.float32(p.repeat_penalty), x / np.float32(p.repeat_penalty)
                )
            x = x - (counts * p.frequency_penalty + p.presence_penalty).astype(np.float32)
            row[ids] = x
        return row

    def choose(self, sampler: Sampler, row: np.ndarray) -> int:
        """One token from the constrained distribution of `row` (modified in place). Where it is
        exact to do so (greedy, or temperature without filters) the token is drawn first and
        the grammar asked about it alone, as llama.cpp does: a rejected draw is redrawn from
        the masked row, which is rejection sampling, so the result follows the masked
        distribution exactly. With top-k / top-p / min-p the mask comes first."""
        self.apply(row)
        g = self.grammar
        if g is None:
            return sampler(row)
        if sampler.params.greedy or not sampler.params.filtered:
            tok = sampler(row)
            if g.allows(tok):
                return tok
        g.mask(row)
        if not np.isfinite(row).any() or np.isneginf(row.max()):
            raise GrammarDeadEnd
        return sampler(row)

    def dist(self, sampler: Sampler, row: np.ndarray) -> Dist:
        """The exact constrained distribution of `row` (modified in place)."""
        self.apply(row)
        g = self.grammar
        if g is not None:
            if sampler.params.greedy:
                tok = int(np.argmax(row))
                if g.allows(tok):
                    return Dist(np.array([tok]), np.ones(1))
            self._mask(row)
            if np.isneginf(row.max()):
                raise GrammarDeadEnd
        return sampler.dist(row)

    def _mask(self, row: np.ndarray) -> None:
        """The grammar's mask on `row`, in place, asked of the grammar engine once per state:
        a speculative position's draft q and target p are both masked at the same state, and
        a full mask of a large vocabulary costs the engine tens of milliseconds."""
        if self._forbidden is None or self._forbidden.size != row.size:
            self._forbidden = np.isneginf(self.grammar.mask(np.zeros(row.size, np.float32)))
        row[self._forbidden] = -np.inf
