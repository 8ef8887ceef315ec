"""One bound request run to its end: the decoder's token ids turned into text pieces (stop
strings, end of generation, UTF-8 split safely), then a `Generation` with its `Stats`.

`Job` is a `request.Request` bound to a group by the Emulator: which contexts run, each one's
prompt tokens, the grammar compiled for the vocabulary. `run` picks the decoder
(decoding.PlainDecoder or speculative.SpeculativeDecoder) and is the token loop of every door.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from . import toolformat
from .backend import Model
from .constraints import Constraints, GrammarDeadEnd
from .decoding import PlainDecoder
from .ensemble import Ensemble
from .errors import ContextOverflowError
from .grammar import Grammar
from .layout import Span
from .request import Request
from .results import Generation, Stats, TokenInfo
from .sampling import Sampler
from .scoring import Recorder
from .speculative import SpeculativeDecoder
from .textstream import TextStream


class Stream:
    """Iterate for text pieces as they come; `.generation` holds the result once finished."""

    def __init__(self, pieces: Iterator[str] | None = None):
        self._pieces = pieces if pieces is not None else iter(())
        self.generation: Generation | None = None
        self.tool_family: str | None = None  # calls will be read from the text (toolformat)
        self.tokens: list[int] = []  # so far
        self.records: list[TokenInfo] = []  # so far, with logprobs=N (may run ahead of tokens)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating (the Generation so far is kept, finish_reason "interrupted")."""
        self._pieces.close()


@dataclass
class Job:
    """A Request bound to a group."""

    request: Request
    indices: list[int]  # the contexts this mode runs
    prompts: dict[int, list[int]]  # each one's prompt tokens
    replies: dict[int, list[Span]]  # each one's reply stretches (assistant messages; layout.py)
    beta: float
    speculative: bool
    grammar: Grammar | None
    text_model: Model  # its pieces make the text; its end-of-generation tokens end it
    tool_family: str | None = None  # tool calls are read from the text (toolformat.py)


def start(group: Ensemble, job: Job, check_open: Callable[[], None]) -> Stream:
    """A Stream over the job's pieces (nothing runs before the first is asked for)."""
    out = Stream()
    out.tool_family = job.tool_family
    out._pieces = _run(group, job, out, check_open)
    return out


def _decoder(group: Ensemble, job: Job, stats: Stats, observe: Recorder | None):
    """The strategy for this job, over the group."""
    req = job.request
    sampler = Sampler(req.sampling, group.n_vocab)
    constraints = None
    if job.grammar is not None or req.penalties.active:
        text_context = job.indices[0] if req.mode != "eft" else group.drafter
        constraints = Constraints(
            req.penalties, list(job.prompts[text_context]), job.grammar, group.n_ctx
        )
    args = (group, job.indices, job.beta, sampler, stats, observe, constraints, job.replies)
    if job.speculative:
        return SpeculativeDecoder(*args, draft_tokens=req.draft_tokens)
    return PlainDecoder(*args)


def _run(group: Ensemble, job: Job, out: Stream, check_open) -> Iterator[str]:
    req = job.request
    t0 = time.perf_counter()
    stats = Stats(
        prompt_tokens=max(len(p) for p in job.prompts.values()),
        weights=group.weights,
        placement=[dict(row) for row in group.placement],
    )
    model = job.text_model
    recorder = None
    if req.logprobs is not None:
        recorder = Recorder(group, job.indices, model, req.logprobs)
        out.records = recorder.records
    producer = _decoder(group, job, stats, recorder).tokens(job.prompts)
    text = TextStream(list(req.stops))
    tokens = out.tokens
    finish = "length"
    try:
        while True:
            with group.lock:  # one step at a time, whoever else holds this group
                check_open()
                tok = next(producer)
            if model.is_eog(tok):
                finish = "eog"
                break
            tokens.append(tok)
            piece = text.feed(model.piece(tok))
            if piece:
                yield piece
            if text.stopped:
                finish = "stop"
                break
            if len(tokens) >= req.max_tokens:
                break
    except ContextOverflowError:
        finish = "context"
    except GrammarDeadEnd:
        finish = "grammar"
    except (GeneratorExit, KeyboardInterrupt):
        finish = "interrupted"
        raise
    finally:
        producer.close()
        rest = text.finish() if finish != "interrupted" else ""
        stats.generated_tokens = len(tokens)
        stats.seconds = time.perf_counter() - t0
        if len(job.indices) > 1 and group.has_layouts:
            stats.layout, stats.layout_probe = group.layout, group.layout_probe
        records = None if recorder is None else recorder.records[: len(tokens)]
        calls, content = [], text.text
        if job.tool_family is not None:
            parsed = toolformat.parse(job.tool_family, text.text)
            calls, content = parsed.calls, parsed.content
            if calls and finish in ("eog", "stop", "grammar"):
                finish = "tool_calls"
        out.generation = Generation(
            text.text, list(tokens), finish, stats, req.sampling.seed, records, calls, content
        )
    if rest:
        yield rest
