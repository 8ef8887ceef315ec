"""Sampling on a (combined) logits vector: greedy, temperature, top-k, top-p, min-p, seed.

Order, as in Hugging Face's warpers: temperature, then top-k, then top-p, then min-p, each on the
renormalised result of the one before. `Sampler.dist` turns logits into the exact distribution
that `Sampler.sample` draws from; speculative decoding applies the same `dist` to the target and
the draft.

Speed: no full sort and no Python loop over the vocabulary. The kept set is found with cheap
threshold counts; only that (small) set is sorted. Tokens more than DROP nats below the top token
(after temperature) are dropped: with 152k tokens their total mass is below 1e-16 of the top
token's, under float64 resolution (a plain temperature draw, which never normalises, leaves them
in; they cannot change its float64 sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import validate
from .errors import InvalidParameterError

DROP = 50.0
HEAD = 20.0  # nats: the head of a row that top-p tries first
_BLOCK = 4096


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling settings; temperature 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        t = validate.number("temperature", self.temperature, lo=0)
        k = validate.integer("top_k", self.top_k, 0)
        p = validate.number("top_p", self.top_p)
        if not 0 < p <= 1:
            raise InvalidParameterError(f"top_p must be in (0, 1], got {self.top_p!r}")
        mp = validate.number("min_p", self.min_p)
        if not 0 <= mp < 1:
            raise InvalidParameterError(f"min_p must be in [0, 1), got {self.min_p!r}")
        seed = None if self.seed is None else validate.integer("seed", self.seed, 0)
        for name, value in (("temperature", t), ("top_k", k), ("top_p", p), ("min_p", mp)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "seed", seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def filtered(self) -> bool:
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0


@dataclass
class Dist:
    """A distribution over token ids: sparse (ids, probs), or dense (ids None, probs by id)."""

    ids: np.ndarray | None
    probs: np.ndarray

    def prob(self, token: int) -> float:
        if self.ids is None:
            return float(self.probs[token])
        hit = np.flatnonzero(self.ids == token)
        return float(self.probs[hit[0]]) if hit.size else 0.0

    def dense(self, n: int) -> np.ndarray:
        if self.ids is None:
            return np.asarray(self.probs[:n], dtype=np.float64)
        out = np.zeros(n, dtype=np.float64)
        out[self.ids] = self.probs
        return out

    def sample(self, u: float) -> int:
        """Inverse-CDF draw with a uniform u in [0, 1)."""
        if self.ids is None:
            return draw_dense(self.probs, u)
        cum = np.cumsum(self.probs)
        j = min(int(np.searchsorted(cum, u * cum[-1], side="right")), self.probs.size - 1)
        return int(self.ids[j])


def draw_dense(weights: np.ndarray, u: float) -> int:
    """Inverse-CDF draw over unnormalised weights by id, with a uniform u in [0, 1): float64
    sums of blocks pick the block, a cumulative sum inside it the token (no vocabulary-sized
    cumsum)."""
    n = weights.size
    full = n - n % _BLOCK
    sums = np.empty(-(-n // _BLOCK))  # float64 sums, summed in buffered chunks: no float64 copy
    weights[:full].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64, out=sums[: full // _BLOCK])
    if full < n:
        sums[-1] = weights[full:].sum(dtype=np.float64)
    cum = np.cumsum(sums)
    target = u * cum[-1]
    b = min(int(np.searchsorted(cum, target, side="right")), sums.size - 1)
    lo = b * _BLOCK
    inner = np.cumsum(weights[lo : lo + _BLOCK], dtype=np.float64)
    offset = target - (cum[b - 1] if b else 0.0)
    return lo + min(int(np.searchsorted(inner, offset, side="right")), inner.size - 1)


def _inverse(temperature: float) -> float:
    """1/T, capped: past 1e30 every token below the top weighs exp(-1e23) = 0 in float64 as in
    float32, so the cap changes nothing but keeps 0 · inf (a NaN) out of the top token's
    weight for tiny temperatures (1e-300 drew padding ids)."""
    return min(1.0 / temperature, 1e30)


class Sampler:
    """Applies SamplingParams to logits vectors; owns the seeded random generator."""

    def __init__(self, params: SamplingParams, n_vocab: int):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._buf = np.empty(n_vocab, dtype=np.float32)
        self._mask = np.empty(n_vocab, dtype=bool)  # x >= t tests, without allocating

    def _at_least(self, x: np.ndarray, t: float) -> np.ndarray:
        return np.greater_equal(x, t, out=self._mask[: x.size])

    def _count_threshold(self, z: np.ndarray, top: float, k: int) -> float:
        """A threshold t with at least k logits >= t and, unless ties prevent it, at most
        max(4k, 256): widen the distance below the top by 4x until k tokens lie within it, then
        bisect while far more do. (Widening alone overshot on peaked rows: a handful of tokens
        within 16 nats, the whole vocabulary within 64, then a full sort took 20 ms.)"""

        def count(delta: float) -> int:
            return int(np.count_nonzero(self._at_least(z, top - delta)))

        lo, hi = 0.0, 1.0
        n_hi = count(hi)
        while n_hi < k and hi < 1e6:
            lo, hi = hi, hi * 4.0
            n_hi = count(hi)
        for _ in range(40):
            if n_hi <= max(4 * k, 256):
                break
            mid = (lo + hi) / 2
            n_mid = count(mid)
            if n_mid >= k:
                hi, n_hi = mid, n_mid
            else:
                lo = mid
        return top - hi

    def dist(self, logits: np.ndarray) -> Dist:
        """The exact distribution sampling draws from, after every transform."""
        p = self.params
        if p.greedy:
            return Dist(np.array([int(np.argmax(logits))]), np.ones(1))
        inv_t = _inverse(p.temperature)
        top = float(logits.max())
        n = logits.size
        top_k = 0 < p.top_k < n  # a top-k as large as the vocabulary keeps everything
        if not (top_k or p.top_p < 1 or p.min_p > 0):  # dense: exp into a preallocated buffer
            buf = self._weights(logits, top, inv_t)
            buf[np.less(buf, math.exp(-DROP), out=self._mask[:n])] = 0.0
            return Dist(None, buf / buf.sum(dtype=np.float64))  # a copy: Dists outlive the call
        # Candidates: a superset of what the filters keep, found without sorting the vocabulary.
        total = None  # the mass top-p is relative to
        if top_k:
            floor = max(top - DROP * p.temperature, self._count_threshold(logits, top, p.top_k))
            if p.min_p > 0 and p.top_p == 1:
                floor = max(floor, top + p.temperature * math.log(p.min_p))
            ids = np.flatnonzero(self._at_least(logits, floor))
        elif p.top_p < 1 and (fast := self._nucleus_from_head(logits, top, inv_t)) is not None:
            ids, w = fast
            if p.min_p > 0:
                keep = w >= p.min_p * w[0]
                ids, w = ids[keep], w[keep]
            return Dist(ids, w / w.sum())
        elif p.top_p < 1:
            # Widen a weight threshold until the tokens above it hold top_p of the mass: the
            # nucleus (a prefix of the sorted order) lies inside that set.
            buf = self._weights(logits, top, inv_t)
            total = float(buf.sum(dtype=np.float64))
            if 1.0 >= p.top_p * total:  # the top token alone is the nucleus (common)
                return Dist(np.array([int(np.argmax(logits))]), np.ones(1))
            for c in (1e-2, 1e-4, 1e-7, math.exp(-DROP)):
                c = max(c, p.min_p)
                kept = np.sum(buf, where=self._at_least(buf, c), dtype=np.float64)
                if c == p.min_p or kept >= p.top_p * total:
                    break
            ids = np.flatnonzero(self._at_least(buf, c))
        else:  # min-p only
            ids = np.flatnonzero(self._at_least(logits, top + p.temperature * math.log(p.min_p)))
        z = logits[ids].astype(np.float64)
        order = np.argsort(-z, kind="stable")
        ids, z = ids[order], z[order]
        if top_k:
            ids, z = ids[: p.top_k], z[: p.top_k]
        w = np.exp((z - top) * inv_t)
        if p.top_p < 1:
            cum = np.cumsum(w) / (w.sum() if total is None else total)
            cut = int(np.searchsorted(cum, p.top_p, side="left")) + 1
            ids, w = ids[:cut], w[:cut]
        if p.min_p > 0:
            keep = w >= p.min_p * w[0]
            ids, w = ids[keep], w[keep]
        return Dist(ids, w / w.sum())

    def _nucleus_from_head(self, logits: np.ndarray, top: float, inv_t: float):
        """The top-p nucleus from the tokens within HEAD nats of the top alone, when that is
        provably exact: the rest of the vocabulary weighs at most n·e^-HEAD, and the cut is
        taken only if it is the same for the smallest and the largest possible total mass.
        Real models' rows are peaked, so this usually avoids an exp over the vocabulary."""
        n = logits.size
        head = self._at_least(logits, top - HEAD / inv_t)
        if np.count_nonzero(head) > 4096:  # a flat row: not worth listing
            return None
        ids = np.flatnonzero(head)
        z = logits[ids].astype(np.float64)
        order = np.argsort(-z, kind="stable")
        ids, w = ids[order], np.exp((z[order] - top) * inv_t)
        cum = np.cumsum(w)
        low = cum[-1]
        high = low + (n - ids.size) * math.exp(-HEAD)
        cut = int(np.searchsorted(cum / low, self.params.top_p, side="left")) + 1
        if cut > ids.size or cut != int(np.searchsorted(cum / high, self.params.top_p)) + 1:
            return None
        return ids[:cut], w[:cut]

    def _weights(self, logits: np.ndarray, top: float, inv_t: float) -> np.ndarray:
        """exp((logits − top) / T) into the preallocated buffer (top token = 1)."""
        buf = self._buf[: logits.size]
        np.subtract(logits, top, out=buf)
        if inv_t != 1.0:
            buf *= inv_t
        return np.exp(buf, out=buf)

    def sample(self, dist: Dist) -> int:
        if dist.ids is not None and dist.ids.size == 1:
            return int(dist.ids[0])
        return dist.sample(float(self.rng.random()))

    def __call__(self, logits: np.ndarray) -> int:
        """One token drawn from `dist(logits)`."""
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        if not p.filtered:  # plain temperature: draw from the weights, never normalised
            weights = self._weights(logits, float(logits.max()), _inverse(p.temperature))
            return draw_dense(weights, float(self.rng.random()))
        return self.sample(self.dist(logits))
