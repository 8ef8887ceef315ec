"""`Emulator`: the public API. Several GGUF models driven as one exact EFT token stream.

prompt ─▶ render per role ─▶ contexts (one per model file) ─▶ logits views ─▶ combine ─▶ sample
                                    ▲                                                     │
                                    └──────────── feed the token to every context ◀──────┘

The Emulator validates settings, renders prompts per role, picks a decoder per request
(decoding.PlainDecoder or speculative.SpeculativeDecoder, both over the ensemble.Ensemble of
contexts) and turns token ids into text, `Generation`s and `Stats`.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np

from . import rpc as rpc_module
from . import validate
from .backend import Model, common_prefix
from .decoding import PlainDecoder, Stats
from .eft import log_softmax
from .constraints import Constraints, GrammarDeadEnd, Penalties
from .ensemble import Ensemble, Expert
from .errors import ClosedError, ContextOverflowError, InvalidParameterError
from .grammar import Grammar, schema_grammar
from .prompts import BasePrompt, Message, Rendered, check_messages, render_pieces
from .prompts import render_transcript, tokenize_prompt
from .sampling import Sampler, SamplingParams
from .scoring import Recorder, Score, TokenInfo, score_tokens
from .speculative import MAX_DRAFT, SpeculativeDecoder, use_speculative
from .textstream import TextStream
from .vocab import VocabCheck

Mode = Literal["eft", "base", "ft"]
MODES = ("eft", "base", "ft")


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str  # "eog" | "stop" | "length" | "context" | "grammar" | "interrupted"
    stats: Stats
    seed: int | None = None  # the seed sampling used (picked when none was given); None: greedy
    logprobs: list[TokenInfo] | None = None  # per token, with logprobs=N


class Stream:
    """Iterate for text pieces as they come; `.generation` holds the result once finished."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.generation: Generation | None = None
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
    logprobs: int | None
    penalties: Penalties
    grammar: Grammar | None


MAX_TOP_LOGPROBS = 20


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) for x in stop):
        raise InvalidParameterError(f"stop must be a string or a list of strings, got {stop!r}")
    return [x for x in stop if x]


def _expert(e, i: int) -> Expert:
    if not isinstance(e, Expert):
        raise InvalidParameterError(
            f"experts[{i}] must be an Expert(ft=..., ref=..., weight=...), got {e!r}"
        )
    return Expert(
        validate.path(f"experts[{i}].ft", e.ft),
        validate.path(f"experts[{i}].ref", e.ref),
        validate.weight(f"experts[{i}].weight", e.weight),
    )


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

    `rpc=["host:port", ...]` places the base model's layers on llama.cpp RPC servers (`localeft
    rpc-server` on other machines; the other models stay here): by default all of them, in
    proportion to each server's free memory, keeping here what does not fit there;
    `rpc_split=[w1, ..., wn(, w_here)]` sets the shares (one per server, then optionally one for
    this machine). `rpc_timeout` bounds one remote call: a server that stops answering ends the
    process with one line after that many seconds, as llama.cpp ends it when a server dies
    (`placement` says where the layers went; docs/DISTRIBUTED.md).

    Thread-safe: requests from several threads run one at a time (llama.cpp contexts are not
    thread-safe); a stream takes its turn token by token, and one left suspended while other
    requests run continues correctly afterwards (its contexts are brought back first).
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
        rpc: Sequence[str] | None = None,
        rpc_split: Sequence[float] | None = None,
        rpc_timeout: float = rpc_module.DEFAULT_TIMEOUT,
    ):
        trio = (large_base, small_ft, small_base)
        if any(x is not None for x in trio):
            if base is not None or experts:
                raise InvalidParameterError(
                    "give either large_base/small_ft/small_base or base/experts"
                )
            if any(x is None for x in trio):
                raise InvalidParameterError("up-scaling needs large_base, small_ft and small_base")
            for name, value in zip(("large_base", "small_ft", "small_base"), trio):
                validate.path(name, value)
            base, experts = large_base, [Expert(ft=small_ft, ref=small_base)]
        if base is None or not experts:
            raise InvalidParameterError("an Emulator needs a base model and at least one expert")
        validate.path("base", base)
        if isinstance(experts, (str, bytes, Expert)) or not isinstance(experts, Sequence):
            raise InvalidParameterError("experts must be a list of Expert(ft, ref, weight)")
        self.experts = [_expert(e, i) for i, e in enumerate(experts)]
        self.n_ctx = validate.integer("n_ctx", n_ctx, 8)
        if n_threads is not None:
            validate.integer("n_threads", n_threads, 1)
        validate.integer("n_gpu_layers", n_gpu_layers, -1)
        self.base_prompt = validate.choice("base_prompt", base_prompt, ("template", "transcript"))
        validate.integer("drafter", drafter, 0, len(self.experts) - 1)
        validate.flag("overlap", overlap)
        validate.flag("repack", repack)
        remote = _remote(rpc, rpc_split, rpc_timeout)
        self.beta = beta  # validated by the setter
        self.group = Ensemble(
            base,
            self.experts,
            drafter=drafter,
            n_ctx=self.n_ctx,
            n_gpu_layers=n_gpu_layers,
            n_threads=n_threads,
            overlap=overlap,
            repack=repack,
            remote=remote,
        )
        self.gpu_offload = self.group.gpu_offload

    # --- settings --------------------------------------------------------------------------
    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = validate.beta(value)

    @property
    def overlap(self) -> bool:
        """On a CPU: the base model decodes beside the others (else one after another)."""
        return self.group.overlap

    @property
    def vocab(self) -> VocabCheck:
        return self.group.vocab

    @property
    def models(self) -> dict[str, Model]:
        return {r.label: r.model for r in self.group.roles}

    @property
    def placement(self) -> list[dict]:
        """Where the base model's layers are when RPC servers hold some ([] when all local):
        per place ("local", then each server), its layers ("0-13", "14-27+output") and the MiB of
        weights there."""
        return [dict(row) for row in self.group.placement]

    @property
    def closed(self) -> bool:
        return self.group.closed

    def _check_open(self) -> None:
        if self.group.closed:
            raise ClosedError("this Emulator is closed")

    # --- prompts ---------------------------------------------------------------------------
    def _rendered(self, prompt: str | Sequence[Message]) -> dict[str, Rendered]:
        """The prompt for each kind of role: raw text as it is, chat through the template."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidParameterError("the prompt is empty")
            _check_text(prompt)
            raw = Rendered.raw(prompt)
            return {"ft": raw, "base": raw}
        messages = check_messages(prompt)
        for m in messages:
            _check_text(m["content"])
        templated = render_pieces(self.group.ft_model, messages)
        return {
            "ft": templated,
            "base": templated
            if self.base_prompt == "template"
            else Rendered.plain(render_transcript(messages)),
        }

    def _prompts(self, prompt: str | Sequence[Message], indices: list[int]) -> dict[int, list[int]]:
        """Token lists per context index, each rendered for its role (token ids: exactly those,
        in every context)."""
        self._check_open()
        if _is_ids(prompt):
            ids = self._check_ids("prompt", prompt)
            return self._fitting({i: list(ids) for i in indices})
        return self._tokenized(self._rendered(prompt), indices)

    def _tokenized(self, rendered: dict[str, Rendered], indices: list[int]) -> dict[int, list[int]]:
        return self._fitting(
            {
                i: tokenize_prompt(self.group.roles[i].model, rendered[self.group.roles[i].kind])
                for i in indices
            }
        )

    def _fitting(self, prompts: dict[int, list[int]]) -> dict[int, list[int]]:
        """The prompts, if each leaves room for a token in the context."""
        for toks in prompts.values():
            if len(toks) >= self.n_ctx:
                raise ContextOverflowError(
                    f"the prompt is {len(toks)} tokens but the context holds {self.n_ctx}; "
                    "shorten it or raise n_ctx",
                    tokens=len(toks),
                    n_ctx=self.n_ctx,
                )
        return prompts

    def _check_fits(self, tokens: int) -> None:
        if tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt and continuation are {tokens} tokens but the context holds "
                f"{self.n_ctx}; raise n_ctx",
                tokens=tokens,
                n_ctx=self.n_ctx,
            )

    def _check_ids(self, name: str, ids: Sequence[int]) -> list[int]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise InvalidParameterError(f"{name} must be a list of token ids, got {ids!r}")
        n = self.vocab.n_shared
        return [validate.integer(f"{name} token id", t, 0, n - 1) for t in ids]

    # --- public API ------------------------------------------------------------------------
    def prompt_tokens(self, prompt: str | Sequence[Message]) -> dict[str, list[int]]:
        """The token ids each context sees for this prompt, by role label (base, ft, ref)."""
        prompts = self._prompts(prompt, self.group.indices("eft"))
        return {self.group.roles[i].label: toks for i, toks in prompts.items()}

    def logprobs(
        self,
        prompt: str | Sequence[Message],
        *,
        after: Sequence[int] = (),
        beta: float | None = None,
    ) -> np.ndarray:
        """EFT log-probabilities (float64) of the next token over the shared vocabulary, after the
        prompt and then the token ids `after` (to score a continuation)."""
        group = self.group
        b = self.beta if beta is None else validate.beta(beta)
        after = self._check_ids("after", after)
        with group.lock:
            prompts = self._prompts(prompt, group.indices("eft"))
            self._check_fits(max(len(p) for p in prompts.values()) + len(after))
            group.owner = None
            group.prefill({i: toks + after for i, toks in prompts.items()})
            rows = [r[0] for r in group.rows(prompts)]
            return log_softmax(group.combiner(b).combine(rows))

    def score(
        self,
        prompt: str | Sequence[Message],
        continuation: str | Sequence[int],
        *,
        beta: float | None = None,
        betas: Sequence[float] = (),
        top: int = 0,
    ) -> Score:
        """How likely `continuation` is after `prompt`, token by token, under EFT and under
        each model alone. A str prompt is raw text followed by the continuation; a list of
        messages puts the continuation as the assistant's reply under the chat template. Either
        may be token ids instead, to score exactly those (e.g. `Generation.tokens`; a prompt's
        own tokens: `score(ids[:1], ids[1:])`).
        `betas`: also total EFT at these betas (`Score.by_beta`), in the same pass. `top`: each
        token's `top` alternatives under EFT (what an OpenAI echo with logprobs=N returns)."""
        b = self.beta if beta is None else validate.beta(beta)
        validate.integer("top", top, 0, MAX_TOP_LOGPROBS)
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence):
            raise InvalidParameterError(f"betas must be a list of numbers, got {betas!r}")
        extra = [validate.beta(x) for x in betas]
        if isinstance(continuation, str):
            if not continuation:
                raise InvalidParameterError("the continuation is empty")
            _check_text(continuation)
        elif not continuation:
            raise InvalidParameterError("the continuation must be text or token ids, not empty")
        else:
            continuation = self._check_ids("continuation", continuation)
        group = self.group
        with group.lock:
            prompts, cont = self._score_prompts(prompt, continuation)
            self._check_fits(max(len(p) for p in prompts.values()) + len(cont))
            return score_tokens(group, prompts, cont, b, extra, group.ft_model, top)

    def _score_prompts(self, prompt, continuation: str | list[int]):
        """Per-context prompt tokens, and the continuation's ids (the fine-tuned rendering's,
        appended to every context as generated tokens are). Where the prompt's last tokens
        merge with the continuation's first, they count as continuation."""
        group = self.group
        indices = group.indices("eft")
        if _is_ids(prompt) or not isinstance(continuation, str):
            prompts = self._prompts(prompt, indices)
            if isinstance(continuation, str):  # after token ids: the text tokenized alone
                continuation = group.ft_model.tokenize(continuation, add_bos=False, special=False)
            return prompts, list(continuation)
        self._check_open()
        rendered = self._rendered(prompt)
        prompts = self._tokenized(rendered, indices)
        whole = Rendered(rendered["ft"].pieces + ((continuation, False),))
        ft_prompt = prompts[group.drafter]
        ft_whole = tokenize_prompt(group.ft_model, whole)
        keep = common_prefix(ft_prompt, ft_whole)
        cont = ft_whole[keep:]
        drop = len(ft_prompt) - keep
        same = {i for i, p in prompts.items() if p == ft_prompt}
        cut = {i: (p[: len(p) - drop] if i in same and drop else p) for i, p in prompts.items()}
        if not cont:
            raise InvalidParameterError("the continuation adds no tokens to the prompt")
        if any(not p for p in cut.values()):
            raise InvalidParameterError("the prompt is empty once its tokens are split")
        return cut, cont

    def stream(self, prompt: str | Sequence[Message] | Sequence[int], **settings) -> Stream:
        """Stream text pieces; a str prompt is raw completion, a list of messages is chat, a list
        of token ids is raw completion of exactly those ids.

        Settings are validated (and the prompt rendered) here, before the first piece.
        """
        job = self._prepare(prompt, **settings)
        s = Stream(iter(()))
        s._pieces = self._run(job, s)
        return s

    def generate(self, prompt: str | Sequence[int], **settings) -> Generation:
        """Complete raw text, or token ids as they are (no BOS added)."""
        if not isinstance(prompt, str) and not _is_ids(prompt):
            raise InvalidParameterError(
                "generate() takes a prompt string or token ids; use chat() for messages"
            )
        return self._collect(prompt, settings)

    def chat(self, messages: Sequence[Message], **settings) -> Generation:
        if isinstance(messages, str):
            raise InvalidParameterError("chat() takes a list of messages; use generate() for text")
        return self._collect(messages, settings)

    def _collect(self, prompt, settings) -> Generation:
        with self.group.lock:  # the whole request: other threads wait their turn
            s = self.stream(prompt, **settings)
            for _ in s:
                pass
        assert s.generation is not None
        return s.generation

    def close(self) -> None:
        """Free the models (waiting for a request in progress); later calls raise ClosedError."""
        with self.group.lock:
            self.group.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one request -----------------------------------------------------------------------
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
        logprobs: int | None = None,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: dict[int, float] | None = None,
        grammar: str | None = None,
        json_schema: dict | str | None = None,
    ) -> _Job:
        validate.choice("mode", mode, MODES)
        if logprobs is not None:
            validate.integer("logprobs", logprobs, 0, MAX_TOP_LOGPROBS)
        b = self.beta if beta is None else validate.beta(beta)
        if draft_tokens is not None:
            validate.integer("draft_tokens", draft_tokens, 1, MAX_DRAFT)
        validate.flag("speculative", speculative)
        params = SamplingParams(temperature, top_k, top_p, min_p, seed)
        if params.seed is None and not params.greedy:  # every sampled run can be repeated
            params = SamplingParams(temperature, top_k, top_p, min_p, secrets.randbits(31))
        indices = self.group.indices(mode)
        penalties = Penalties.checked(
            self.vocab.n_shared,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            logit_bias=logit_bias,
        )
        if grammar is not None and json_schema is not None:
            raise InvalidParameterError("give grammar or json_schema, not both")
        text = schema_grammar(json_schema) if json_schema is not None else grammar
        if text is not None and not isinstance(text, str):
            raise InvalidParameterError(f"grammar must be GBNF text, got {text!r}")
        checked_grammar = None if text is None else Grammar(self._eog_model(mode), text)
        return _Job(
            indices=indices,
            prompts=self._prompts(prompt, indices),
            params=params,
            max_tokens=validate.integer("max_tokens", max_tokens, 1),
            stops=_stops(stop),
            beta=b,
            mode=mode,
            speculative=mode == "eft"
            and use_speculative(speculative, self.gpu_offload, draft_tokens),
            draft_tokens=draft_tokens,
            logprobs=logprobs,
            penalties=penalties,
            grammar=checked_grammar,
        )

    def _eog_model(self, mode: str) -> Model:
        """The model whose vocabulary ends generation (and renders text) in this mode."""
        group = self.group
        return group.roles[group.base].model if mode == "base" else group.ft_model

    def _decoder(self, job: _Job, stats: Stats, observe: Recorder | None):
        """The strategy for this request, over the group."""
        sampler = Sampler(job.params, self.vocab.n_shared)
        constraints = None
        if job.grammar is not None or job.penalties.active:
            text_context = job.indices[0] if job.mode != "eft" else self.group.drafter
            constraints = Constraints(
                job.penalties, list(job.prompts[text_context]), job.grammar, self.n_ctx
            )
        args = (self.group, job.indices, job.beta, sampler, stats, observe, constraints)
        if job.speculative:
            return SpeculativeDecoder(*args, draft_tokens=job.draft_tokens)
        return PlainDecoder(*args)

    def _run(self, job: _Job, out: Stream) -> Iterator[str]:
        group = self.group
        t0 = time.perf_counter()
        stats = Stats(
            prompt_tokens=max(len(p) for p in job.prompts.values()), placement=self.placement
        )
        eog_model = self._eog_model(job.mode)
        recorder = None
        if job.logprobs is not None:
            recorder = Recorder(group, job.indices, eog_model, job.logprobs)
            out.records = recorder.records
        producer = self._decoder(job, stats, recorder).tokens(job.prompts)
        out_text = TextStream(job.stops)
        tokens = out.tokens
        finish = "length"
        try:
            while True:
                with group.lock:  # one step at a time, whoever else holds this Emulator
                    self._check_open()
                    tok = next(producer)
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
        except GrammarDeadEnd:
            finish = "grammar"
        except (GeneratorExit, KeyboardInterrupt):
            finish = "interrupted"
            raise
        finally:
            producer.close()
            rest = out_text.finish() if finish != "interrupted" else ""
            stats.generated_tokens = len(tokens)
            stats.seconds = time.perf_counter() - t0
            if len(job.indices) > 1 and group.has_layouts:
                stats.layout, stats.layout_probe = group.layout, group.layout_probe
            records = None if recorder is None else recorder.records[: len(tokens)]
            out.generation = Generation(
                out_text.text, list(tokens), finish, stats, job.params.seed, records
            )
        if rest:
            yield rest


def _is_ids(x) -> bool:
    return (
        isinstance(x, (list, tuple, np.ndarray))
        and len(x) > 0
        and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in x)
    )


def _remote(endpoints, split, timeout) -> rpc_module.Remote | None:
    """The RPC settings, checked before anything loads."""
    if endpoints is None:
        if split is not None:
            raise InvalidParameterError("rpc_split needs rpc (the RPC servers)")
        validate.number("rpc_timeout", timeout, 0.1)
        return None
    eps = rpc_module.endpoints(endpoints)
    if not eps:
        raise InvalidParameterError("rpc must name at least one 'HOST:PORT' server, or be None")
    if split is not None:
        split = rpc_module.check_split(split, len(eps))
    rpc_module.require()
    return rpc_module.Remote(tuple(eps), split, validate.number("rpc_timeout", timeout, 0.1))


def _check_text(text: str) -> None:
    """Text must be encodable as UTF-8 (a str from undecodable bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameterError(
            "the prompt is not valid UTF-8 text (undecodable bytes in the input?)"
        ) from None
