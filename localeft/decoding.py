"""Decoding strategies over an `Ensemble`, with one interface: per-context prompts in, token
ids out, `Stats` filled. `PlainDecoder` is here; `SpeculativeDecoder` (speculative.py) sits
beside it. The Emulator picks one per request; neither knows about text or the Emulator.

A decoder may be suspended between tokens (a stream the caller stops reading) while another
request uses the same contexts: each one claims the group (`Ensemble.owner`) and, finding it
claimed by someone else when resumed, brings the contexts back to its own tokens first.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from .constraints import Constraints
from .ensemble import Ensemble
from .layout import Span, reply_span
from .results import Stats
from .sampling import Sampler


# observe(token, combined row, {context index: its row}): called for every token before it is
# yielded, with the rows of the exact target distribution at its position (views: use at once)
Observer = Callable[[int, np.ndarray, dict[int, np.ndarray]], None]


class Decoder:
    """Base of the strategies: the group, the contexts a request runs, its sampler and stats.

    `tokens(prompts)` yields token ids forever (the caller decides when to stop); it raises
    ContextOverflowError when a context is full (GrammarDeadEnd when a grammar allows no
    token). `observe`, if given, sees each token's rows (before any constraint);
    `constraints` (penalties, grammar) shape the row each token is drawn from."""

    def __init__(
        self,
        group: Ensemble,
        indices: Sequence[int],
        beta: float,
        sampler: Sampler,
        stats: Stats,
        observe: Observer | None = None,
        constraints: Constraints | None = None,
        replies: dict[int, Sequence[Span]] | None = None,
    ):
        self.group, self.indices = group, list(indices)
        self.replies = replies or {}  # each context's reply stretches (layout.py)
        self.beta, self.sampler, self.stats = beta, sampler, stats
        self.observe = observe
        self.constraints = constraints
        stats.model_seconds = {group.roles[i].label: 0.0 for i in self.indices}

    def prefill(self, prompts: dict[int, list[int]], generated: Sequence[int] = ()) -> None:
        """Bring every context of the request to its prompt and the tokens generated so far
        (a reply stretch), in the canonical layout; claim the group. Interrupted, the stats
        still count what was evaluated (and the KV caches keep it)."""
        t = time.perf_counter()
        ctxs = [self.group.roles[i].ctx for i in prompts]
        before = sum(c.n_evaluated for c in ctxs)
        self.group.owner = self
        spans = {
            i: [*self.replies.get(i, ()), reply_span(len(p), len(generated))]
            for i, p in prompts.items()
        }
        try:
            self.group.prefill({i: p + list(generated) for i, p in prompts.items()}, spans)
        finally:
            self.stats.prompt_evaluated += sum(c.n_evaluated for c in ctxs) - before
            self.stats.prompt_seconds += time.perf_counter() - t

    def tokens(self, prompts: dict[int, list[int]]) -> Iterator[int]:
        raise NotImplementedError


class PlainDecoder(Decoder):
    """One token per step: decode in every context, combine, sample."""

    def tokens(self, prompts: dict[int, list[int]]) -> Iterator[int]:
        group, indices, stats, sampler = self.group, self.indices, self.stats, self.sampler
        combiner = group.combiner(self.beta) if len(indices) > 1 else group.single()
        clock = time.perf_counter
        secs = stats.model_seconds
        self.prefill({i: prompts[i] for i in indices})
        generated: list[int] = []
        solo = indices[0] if len(indices) == 1 else None  # a model alone gets every core
        observe, constraints = self.observe, self.constraints
        while True:
            t = clock()
            rows = [r[0] for r in group.rows(indices)]  # on a GPU this waits for the device
            # With several contexts, indices are every context in order: rows line up with
            # the combiner's indices.
            combined = combiner.combine(rows)
            if constraints is None:
                tok = sampler(combined)
                if observe is not None:
                    observe(tok, combined, dict(zip(indices, rows)))
            else:
                if observe is not None:
                    plain = combined.copy()  # the records show EFT before constraints
                tok = constraints.choose(sampler, combined)
                constraints.accept(tok)
                if observe is not None:
                    observe(tok, plain, dict(zip(indices, rows)))
            stats.numpy_seconds += clock() - t
            yield tok
            generated.append(tok)
            if group.owner is self:
                with group.alone(solo):
                    group.step(tok, indices, secs)
            else:  # another request used the contexts meanwhile: back to our own tokens
                self.prefill({i: prompts[i] for i in indices}, generated)
