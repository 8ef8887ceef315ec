"""`Emulator`: several GGUF models driven as one exact EFT token stream.

prompt ─▶ render per role ─▶ contexts (one per model file) ─▶ logits views ─▶ combine ─▶ sample
                                    ▲                                                     │
                                    └──────────── feed the token to every context ◀──────┘
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from .backend import Context, Model, default_threads
from .eft import Combiner, Term, check_weight, log_softmax
from .errors import ContextOverflowError, InvalidParameterError
from .prompts import BasePrompt, Message, check_messages, render_template, render_transcript
from .prompts import tokenize_prompt
from .sampling import Sampler, SamplingParams
from .speculative import MAX_DRAFT, SpeculativeDecoder, use_speculative
from .textstream import TextStream
from .vocab import VocabCheck, check_vocabularies

Mode = Literal["eft", "base", "ft"]
MODES = ("eft", "base", "ft")


@dataclass(frozen=True)
class Expert:
    """A fine-tuning delta: `weight · (log p_ft − log p_ref)`."""

    ft: str | os.PathLike
    ref: str | os.PathLike
    weight: float = 1.0


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


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str  # "eog" | "stop" | "length" | "context" | "interrupted"
    stats: Stats


class Stream:
    """Iterate for text pieces as they come; `.generation` holds the result once finished."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.generation: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()


@dataclass
class _Job:
    """One validated generation request."""

    indices: list[int]
    prompts: dict[int, list[int]]
    params: SamplingParams
    max_tokens: int
    stops: list[str]
    beta: float
    mode: str
    speculative: bool
    draft_tokens: int | None


class _Role:
    """One context as seen by the engine: which model, which prompt rendering."""

    def __init__(self, label: str, ctx: Context, kind: str):
        self.label, self.ctx, self.kind = label, ctx, kind


def _check_beta(value) -> float:
    v = check_weight("beta", value)
    if v < 0:
        raise InvalidParameterError(f"beta must be >= 0, got {value!r}")
    return v


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Emulator:
    """Emulated fine-tuning over GGUF models.

    Up-scaling: `Emulator(large_base=..., small_ft=..., small_base=..., beta=1.0)`.
    General: `Emulator(base=..., experts=[Expert(ft, ref, weight), ...])`; down-scaling is
    `base=small_base, experts=[Expert(ft=large_ft, ref=large_base)]`. `drafter` picks the expert
    whose fine-tuned model drafts for speculative decoding, runs alone in mode "ft", supplies
    the chat template and decides end of generation. `overlap` (default: on for CPU-only runs
    with 2+ threads) decodes the base model concurrently with the others, the cores split in
    proportion to model size (measured faster than one model after another on a CPU).
    `repack=False` mmaps the weights (shared through the page cache, faster to load) instead
    of reading them into llama.cpp's faster CPU layout: ~11% slower CPU decoding.
    """

    def __init__(
        self,
        large_base: str | os.PathLike | None = None,
        small_ft: str | os.PathLike | None = None,
        small_base: str | os.PathLike | None = None,
        *,
        base: str | os.PathLike | None = None,
        experts: Sequence[Expert] | None = None,
        beta: float = 1.0,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        base_prompt: BasePrompt = "template",
        drafter: int = 0,
        overlap: bool | None = None,
        repack: bool = True,
    ):
        trio = (large_base, small_ft, small_base)
        if any(x is not None for x in trio):
            if base is not None or experts:
                raise InvalidParameterError(
                    "give either large_base/small_ft/small_base or base/experts"
                )
            if any(x is None for x in trio):
                raise InvalidParameterError("up-scaling needs large_base, small_ft and small_base")
            base, experts = large_base, [Expert(ft=small_ft, ref=small_base)]
        if base is None or not experts:
            raise InvalidParameterError("an Emulator needs a base model and at least one expert")
        self.n_ctx = _check_positive_int("n_ctx", n_ctx, 8)
        if n_threads is not None:
            _check_positive_int("n_threads", n_threads)
        if base_prompt not in ("template", "transcript"):
            raise InvalidParameterError(
                f"base_prompt must be 'template' or 'transcript', got {base_prompt!r}"
            )
        self.base_prompt = base_prompt
        if not (isinstance(drafter, int) and 0 <= drafter < len(experts)):
            raise InvalidParameterError(f"drafter must be an expert index, got {drafter!r}")
        self.experts = [
            Expert(e.ft, e.ref, check_weight("expert weight", e.weight)) for e in experts
        ]
        self.beta = beta  # validated by the setter

        self._models: dict[Path, Model] = {}
        self._roles: dict[tuple[Path, str], _Role] = {}
        many = len(self.experts) > 1
        specs = [(base, "base", "base")] + [
            spec
            for i, e in enumerate(self.experts)
            for spec in (
                (e.ft, "ft", f"ft{i}" if many else "ft"),
                (e.ref, "base", f"ref{i}" if many else "ref"),
            )
        ]
        keys = []
        for path, kind, label in specs:
            p = Path(path).expanduser().resolve()
            if p not in self._models:
                self._models[p] = Model(p, n_gpu_layers=n_gpu_layers, repack=repack)
            keys.append((p, kind, label))
        self.gpu_offload = any(m.offloaded for m in self._models.values())
        unique = list(dict.fromkeys((p, kind) for p, kind, _ in keys))
        cores = n_threads or default_threads()
        step = _step_threads(
            [self._models[p].size_bytes for p, _ in unique],
            cores,
            enabled=overlap is not False and not self.gpu_offload,
        )
        self.overlap = step is not None
        for (p, kind), n_step in zip(unique, step or [None] * len(unique)):
            label = next(lab for q, k, lab in keys if (q, k) == (p, kind))
            ctx = self._models[p].new_context(self.n_ctx, cores, n_threads_step=n_step)
            self._roles[(p, kind)] = _Role(label, ctx, kind)
        index = {key: i for i, key in enumerate(self._roles)}
        at = [index[(p, kind)] for p, kind, _ in keys]
        self._base = at[0]
        self._terms_raw = [
            (at[1 + 2 * i], at[2 + 2 * i], e.weight) for i, e in enumerate(self.experts)
        ]
        self.vocab: VocabCheck = check_vocabularies(list(self._models.values()))
        self._drafter = self._terms_raw[drafter][0]  # context of the fine-tuned model that drafts
        self._order = list(self._roles.values())
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="localeft") if self.overlap else None

    # --- settings --------------------------------------------------------------------------
    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_beta(value)

    @property
    def models(self) -> dict[str, Model]:
        return {r.label: r.ctx.model for r in self._order}

    def _combiner(self, beta: float, rows: int = 1) -> Combiner:
        terms = [Term(ft, ref, beta * w) for ft, ref, w in self._terms_raw]
        return Combiner(self.vocab.n_shared, self._base, terms, max_rows=rows)

    def _roles_for(self, mode: str) -> list[int]:
        if mode == "eft":
            return list(range(len(self._order)))
        return [self._base] if mode == "base" else [self._drafter]

    @property
    def _ft_model(self) -> Model:
        return self._order[self._drafter].ctx.model

    # --- prompts ---------------------------------------------------------------------------
    def _prompts(self, prompt: str | Sequence[Message], indices: list[int]) -> dict[int, list[int]]:
        """Token lists per context index, each rendered for its role."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidParameterError("the prompt is empty")
            texts = {"ft": prompt, "base": prompt}
        else:
            messages = check_messages(prompt)
            templated = render_template(self._ft_model, messages)
            texts = {
                "ft": templated,
                "base": templated
                if self.base_prompt == "template"
                else render_transcript(messages),
            }
        out = {}
        for i in indices:
            r = self._order[i]
            toks = tokenize_prompt(r.ctx.model, texts[r.kind])
            if len(toks) >= self.n_ctx:
                raise ContextOverflowError(
                    f"the prompt is {len(toks)} tokens but the context holds {self.n_ctx}; "
                    "shorten it or raise n_ctx"
                )
            out[i] = toks
        return out

    # --- public API ------------------------------------------------------------------------
    def logprobs(
        self,
        prompt: str | Sequence[Message],
        *,
        after: Sequence[int] = (),
        beta: float | None = None,
    ) -> np.ndarray:
        """EFT log-probabilities (float64) of the next token over the shared vocabulary, after the
        prompt and then the token ids `after` (to score a continuation)."""
        prompts = self._prompts(prompt, self._roles_for("eft"))
        logits = [r.ctx.sync(prompts[i] + list(after), 1)[0] for i, r in enumerate(self._order)]
        b = self.beta if beta is None else _check_beta(beta)
        return log_softmax(self._combiner(b).combine(logits))

    def stream(self, prompt: str | Sequence[Message], **settings) -> Stream:
        """Stream text pieces; a str prompt is raw completion, a list of messages is chat.

        Settings are validated (and the prompt rendered) here, before the first piece.
        """
        job = self._prepare(prompt, **settings)
        s = Stream(iter(()))
        s._pieces = self._run(job, s)
        return s

    def generate(self, prompt: str, **settings) -> Generation:
        if not isinstance(prompt, str):
            raise InvalidParameterError("generate() takes a prompt string; use chat() for messages")
        return self._collect(prompt, settings)

    def chat(self, messages: Sequence[Message], **settings) -> Generation:
        if isinstance(messages, str):
            raise InvalidParameterError("chat() takes a list of messages; use generate() for text")
        return self._collect(messages, settings)

    def _collect(self, prompt, settings) -> Generation:
        s = self.stream(prompt, **settings)
        for _ in s:
            pass
        assert s.generation is not None
        return s.generation

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for r in self._order:
            r.ctx.close()
        for m in self._models.values():
            m.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the loop --------------------------------------------------------------------------
    def _prepare(
        self,
        prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        beta: float | None = None,
        mode: Mode = "eft",
        speculative: bool | None = None,
        draft_tokens: int | None = None,
    ) -> _Job:
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        b = self.beta if beta is None else _check_beta(beta)
        if draft_tokens is not None:
            _check_positive_int("draft_tokens", draft_tokens)
            if draft_tokens > MAX_DRAFT:
                raise InvalidParameterError(
                    f"draft_tokens must be <= {MAX_DRAFT}, got {draft_tokens}"
                )
        indices = self._roles_for(mode)
        return _Job(
            indices=indices,
            prompts=self._prompts(prompt, indices),
            params=SamplingParams(temperature, top_k, top_p, min_p, seed),
            max_tokens=_check_positive_int("max_tokens", max_tokens),
            stops=[stop] if isinstance(stop, str) and stop else [x for x in (stop or []) if x],
            beta=b,
            mode=mode,
            speculative=mode == "eft" and use_speculative(speculative, self, draft_tokens),
            draft_tokens=draft_tokens,
        )

    def _run(self, job: _Job, out: Stream) -> Iterator[str]:
        indices, prompts, stops, mode = job.indices, job.prompts, job.stops, job.mode
        t0 = time.perf_counter()
        stats = Stats(
            prompt_tokens=max(len(p) for p in prompts.values()), speculative=job.speculative
        )
        stats.model_seconds = {self._order[i].label: 0.0 for i in indices}
        sampler = Sampler(job.params, self.vocab.n_shared)
        eog_model = self._order[indices[0]].ctx.model if mode == "base" else self._ft_model

        if job.speculative:
            producer = SpeculativeDecoder(self, job.beta, sampler, stats, job.draft_tokens).tokens(
                prompts
            )
        else:
            producer = self._plain_tokens(prompts, indices, job.beta, sampler, stats)
        # A context that shares the CPU in overlapped EFT steps gets every core when it runs
        # alone: one model modes, and the drafter in speculative decoding.
        alone = indices[0] if len(indices) == 1 else self._drafter if job.speculative else None
        cores = contextlib.ExitStack()
        if self.overlap and alone is not None:
            cores.enter_context(self._order[alone].ctx.all_threads())

        out_text = TextStream(stops)
        tokens: list[int] = []
        finish = "length"
        try:
            for tok in producer:
                if eog_model.is_eog(tok):
                    finish = "eog"
                    break
                tokens.append(tok)
                piece = out_text.feed(eog_model.piece(tok))
                if piece:
                    yield piece
                if out_text.stopped:
                    finish = "stop"
                    break
                if len(tokens) >= job.max_tokens:
                    break
        except ContextOverflowError:
            finish = "context"
        except (GeneratorExit, KeyboardInterrupt):
            finish = "interrupted"
            raise
        finally:
            producer.close()
            cores.close()
            rest = out_text.finish() if finish != "interrupted" else ""
            stats.generated_tokens = len(tokens)
            stats.seconds = time.perf_counter() - t0
            out.generation = Generation(out_text.text, tokens, finish, stats)
        if rest:
            yield rest

    def _prefill(self, prompts: dict[int, list[int]], indices: list[int], stats: Stats) -> None:
        """Bring each context to its prompt, decoding only what its KV cache lacks."""
        t = time.perf_counter()
        for i in indices:
            ctx = self._order[i].ctx
            before = ctx.n_evaluated
            ctx.sync(prompts[i], 1)
            stats.prompt_evaluated += ctx.n_evaluated - before
        stats.prompt_seconds = time.perf_counter() - t

    def _plain_tokens(self, prompts, indices, beta, sampler, stats) -> Iterator[int]:
        """One token per step: decode in every context, combine, sample."""
        roles = [self._order[i] for i in indices]
        combiner = self._combiner(beta) if len(indices) > 1 else None
        n = self.vocab.n_shared
        clock = time.perf_counter
        self._prefill(prompts, indices, stats)
        secs = stats.model_seconds
        while True:
            t = clock()
            rows = [r.ctx.logits(1)[0] for r in roles]  # on a GPU this waits for the device
            # With several roles, indices are every context in order: rows line up with the
            # combiner's indices.
            tok = sampler(rows[0][:n] if combiner is None else combiner.combine(rows))
            stats.numpy_seconds += clock() - t
            yield tok
            # Launch every decode first (GPU builds return early), read logits afterwards.
            pending = None
            if self._pool is not None and len(roles) > 1:  # CPU: base alongside the others
                pending = self._pool.submit(_timed, roles[0].ctx.decode, [tok])
            try:
                for r in roles[1:] if pending else roles:
                    secs[r.label] += _timed(r.ctx.decode, [tok])
            finally:
                if pending is not None:
                    secs[roles[0].label] += _wait(pending)


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _step_threads(sizes: list[int], cores: int, enabled: bool) -> list[int] | None:
    """Threads for single-token steps when context 0 (the base) decodes concurrently with the
    rest, which run one after another: cores split in proportion to model size (decode time on
    a CPU follows the bytes read). None where overlap is off or there is nothing to split."""
    if not enabled or cores < 2 or len(sizes) < 2:
        return None
    share = round(cores * sizes[0] / sum(sizes))
    base = min(max(share, 1), cores - 1)
    return [base] + [cores - base] * (len(sizes) - 1)


def _wait(future: Future) -> float:
    """The future's result, waiting out a Ctrl-C (re-raised afterwards): a context must never be
    decoding in the background when the next generation starts."""
    interrupted = False
    while True:
        try:
            result = future.result()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    return result
