"""Per-token log-probabilities of text under EFT and under each model alone: for a given
continuation (`Emulator.score`), for generated tokens (`logprobs=N`), and multiple-choice
evaluation over a file (`evaluate`).

Definitions, the same everywhere: EFT's log-prob is the log-softmax of the combined logits over
the shared vocabulary (ids marked unused excluded), at the Emulator's (or given) beta, before any
temperature or filter: the distribution generation samples from at temperature 1. A model
alone's log-prob is the log-softmax of its own logits over its whole vocabulary.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from . import layout
from .backend import Model
from .context import MAX_OUTPUTS
from .eft import log_softmax
from .ensemble import Ensemble
from .errors import InvalidParameterError, LocaleftError
from .results import Score, TokenInfo, Totals
from .prompts import check_messages


def token_texts(model: Model, ids: Sequence[int], special: bool = False) -> list[str]:
    """Each token's share of the decoded text: a character split over several byte tokens goes
    to the token that completes it (so the texts concatenate to the whole, never U+FFFD
    halves). `special`: control tokens as their text (a prompt's), not as nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out = [decoder.decode(model.piece(t, special)) for t in ids]
    if out:
        out[-1] += decoder.decode(b"", final=True)
    return out


def _best(row: np.ndarray, k: int) -> np.ndarray:
    """The ids of a row's k highest values, highest first (ties by id)."""
    k = min(k, row.size - 1)
    head = np.argpartition(row, -k)[-k:]
    return head[np.argsort(-row[head], kind="stable")]


# --- records for generated tokens -------------------------------------------------------------
class Recorder:
    """Builds a TokenInfo for each generated token from the rows the decoder observed (an
    `Observer`), with the top-n alternatives under EFT. Float32 work in preallocated buffers
    with float64 sums: ~1 ms per token at 152k ids for three models."""

    def __init__(self, group: Ensemble, indices: Sequence[int], text_model: Model, top_n: int):
        self.group, self.top_n, self.model = group, top_n, text_model
        self.labels = {i: group.roles[i].label for i in indices}
        self.base = group.base if group.base in self.labels else None
        self.records: list[TokenInfo] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buf = np.empty(max(group.roles[i].ctx.n_vocab for i in indices), dtype=np.float32)
        self._unused = set(group.vocab.unused.tolist())

    def _logsumexp(self, row: np.ndarray) -> float:
        top = float(row.max())
        buf = self._buf[: row.size]
        np.subtract(row, top, out=buf)
        np.exp(buf, out=buf)
        return top + math.log(float(buf.sum(dtype=np.float64)))

    def __call__(self, token: int, combined: np.ndarray, rows: dict[int, np.ndarray]) -> None:
        lse = self._logsumexp(combined)
        top = []
        if self.top_n:
            top = [
                (int(i), self._text(int(i)), float(combined[i]) - lse)
                for i in _best(combined, self.top_n)
            ]
        models = {
            self.labels[i]: float(row[token]) - self._logsumexp(row) for i, row in rows.items()
        }
        base_top = None
        if self.base is not None:
            base_row = rows[self.base][: self.group.n_vocab]
            base_top = int(np.argmax(base_row))
            if base_top in self._unused:  # padding on top (rare): look again without it
                masked = base_row.copy()
                masked[self.group.vocab.unused] = -np.inf
                base_top = int(np.argmax(masked))
        value = combined[token]
        self.records.append(
            TokenInfo(
                id=token,
                text=self._decoder.decode(self.model.piece(token)),
                logprob=float(value) - lse,
                rank=int(np.count_nonzero(combined > value)) + 1,
                models=models,
                eft_top=int(np.argmax(combined)),
                base_top=base_top,
                top=top,
            )
        )

    def _text(self, token: int) -> str:
        return _piece_text(self.model, token)


# --- scoring a given continuation -------------------------------------------------------------
class LayoutRows:
    """The logits rows of a token list in the scoring layout (layout.scoring_plan), position by
    position from `first` on: each call that holds a wanted position is decoded with all its
    rows asked for, so a row is the same whatever part of the list is scored. Calls before the
    first wanted one are reused from the KV cache where it holds them as computed."""

    def __init__(self, ctx, tokens: list[int], first: int):
        self.ctx = ctx
        calls = layout.scoring_plan(tokens)
        at = first // layout.SCORE_CHUNK  # the call holding `first`
        reuse = min(layout.matched(ctx.calls, len(ctx.tokens), calls, len(tokens)), at)
        for call in calls[reuse:at]:
            ctx.run_call(call, 0)
        self._calls = calls[at:]
        self._next = first  # the next position to hand out
        self._rows: list[np.ndarray] = []  # copies, for positions from _next on

    def take(self, m: int) -> np.ndarray:
        """The rows of the next m positions, shape (m, n_vocab)."""
        while len(self._rows) < m:
            start, toks = self._calls.pop(0)
            self.ctx.run_call((start, toks), len(toks))
            rows = self.ctx.logits(len(toks))
            skip = max(0, self._next + len(self._rows) - start)
            self._rows += [r.copy() for r in rows[skip:]]
        out = np.stack(self._rows[:m])
        del self._rows[:m]
        self._next += m
        return out


def next_token_rows(group: Ensemble, sequences: dict[int, list[int]]) -> list[np.ndarray]:
    """Each context's logits row after its token list, in the scoring layout (the row `score`
    reads there), by context order."""
    group.owner = None
    return [
        LayoutRows(group.roles[i].ctx, toks, len(toks) - 1).take(1)[0]
        for i, toks in sorted(sequences.items())
    ]


def score_tokens(
    group: Ensemble,
    prompts: dict[int, list[int]],
    continuation: list[int],
    beta: float,
    betas: Sequence[float],
    text_model: Model,
    top: int = 0,
) -> Score:
    """Log-probs of `continuation` after each context's prompt, its rows read in the scoring
    layout over prompt + continuation (layout.py), MAX_OUTPUTS tokens at a time in every
    context; with `top`, each token's most likely alternatives under EFT too."""
    indices = sorted(prompts)
    labels = {i: group.roles[i].label for i in indices}
    n = group.n_vocab
    ids = np.asarray(continuation)
    if not continuation:
        raise InvalidParameterError("the continuation is empty (no tokens to score)")
    combiners = {b: group.combiner(b, rows=MAX_OUTPUTS) for b in dict.fromkeys([beta, *betas])}
    per_model = {i: [] for i in indices}
    eft = {b: [] for b in combiners}
    ranks, eft_tops, base_tops, alternatives = [], [], [], []
    group.owner = None
    # The row predicting continuation[0] ends the prompt; the last token is never decoded.
    feeds = {
        i: LayoutRows(group.roles[i].ctx, prompts[i] + continuation[:-1], len(prompts[i]) - 1)
        for i in indices
    }
    done = 0
    while done < len(ids):
        m = min(MAX_OUTPUTS, len(ids) - done)
        rows = {i: feeds[i].take(m) for i in indices}
        target = ids[done : done + m]
        eft_tops += _collect(
            rows, target, combiners, beta, per_model, eft, ranks, top, alternatives
        )
        base = rows[group.base][:, :n].copy()
        base[:, group.vocab.unused] = -np.inf
        base_tops += np.argmax(base, axis=1).tolist()
        done += m
    texts = token_texts(text_model, continuation)
    eft_lp = np.concatenate(eft[beta])
    model_lp = {i: np.concatenate(v) for i, v in per_model.items()}
    records = [
        TokenInfo(
            id=int(t),
            text=texts[j],
            logprob=float(eft_lp[j]),
            rank=int(ranks[j]),
            models={labels[i]: float(model_lp[i][j]) for i in indices},
            eft_top=int(eft_tops[j]),
            base_top=int(base_tops[j]),
            top=[(i, _piece_text(text_model, i), lp) for i, lp in alternatives[j]] if top else [],
        )
        for j, t in enumerate(continuation)
    ]
    totals = {"eft": Totals(float(eft_lp.sum()), len(ids))}
    totals.update({labels[i]: Totals(float(v.sum()), len(ids)) for i, v in model_lp.items()})
    by_beta = {b: Totals(float(np.concatenate(v).sum()), len(ids)) for b, v in eft.items()}
    return Score(records, totals, beta, {b: by_beta[b] for b in betas})


def _piece_text(model: Model, token: int) -> str:
    return model.piece(token).decode("utf-8", "replace")


def _collect(rows, target, combiners, beta, per_model, eft, ranks, top, alternatives) -> list[int]:
    """Log-probs of the target tokens in these rows: each model alone, EFT at each beta;
    returns EFT's top token per row (at the main beta), and appends each row's `top` most
    likely (id, EFT log-prob) to `alternatives`."""
    at = np.arange(target.size)
    for i, r in rows.items():
        per_model[i].append(log_softmax(r)[at, target])
    order = [rows[i] for i in sorted(rows)]
    tops: list[int] = []
    for b, comb in combiners.items():
        lp = log_softmax(comb.combine(order))
        chosen = lp[at, target]
        eft[b].append(chosen)
        if b == beta:
            ranks.extend((np.count_nonzero(lp > chosen[:, None], axis=1) + 1).tolist())
            tops = np.argmax(lp, axis=1).tolist()
            if top:
                for row in lp:
                    alternatives.append([(int(i), float(row[i])) for i in _best(row, top)])
    return tops


# --- multiple-choice evaluation ---------------------------------------------------------------
@dataclass
class Item:
    """One multiple-choice question: a prompt (raw text) or messages, choices, the answer."""

    line: int
    prompt: str | list[dict]
    choices: list[str]
    answer: int


MAX_LINE = 16 << 20  # bytes in one JSONL line
MAX_FILE = 1 << 30  # bytes in a JSONL file (pipes and devices too: /dev/zero never ends)


def read_jsonl(path: str | Path, parse: Callable[[int, object], object]) -> tuple[list, list[str]]:
    """`parse(line number, JSON value)` over the lines of a JSONL file: the parsed items, and
    one error line per bad line ("line N: ..."). Bad lines are reported and skipped, never
    the reason to lose the rest; `parse` raises InvalidParameterError for a bad one. A line over
    MAX_LINE bytes or a file over MAX_FILE is an error (it is not a JSONL file of items)."""
    items, errors = [], []
    total = 0
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                total += len(raw)
                if len(raw) > MAX_LINE:
                    raise LocaleftError(f"{path}: line {n} is over {MAX_LINE >> 20} MiB")
                if total > MAX_FILE:
                    raise LocaleftError(f"{path} is over {MAX_FILE >> 30} GiB")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise LocaleftError(f"{path}: line {n} is not valid UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    items.append(parse(n, json.loads(line)))
                except json.JSONDecodeError as e:
                    errors.append(f"line {n}: not JSON ({e.msg} at column {e.colno})")
                except RecursionError:
                    errors.append(f"line {n}: not JSON that can be read (nested too deeply)")
                except InvalidParameterError as e:
                    errors.append(f"line {n}: {e}")
    except OSError as e:
        raise LocaleftError(f"cannot read {path}: {e.strerror or e}") from None
    return items, errors


def read_items(path: str | Path) -> tuple[list[Item], list[str]]:
    """The multiple-choice items of a JSONL file, and its bad lines."""
    return read_jsonl(path, _item)


def line_prompt(d: dict) -> str | list[dict]:
    """A JSONL line's prompt: "messages" (a list of chat messages) or "prompt" (text), each
    of its own type (a string of messages is not a chat)."""
    if "messages" in d:
        messages = d["messages"]
        if not isinstance(messages, list) or not messages:
            raise InvalidParameterError('"messages" must be a non-empty list of {role, content}')
        check_messages(messages)
        return messages
    prompt = d.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidParameterError('needs "prompt" (non-empty text) or "messages" (a list)')
    return prompt


def _item(n: int, d) -> Item:
    if not isinstance(d, dict):
        raise InvalidParameterError("expected an object with prompt or messages, choices, answer")
    prompt = line_prompt(d)
    choices = d.get("choices")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise InvalidParameterError('"choices" must be a list of 2 or more non-empty strings')
    answer = d.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise InvalidParameterError(
            f'"answer" must be an index into choices (0-{len(choices) - 1})'
        )
    return Item(n, prompt, choices, answer)


@dataclass
class EvalRow:
    """Accuracy of one distribution: by summed and by length-normalised log-likelihood."""

    name: str
    beta: float | None
    correct_sum: int = 0
    correct_norm: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct_sum / self.total if self.total else 0.0

    @property
    def accuracy_norm(self) -> float:
        return self.correct_norm / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "beta": self.beta,
            "accuracy": self.accuracy,
            "accuracy_norm": self.accuracy_norm,
            "items": self.total,
        }


def evaluate(
    score: Callable[..., Score],
    items: Sequence[Item],
    betas: Sequence[float],
    labels: dict[str, str],
) -> Iterator[tuple[int, list[EvalRow]]]:
    """Score every choice of every item; yields (items done, rows so far) after each item.

    `score(prompt, continuation, betas=...)` is `Emulator.score`; `labels` maps the model
    rows to report (e.g. {"large base alone": "base", "small fine-tuned alone": "ft"}).
    Normalised accuracy divides each choice's log-likelihood by its length in characters
    (lm-evaluation-harness's acc_norm), fair to choices that tokenize differently."""
    rows = [EvalRow(f"EFT beta={b:g}", b) for b in betas]
    rows += [EvalRow(name, None) for name in labels]
    for done, item in enumerate(items, 1):
        sums: dict[int, list[float]] = {i: [] for i in range(len(rows))}
        for choice in item.choices:
            s = score(item.prompt, choice, betas=betas)
            values = [s.by_beta[b].logprob for b in betas]
            values += [s.totals[label].logprob for label in labels.values()]
            for i, v in enumerate(values):
                sums[i].append(v)
        lengths = np.array([len(c) for c in item.choices], dtype=np.float64)
        for i, row in enumerate(rows):
            v = np.array(sums[i])
            row.total += 1
            row.correct_sum += int(np.argmax(v)) == item.answer
            row.correct_norm += int(np.argmax(v / lengths)) == item.answer
        yield done, rows
