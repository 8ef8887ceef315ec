"""Sampling on a (combined) logits vector: greedy, temperature, top-k, top-p, min-p, seed.

Order, as in Hugging Face's warpers: temperature, then top-k, then top-p, then min-p, each on the
renormalised result of the one before. `Sampler.dist` turns logits into the exact distribution
that `Sampler.sample` draws from; speculative decoding applies the same `dist` to the target and
the draft.

Order among tokens: by logit, ties by lower id first (a stable sort's order); every path keeps
exactly the tokens a full stable sort would keep.

Speed, for any row shape (peaked, flat, plateaus of ties, bimodal): no sort of the vocabulary and
no Python loop over it. Small kept sets (top-k, a peaked top-p nucleus) are found with threshold
counts and only they are sorted. Large ones (top-p or min-p over a flat row) are never listed
when sampling: a token is drawn from the unfiltered weights and kept if it passes the filters
(its rank and the mass ranked before it are one count and one masked sum); a rejected token
bounds the kept set from below, so the next draw comes from the tokens ranked before it. That is
rejection sampling from a superset of the kept set, so the draw follows the filtered
distribution exactly. `dist` (which must list the set) finds a large cut by bisecting on the
mass above a threshold and sorts only the tokens near the cut. Tokens more than DROP nats below
the top token (after temperature) are dropped: with 152k tokens their total mass is below 1e-16
of the top token's, under float64 resolution (a plain temperature draw, which never normalises,
leaves them in; they cannot change its float64 sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
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


def block_sums(weights: np.ndarray) -> np.ndarray:
    """Cumulative float64 sums of 4096-token blocks (the last one is the total)."""
    n = weights.size
    full = n - n % _BLOCK
    sums = np.empty(-(-n // _BLOCK))  # float64 sums, summed in buffered chunks: no float64 copy
    weights[:full].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64, out=sums[: full // _BLOCK])
    if full < n:
        sums[-1] = weights[full:].sum(dtype=np.float64)
    return np.cumsum(sums, out=sums)


def draw_dense(weights: np.ndarray, u: float, cum: np.ndarray | None = None) -> int:
    """Inverse-CDF draw over unnormalised weights by id, with a uniform u in [0, 1): float64
    sums of blocks pick the block, a cumulative sum inside it the token (no vocabulary-sized
    cumsum). `cum`: the weights' block_sums, if known."""
    if cum is None:
        cum = block_sums(weights)
    target = u * cum[-1]
    b = min(int(np.searchsorted(cum, target, side="right")), cum.size - 1)
    lo = b * _BLOCK
    inner = np.cumsum(weights[lo : lo + _BLOCK], dtype=np.float64)
    offset = target - (cum[b - 1] if b else 0.0)
    return lo + min(int(np.searchsorted(inner, offset, side="right")), inner.size - 1)


def _inverse(temperature: float) -> float:
    """1/T, clamped to [1e-30, 1e30]. Above 1e30 every token below the top weighs
    exp(-1e23) = 0 in float64 as in float32; below 1e-30 every finite logit's weight is
    exp(±1e-26) = 1 in both. So the clamp changes no weight, but keeps 0 · inf (a NaN) out of
    them: 1/T under float32's smallest number (T ≥ 1e39) rounds to 0 there, and a masked id's
    -inf times it drew padding ids (T = 1e-300 did the same through inf · 0)."""
    return min(max(1.0 / temperature, 1e-30), 1e30)


class Sampler:
    """Applies SamplingParams to logits vectors; owns the seeded random generator."""

    SMALL = 4096  # kept sets up to this size are listed and sorted; larger ones are not

    def __init__(self, params: SamplingParams, n_vocab: int):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._buf = np.empty(n_vocab, dtype=np.float32)
        self._tmp = np.empty(n_vocab, dtype=np.float32)
        self._mask = np.empty(n_vocab, dtype=bool)  # x >= t tests, without allocating
        self._keep = np.empty(n_vocab, dtype=bool)  # the superset a rejection loop draws from

    def _at_least(self, x: np.ndarray, t: float) -> np.ndarray:
        return np.greater_equal(x, t, out=self._mask[: x.size])

    # --- order statistics without sorting -----------------------------------------------------
    def _kth(self, z: np.ndarray, top: float, k: int) -> tuple[float, int]:
        """The k-th largest logit v and how many logits exceed it (< k <= count(z >= v)):
        widen the distance below the top by 4x until k tokens lie within it, then bisect on
        counts until few tokens lie between the bounds, and pick among those. A plateau of
        equal logits is recognised as ties at v (count(z > v) < k), never sorted."""
        n = z.size

        def count(v: float) -> int:
            return int(np.count_nonzero(self._at_least(z, v)))

        def above(v: float) -> int:
            return int(np.count_nonzero(np.greater(z, v, out=self._mask[:n])))

        n_hi = count(top)
        if n_hi >= k:  # ties at the top
            return top, 0
        if k >= 256 and n >= 16 * k:  # a strided sample brackets the k-th value cheaply
            found = self._kth_from_sample(z, k, count, above)
            if found is not None:
                return found
        hi, delta = top, 1.0  # count(>= hi) < k <= count(>= lo)
        lo = top - delta
        while count(lo) < k:
            if delta > 1e30:  # the rest is -inf
                return -math.inf, above(-math.inf)
            hi, n_hi, delta = lo, count(lo), delta * 4.0
            lo = top - delta
        n_lo, lowered = count(lo), 0
        for _ in range(80):
            if n_lo - n_hi <= 256:
                break
            mid = lo + (hi - lo) / 2
            if lowered >= 3 or not lo < mid < hi:  # hi keeps falling onto lo: a plateau?
                a = above(lo)
                if a < k:
                    return lo, a  # lo itself is the k-th value
                lowered = 0
            if not lo < mid < hi:
                break
            n_mid = count(mid)
            if n_mid >= k:
                lo, n_lo, lowered = mid, n_mid, 0
            else:
                hi, n_hi, lowered = mid, n_mid, lowered + 1
        inside = np.less(z, hi, out=self._keep[:n])
        between = z[np.logical_and(inside, self._at_least(z, lo), out=inside)]
        m = k - n_hi  # the k-th overall is the m-th largest between the bounds
        if between.min() == between.max():
            v = float(between[0])
        else:
            v = float(np.partition(between, between.size - m)[between.size - m])
        return v, above(v)

    def _kth_from_sample(self, z: np.ndarray, k: int, count, above) -> tuple[float, int] | None:
        """The k-th largest from a bracket that every 16th logit suggests (ranks k/16 ± 4σ
        there), verified by two exact counts; None if the sample misled (then bisect)."""
        sample = z[::16].copy()
        ks = k / 16
        margin = int(4 * math.sqrt(ks)) + 8
        lo_rank, hi_rank = min(int(ks) + margin, sample.size - 1), max(int(ks) - margin, 0)
        part = np.partition(sample, [sample.size - 1 - lo_rank, sample.size - 1 - hi_rank])
        lo, hi = float(part[sample.size - 1 - lo_rank]), float(part[sample.size - 1 - hi_rank])
        n_hi = above(hi)  # count(> hi) < k <= count(>= lo): the k-th lies in [lo, hi]
        if n_hi >= k or count(lo) < k:
            return None
        inside = np.less_equal(z, hi, out=self._keep[: z.size])
        between = z[np.logical_and(inside, self._at_least(z, lo), out=inside)]
        if between.size > 64 * margin:  # a plateau or a misleading sample
            return None
        m = k - n_hi
        v = float(np.partition(between, between.size - m)[between.size - m])
        return v, above(v)

    def _top_ids(self, z: np.ndarray, top: float, k: int) -> np.ndarray:
        """The k highest-ranked ids, in rank order (logit descending, ties by id)."""
        v, n_above = self._kth(z, top, k)
        higher = np.flatnonzero(np.greater(z, v, out=self._mask[: z.size]))
        higher = higher[np.argsort(-z[higher], kind="stable")]
        return np.concatenate([higher, self._first_equal(z, v, k - n_above)])

    @staticmethod
    def _first_equal(z: np.ndarray, v: float, m: int) -> np.ndarray:
        """The m lowest ids whose logit equals v (scanning in chunks: ties are often many)."""
        found = []
        need = m
        for start in range(0, z.size, 16384):
            ids = np.flatnonzero(z[start : start + 16384] == v)[:need] + start
            found.append(ids)
            need -= ids.size
            if need <= 0:
                break
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _mass_above(self, z: np.ndarray, w: np.ndarray, v: float) -> float:
        """Σ w over z > v, in float64 (no allocation)."""
        n = z.size
        np.multiply(w, np.greater(z, v, out=self._mask[:n]), out=self._tmp[:n])
        return float(self._tmp[:n].sum(dtype=np.float64))

    def _before_below(self, z: np.ndarray, w: np.ndarray, t: int, limit: float) -> bool:
        """Is the mass ranked before token t below `limit`? A float32 sum decides (half the
        cost of a float64 one); within its rounding of the limit, the float64 sum does."""
        n = z.size
        zt = z[t]
        ties = int(np.count_nonzero(np.equal(z[:t], zt, out=self._mask[:t]))) if t else 0
        tmp = np.multiply(w, np.greater(z, zt, out=self._mask[:n]), out=self._tmp[:n])
        mass = float(tmp.sum()) + ties * float(w[t])  # float32 pairwise sum
        if abs(mass - limit) > 1e-4 * limit:
            return mass < limit
        return float(tmp.sum(dtype=np.float64)) + ties * float(w[t]) < limit

    def _rank(self, z: np.ndarray, t: int) -> int:
        zt = z[t]
        above = int(np.count_nonzero(np.greater(z, zt, out=self._mask[: z.size])))
        return above + (int(np.count_nonzero(np.equal(z[:t], zt, out=self._mask[:t]))) if t else 0)

    def _ranked_before(self, z: np.ndarray, t: int, out: np.ndarray) -> np.ndarray:
        """out[i] = token i is ranked before token t."""
        np.greater(z, z[t], out=out)
        if t:
            out[:t] |= np.equal(z[:t], z[t], out=self._mask[:t])
        return out

    def _mass_above_near(self, z: np.ndarray, w: np.ndarray, v: float, limit: float) -> float:
        """Σ w over z > v: a float32 sum, or the float64 one when that lands within rounding
        of `limit` (a comparison with the limit is all that is asked of it)."""
        n = z.size
        tmp = np.multiply(w, np.greater(z, v, out=self._mask[:n]), out=self._tmp[:n])
        mass = float(tmp.sum())
        return mass if abs(mass - limit) > 1e-4 * limit else float(tmp.sum(dtype=np.float64))

    def _cut(self, z: np.ndarray, w: np.ndarray, limit: float, top: float) -> None:
        """Zero the weights past top-p's cut, in place: the kept set is the shortest rank-order
        prefix whose mass reaches `limit`. Bisect on the mass above a threshold until few
        tokens lie near the cut (sorted, then) or they are all one value (ties: taken by id,
        counted, not sorted)."""
        n = z.size

        def above(v: float) -> int:
            return int(np.count_nonzero(np.greater(z, v, out=self._mask[:n])))

        lo, hi = float(np.nextafter(z.min(), -np.inf)), top  # mass(>lo) >= limit > mass(>hi)
        same, last_near = 0, -1
        for _ in range(60):
            near = above(lo) - above(hi)
            if near <= self.SMALL:
                break
            same = same + 1 if near == last_near else 0
            if same >= 3:  # halving the bracket no longer sheds tokens: one tied value
                break
            last_near = near
            mid = lo + (hi - lo) / 2
            if not lo < mid < hi:
                break
            if self._mass_above_near(z, w, mid, limit) < limit:
                hi = mid
            else:
                lo = mid
        m_hi = self._mass_above(z, w, hi)
        ids = np.flatnonzero((z > lo) & (z <= hi))
        values = z[ids]
        if ids.size > self.SMALL and values.min() == values.max():  # a plateau: count ties
            wv = float(w[ids[0]])
            m = max(1, min(ids.size, math.ceil((limit - m_hi) / wv)))
            while m > 1 and m_hi + (m - 1) * wv >= limit:
                m -= 1
            while m < ids.size and m_hi + m * wv < limit:
                m += 1
            last = int(ids[m - 1])
        else:
            order = np.argsort(-values, kind="stable")
            cum = m_hi + np.cumsum(w[ids[order]], dtype=np.float64)
            last = int(ids[order][min(int(np.searchsorted(cum, limit, side="left")), ids.size - 1)])
        zl = z[last]
        np.multiply(w, np.greater_equal(z, zl, out=self._mask[:n]), out=w)
        w[last + 1 :][z[last + 1 :] == zl] = 0.0  # ties ranked after the cut token

    # --- the distribution ---------------------------------------------------------------------
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
        if top_k and p.top_k <= self.SMALL:
            ids = self._top_ids(logits, top, p.top_k)
            return self._finish(logits, ids, top, inv_t)
        if not top_k and p.top_p < 1:
            fast = self._nucleus_from_head(logits, top, inv_t)
            if fast is not None:
                return self._fast_dist(*fast)
        # Large sets: thresholds over the whole row, never a sort of it; a dense result.
        w = self._weights(logits, top, inv_t)
        if top_k:
            v, above = self._kth(logits, top, p.top_k)
            keep = np.greater(logits, v, out=self._keep[:n])
            keep[self._first_equal(logits, v, p.top_k - above)] = True
            np.multiply(w, keep, out=w)
        if p.top_p < 1:
            self._cut(logits, w, p.top_p * float(w.sum(dtype=np.float64)), top)
        if p.min_p > 0:  # relative to the top token's weight, 1
            np.multiply(w, np.greater_equal(w, p.min_p, out=self._mask[:n]), out=w)
        probs = logits.astype(np.float64)  # float64 weights, as listed sets get; and a copy
        probs -= top
        probs *= inv_t
        np.exp(probs, out=probs)
        probs *= w > 0
        probs /= probs.sum()
        return Dist(None, probs)

    def _finish(self, logits, ids, top, inv_t) -> Dist:
        """Top-p and min-p on a listed set in rank order; float64 probabilities."""
        p = self.params
        z = logits[ids].astype(np.float64)
        w = np.exp((z - top) * inv_t)
        if p.top_p < 1:
            cum = np.cumsum(w) / w.sum()
            cut = int(np.searchsorted(cum, p.top_p, side="left")) + 1
            ids, w = ids[:cut], w[:cut]
        if p.min_p > 0:
            keep = w >= p.min_p * w.max()
            ids, w = ids[keep], w[keep]
        return Dist(ids, w / w.sum())

    def _nucleus_from_head(self, logits: np.ndarray, top: float, inv_t: float):
        """The top-p nucleus from the tokens within HEAD nats of the top alone, when that is
        provably exact: the rest of the vocabulary weighs at most n·e^-HEAD, and the cut is
        taken only if it is the same for the smallest and the largest possible total mass.
        Real models' rows are peaked, so this usually avoids an exp over the vocabulary."""
        n = logits.size
        head = self._at_least(logits, top - HEAD / inv_t)
        if np.count_nonzero(head) > self.SMALL:  # a flat row: not worth listing
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

    # --- drawing ------------------------------------------------------------------------------
    def sample(self, dist: Dist) -> int:
        if dist.ids is not None and dist.ids.size == 1:
            return int(dist.ids[0])
        return dist.sample(float(self.rng.random()))

    def __call__(self, logits: np.ndarray) -> int:
        """One token drawn from `dist(logits)`."""
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        n = logits.size
        top_k = 0 < p.top_k < n
        if not (top_k or p.top_p < 1 or p.min_p > 0):  # plain temperature: never normalised
            weights = self._weights(logits, float(logits.max()), _inverse(p.temperature))
            return draw_dense(weights, float(self.rng.random()))
        if top_k and p.top_k <= self.SMALL:
            return self.sample(self.dist(logits))
        top, inv_t = float(logits.max()), _inverse(p.temperature)
        if not top_k and p.top_p == 1:  # min-p alone: a threshold on the weights
            w = self._weights(logits, top, inv_t)
            np.multiply(w, np.greater_equal(w, p.min_p, out=self._mask[:n]), out=w)
            return draw_dense(w, float(self.rng.random()))
        if not top_k and p.top_p < 1:
            fast = self._nucleus_from_head(logits, top, inv_t)
            if fast is not None:
                return self.sample(self._fast_dist(*fast))
        return self._rejection(logits, top, inv_t)

    def _fast_dist(self, ids: np.ndarray, w: np.ndarray) -> Dist:
        if self.params.min_p > 0:
            keep = w >= self.params.min_p * w[0]
            ids, w = ids[keep], w[keep]
        return Dist(ids, w / w.sum())

    def _rejection(self, z: np.ndarray, top: float, inv_t: float) -> int:
        """Draw from the unfiltered weights; keep the token if it passes top-k, top-p and
        min-p; else draw again among the tokens ranked before it (every token ranked after a
        rejected one fails the same filter). Exact: each draw comes from a superset of the
        kept set, weighted as the kept set is."""
        p = self.params
        n = z.size
        w = self._weights(z, top, inv_t)
        cum = block_sums(w)
        top_k = 0 < p.top_k < n
        limit = math.inf
        if p.top_p < 1:
            if top_k:  # top-p is relative to the mass top-k kept
                v, above = self._kth(z, top, p.top_k)
                mass = self._mass_above(z, w, v) + (p.top_k - above) * math.exp((v - top) * inv_t)
            else:
                mass = float(cum[-1])
            limit = p.top_p * mass
        pool = None
        for _ in range(64):
            u = float(self.rng.random())
            if pool is None:
                t = draw_dense(w, u, cum)
            else:
                t = draw_dense(np.multiply(w, pool, out=self._tmp[:n]), u)
            ok = (not top_k or self._rank(z, t) < p.top_k) and (p.min_p == 0 or w[t] >= p.min_p)
            if ok and p.top_p < 1:
                ok = self._before_below(z, w, t, limit)
            if ok:
                return t
            pool = self._ranked_before(z, t, self._keep[:n])
        return self.sample(self.dist(z))  # (64 rejections in a row: take the listed way)
