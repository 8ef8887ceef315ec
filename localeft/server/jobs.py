"""What the worker thread runs for one request: Emulator calls, turned into events for the
request's coroutine. Events, in order, per prompt `i` of the request:

    ("echo", i, Echo)                      the prompt's own tokens, scored (completions' echo)
    ("piece", i, text, [TokenInfo])        generated text as it comes, the records of its tokens
    ("done", i, Generation | None)         None: nothing was generated (echo with max_tokens 0)

then ("end",), or ("error", exception) instead of whatever had not come yet. A cancelled ticket
(the client went away) closes its stream, which stops generating at the next token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from ..decoding import Stats
from ..engine import Emulator, Stream
from ..errors import LocaleftError
from ..scoring import token_texts
from .worker import Ticket


@dataclass
class Echo:
    """A prompt's own tokens: text, and with logprobs their log-probs and alternatives under
    EFT (the first token has no context: None)."""

    text: str  # the prompt as written (token ids: their text)
    ids: list[int]
    texts: list[str]
    logprobs: list[float | None]
    tops: list[list[tuple[int, str, float]] | None]
    stats: Stats = field(default_factory=Stats)  # what scoring it cost (no tokens generated)


def text_model(em: Emulator):
    """The model whose pieces make the text (every model shares the vocabulary)."""
    return next(m for label, m in em.models.items() if label.startswith("ft"))


def prompt_ids(em: Emulator, prompt) -> list[int]:
    """The ids a prompt is: token ids as given, text as the fine-tuned model tokenizes it."""
    if isinstance(prompt, str):
        labels = em.prompt_tokens(prompt)
        return next(ids for label, ids in labels.items() if label.startswith("ft"))
    return list(prompt)


def prompt_texts(em: Emulator, prompt, ids: list[int]) -> list[str]:
    """Each prompt token's text: control tokens a raw prompt parsed (<|im_start|>) as their
    text. For a text prompt, aligned with what was written where the tokenizer added to it
    (a BOS: nothing; SentencePiece's space before a fragment: dropped), so that they
    concatenate to the prompt."""
    model = text_model(em)
    texts = token_texts(model, ids, special=True)
    if not isinstance(prompt, str):
        return texts
    bos = model.special_text("bos")
    if ids and ids[0] == model.bos_id and not prompt.startswith(bos):
        texts[0] = ""
    return _aligned(texts, prompt) or texts


def _aligned(texts: list[str], prompt: str) -> list[str] | None:
    """The token texts with spaces the tokenizer added (not in `prompt`) dropped; None if they
    do not spell the prompt even so."""
    out, at = [], 0
    for t in texts:
        if not prompt.startswith(t, at):
            if t[:1] != " " or not prompt.startswith(t[1:], at):
                return None
            t = t[1:]
        out.append(t)
        at += len(t)
    return out if at == len(prompt) else None


def echo(em: Emulator, prompt, top: int | None, beta) -> Echo:
    """Score a prompt's own tokens: `Emulator.score(ids[:1], ids[1:])`."""
    t0 = time.perf_counter()
    ids = prompt_ids(em, prompt)
    texts = prompt_texts(em, prompt, ids)
    text = prompt if isinstance(prompt, str) else "".join(texts)
    stats = Stats(prompt_tokens=len(ids))
    if top is None or len(ids) < 2:
        none = [None] * len(ids)
        stats.seconds = stats.prompt_seconds = time.perf_counter() - t0
        return Echo(text, ids, texts, none, list(none), stats)
    s = em.score(ids[:1], ids[1:], beta=beta, top=top)
    stats.seconds = stats.prompt_seconds = time.perf_counter() - t0
    return Echo(
        text,
        ids,
        texts,
        [None] + [r.logprob for r in s.tokens],
        [None] + [r.top for r in s.tokens],
        stats,
    )


def run(
    em: Emulator,
    prompts: Sequence,
    streams: Sequence[Stream | None],
    *,
    echo_top: int | None = None,
    echo_all: bool = False,
    records: bool = False,
    beta=None,
):
    """The work of one request: for each prompt, its echo (if asked), then its stream (None:
    no generation)."""

    def work(ticket: Ticket) -> None:
        try:
            for i, (prompt, stream) in enumerate(zip(prompts, streams)):
                if ticket.cancelled:
                    break
                if echo_all:
                    ticket.emit(("echo", i, echo(em, prompt, echo_top, beta)))
                if stream is None:
                    ticket.emit(("done", i, None))
                    continue
                _generate(ticket, i, stream, records)
            ticket.emit(("end",))
        except LocaleftError as e:
            ticket.emit(("error", e))
        finally:
            for s in streams:
                if s is not None:
                    s.close()

    return work


def _generate(ticket: Ticket, i: int, stream: Stream, records: bool) -> None:
    sent = 0
    for piece in stream:
        if ticket.cancelled:
            stream.close()  # stops at this token; the Generation says "interrupted"
            break
        n = len(stream.tokens)
        ticket.emit(("piece", i, piece, stream.records[sent:n] if records else []))
        sent = n
    g = stream.generation
    rest = (g.logprobs or [])[sent:] if records and g is not None else []
    if rest:
        ticket.emit(("piece", i, "", rest))
    ticket.emit(("done", i, g))
