"""Decoding strategies over an `Ensemble`, with one interface: per-context prompts in, token
ids out, `Stats` filled. `PlainDecoder` is here; `SpeculativeDecoder` (speculative.py) sits
beside it. The Emulator picks one per request; neither knows about text or the Emulator.

A decoder may be suspended between tokens (a stream the caller stops reading) while another
request uses the same contexts: each one claims the group (`Ensemble.owner`) and, finding it
claimed by someone else when resumed, brings the contexts back to its own tokens first.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .constraints import Constraints
from .ensemble import Ensemble
from .layout import Span, reply_span
from .sampling import Sampler


@dataclass
class Stats:
    """What one generation cost, and where the time went."""

    prompt_tokens: int = 0  # tokens in the (longest) rendered prompt
    prompt_evaluated: int = 0  # prompt tokens actually decoded, summed over contexts (KV reuse)
    generated_tokens: int = 0
    seconds: float = 0.0
    prompt_seconds: float = 0.0
    model_seconds: dict[str, float] = field(default_factory=dict)  # decode + logits, per context
    numpy_seconds: float = 0.0  # combine + sample
    speculative: bool = False
    draft_tokens: int = 0  # k when fixed, the last k when adaptive
    drafted: int = 0
    accepted: int = 0
    verifications: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    layout: str = ""  # CPU layout of EFT steps: overlap | sequential ("" where moot)
    layout_probe: dict[str, float] | None = None  # median ms per step of each, once measured
    # Where the base model's layers are when RPC servers hold some (Emulator.placement).
    placement: list[dict] = field(default_factory=list)

    @property
    def decode_seconds(self) -> float:
        return self.seconds - self.prompt_seconds

    @property
    def ms_per_token(self) -> float:
        n = self.generated_tokens
        return 1000 * self.decode_seconds / n if n else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.verifications if self.verifications else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("ms_per_token", "tokens_per_second", "acceptance_rate", "mean_accepted"):
            d[k] = getattr(self, k)
        return d


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
