"""Speculative EFT decoding: the small fine-tuned model drafts, the block is verified exactly.

A decoder beside decoding.PlainDecoder, over the same Ensemble. Per iteration the drafter (an
expert's fine-tuned model, `Emulator(drafter=i)`) samples k tokens from its own distribution q
(after the same sampling transforms as the target); every other context scores the k drafted
tokens in ONE batch (logits at every position); the EFT target p is combined at each position;
the standard rejection rule (`accept`, a pure function) keeps the output distributed exactly as
plain EFT sampling with the same settings. Contexts roll back lazily: each `sync` keeps the
common prefix.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from .context import MAX_OUTPUTS
from .decoding import Decoder
from .constraints import GrammarDeadEnd
from .errors import ContextOverflowError
from .request import MAX_DRAFT
from .sampling import Dist

K_START, K_MAX = 4, 12
assert MAX_DRAFT == MAX_OUTPUTS - 1  # verification asks for k + 1 logits rows in one decode


def use_speculative(
    requested: bool | None,
    gpu_offload: bool,
    draft_tokens: int | None,
    masked_sampling: bool = False,
) -> bool:
    """None means the default: on where it is faster, i.e. when the models run on a GPU, and
    not for sampling under a grammar (`masked_sampling`): there every drafted position needs a
    full grammar mask of the vocabulary (tens of ms) where plain decoding mostly asks the
    grammar about the drawn token alone.

    There, verifying a block of k tokens costs little more than one step (k=8: 1.24x on an
    H100). On a CPU the cost of a batch grows almost linearly with k (1.5B Q4_K_M on 2 cores:
    k=1 36 ms, k=4 105 ms, k=12 330 ms), so drafting cannot pay for itself: measured 0.8-0.9x
    the speed of plain EFT (docs/PERFORMANCE.md). A fixed draft length asks for it explicitly.
    A base on RPC servers does not count as offload: with CPU servers it measured 1.1-1.3x
    slower than plain EFT on every emulated link, LAN to a far 50 Mbit/s, 15 ms one (the round
    trips a block saves do not pay for a CPU server verifying it; docs/DISTRIBUTED.md); with GPU
    servers, ask for it.
    """
    if requested is not None:
        return bool(requested)
    if draft_tokens is not None:
        return True
    return gpu_offload and not masked_sampling


def residual(p: Dist, q: Dist) -> Dist:
    """normalise(max(0, p − q)); its support lies inside p's."""
    if p.ids is None:
        r = np.maximum(p.probs - q.dense(p.probs.size), 0.0)
        ids = None
    else:
        r = np.maximum(p.probs - _probs_at(q, p.ids), 0.0)
        ids = p.ids
    total = r.sum()
    if total <= 0:  # p == q up to rounding: any draw from p is right
        return p
    return Dist(ids, r / total)


def _probs_at(d: Dist, ids: np.ndarray) -> np.ndarray:
    if d.ids is None:
        return d.probs[ids].astype(np.float64)
    order = np.argsort(d.ids)
    sorted_ids = d.ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == ids, d.probs[order][pos], 0.0)


def accept(
    p: Sequence[Dist], q: Sequence[Dist], draft: Sequence[int], rng: np.random.Generator
) -> tuple[int, Dist | None]:
    """Rejection sampling over a drafted block (pure: no models involved).

    Accepts draft[i] with probability min(1, p_i(d)/q_i(d)). Returns (n_accepted, dist to draw
    the next token from): the residual at the first rejection, or None when every drafted token
    was accepted (then the caller draws a bonus token from p_k).
    """
    for i, d in enumerate(draft):
        pd, qd = p[i].prob(d), q[i].prob(d)
        if rng.random() * qd < pd:
            continue
        return i, residual(p[i], q[i])
    return len(draft), None


class SpeculativeDecoder(Decoder):
    """Draft-then-verify steps over the group; yields accepted tokens. Every context is
    brought to its tokens by `sync` at each iteration, so a decoder resumed after another
    request used the contexts continues correctly."""

    def __init__(self, *args, draft_tokens: int | None = None):
        super().__init__(*args)
        self.fixed = draft_tokens is not None
        self.k = draft_tokens or K_START
        self.k_max = max(self.k, K_MAX)
        self.combiner = self.group.combiner(self.beta, rows=self.k_max + 1)
        d_vocab = self.group.roles[self.group.drafter].ctx.n_vocab
        self._q_logits = np.empty((self.k_max + 1, d_vocab), dtype=np.float32)
        if self.constraints is not None:  # constrained copies: the raw rows feed the target
            self._scratch = np.empty((self.k_max + 1, self.group.n_vocab), dtype=np.float32)
        self.stats.speculative = True

    def _dist(self, state, row: np.ndarray, j: int):
        """The (constrained) distribution of one row, as sampling would see it."""
        if state is None:
            return self.sampler.dist(row)
        scratch = self._scratch[j]
        np.copyto(scratch, row)
        return state.dist(self.sampler, scratch)

    def _adapt(self, n_accepted: int, k: int) -> None:
        if self.fixed:
            return
        self.k = min(self.k + 2, self.k_max) if n_accepted == k else max(1, self.k - 1)

    def _restore(self, held) -> None:
        """Every context back to exactly the calls it had made (drafted blocks included), so a
        stream resumed after another request continues with the same bytes."""
        t = time.perf_counter()
        ctxs = [r.ctx for r in self.group.roles]
        before = sum(c.n_evaluated for c in ctxs)
        for ctx, (calls, n) in zip(ctxs, held):
            ctx.bring(calls, n, 0)
        self.group.owner = self
        self.stats.prompt_evaluated += sum(c.n_evaluated for c in ctxs) - before
        self.stats.prompt_seconds += time.perf_counter() - t

    def tokens(self, prompts: dict[int, list[int]]) -> Iterator[int]:
        group, stats, sampler = self.group, self.stats, self.sampler
        roles = group.roles
        d = group.drafter
        drafter = roles[d]
        verifiers = [i for i in range(len(roles)) if i != d]
        n = group.n_vocab
        clock = time.perf_counter
        secs = stats.model_seconds
        self.prefill(prompts)
        longest = max(len(p) for p in prompts.values())
        gen: list[int] = []
        held = None  # each context's calls and length when tokens were last yielded
        while True:
            if held is not None and group.owner is not self:
                self._restore(held)  # another request used the contexts meanwhile
            room = group.n_ctx - longest - len(gen)
            if room < 1:
                raise ContextOverflowError("context full")
            k = min(self.k, room)
            stats.draft_tokens = k
            group.owner = self
            # Draft k tokens from q, keeping the drafter's raw logits for the target. With
            # constraints, states[j] is their state after draft[:j] (p and q share it).
            states = [self.constraints]
            constrained = states[0] is not None
            t = clock()
            with group.alone(d):
                row = drafter.ctx.sync(prompts[d] + gen, 1)[0]
                qs, draft = [], []
                for j in range(k):
                    self._q_logits[j] = row
                    try:
                        q = self._dist(states[j] if constrained else None, self._q_logits[j, :n], j)
                    except GrammarDeadEnd:
                        if j == 0:
                            raise
                        break  # draft what can be drafted; the target decides the rest
                    qs.append(q)
                    draft.append(sampler.sample(q))
                    if constrained:
                        states.append(states[j].branch())
                        states[j + 1].accept(draft[-1])
                    if drafter.model.is_eog(draft[-1]):
                        break  # the reply would end here: drafting past it is wasted work
                    if j < k - 1:
                        row = drafter.ctx.eval([draft[-1]], 1)[0]
            k = len(draft)
            dt = clock() - t
            stats.draft_seconds += dt
            secs[drafter.label] += dt
            # Verify: every other context scores the whole block in one batch.
            t = clock()
            full = group.verify({i: prompts[i] + gen + draft for i in verifiers}, k + 1, secs)
            rows = list(full)
            rows[d] = self._q_logits[:k]
            t1 = clock()
            target = self.combiner.combine([r[:k] for r in rows])
            ps = [self._dist(states[j] if constrained else None, target[j], j) for j in range(k)]
            n_acc, rest = accept(ps, qs, draft, sampler.rng)
            observe = self.observe
            if observe is not None:  # accepted tokens, at their positions in the block
                for j in range(n_acc):
                    observe(draft[j], target[j], {i: r[j] for i, r in enumerate(rows)})
            bonus_eval = 0.0
            at = n_acc  # the position of the token drawn below
            # Every drafted token accepted, the last one ending the reply: nothing follows it.
            ended = rest is None and drafter.model.is_eog(draft[-1])
            if rest is None and not ended:  # all accepted: the bonus token comes from p_k
                t2 = clock()
                with group.alone(d):  # (a draft cut short by the grammar is decoded already)
                    self._q_logits[k] = drafter.ctx.sync(prompts[d] + gen + draft, 1)[0]
                bonus_eval = clock() - t2
                secs[drafter.label] += bonus_eval
                rows[d] = self._q_logits[k : k + 1]
                for i in verifiers:
                    rows[i] = full[i][k:]
                target = self.combiner.combine(rows)
                rest = self._dist(states[k] if constrained else None, target[0], k)
                at = 0
            tail = []
            if not ended:
                nxt = sampler.sample(rest)
                tail = [nxt]
                if observe is not None:
                    observe(nxt, target[at], {i: r[at] for i, r in enumerate(rows)})
            if constrained:  # the real state moves past accepted tokens only
                self.constraints = states[n_acc]
                if tail:
                    self.constraints.accept(nxt)
            stats.numpy_seconds += clock() - t1 - bonus_eval
            stats.verify_seconds += clock() - t
            stats.verifications += 1
            self._adapt(n_acc, k)
            held = [(list(r.ctx.calls), len(r.ctx.tokens)) for r in roles]
            for j, tok in enumerate(draft[:n_acc] + tail):
                # Counted as the tokens are taken: drafted positions judged up to this one
                # (not those after a rejection, nor past where the caller stopped).
                stats.drafted += int(j < k)
                stats.accepted += int(j < n_acc)
                gen.append(tok)
                yield tok
