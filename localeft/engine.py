"""`Emulator`: the public API. Several GGUF models driven as one exact EFT token stream.

prompt ─▶ render per role ─▶ contexts (one per model file) ─▶ logits views ─▶ combine ─▶ sample
                                    ▲                                                     │
                                    └──────────── feed the token to every context ◀──────┘

The Emulator holds the group of contexts (ensemble.Ensemble). A request's settings become one
validated `request.Request`; `bind` renders its prompt for each context (render.RolePrompts) and
compiles its grammar; generation.py runs it (the token loop, text, `Generation`); scoring.py
scores text.
"""

from __future__ import annotations

import os
from typing import Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from . import placement, toolformat
from . import rpc as rpc_module
from . import validate
from .backend import Model
from .decoding import Stats
from .eft import log_softmax
from .ensemble import Ensemble, Expert, checked_models
from .lora import LoRA, Source
from .errors import ClosedError, InvalidParameterError
from .generation import Generation, Job, Stream, start
from .grammar import Grammar
from .prompts import BasePrompt, Message
from .render import RolePrompts
from .request import MAX_TOP_LOGPROBS, MODES, Request, build, check_prompt, check_text, is_ids
from .scoring import Score, next_token_rows, score_tokens
from .speculative import use_speculative
from .tools import check_tools
from .vocab import VocabCheck

__all__ = [
    "Emulator",
    "Expert",
    "LoRA",
    "Generation",
    "Stats",
    "Stream",
    "MODES",
    "MAX_TOP_LOGPROBS",
]


class Emulator:
    """Emulated fine-tuning over GGUF models.

    Up-scaling: `Emulator(large_base=..., small_ft=..., small_base=..., beta=1.0)`.
    General: `Emulator(base=..., experts=[Expert(ft, ref, weight), ...])`; down-scaling is
    `base=small_base, experts=[Expert(ft=large_ft, ref=large_base)]`. Any model may be a
    `LoRA(model, adapter)`: the fine-tuned model as a small base plus a LoRA adapter GGUF,
    which shares the base's one load of the weights. `drafter` picks the expert
    whose fine-tuned model drafts for speculative decoding, runs alone in mode "ft", supplies
    the chat template and decides end of generation. `overlap` (default: on for CPU-only runs
    with 2+ threads) decodes the base model concurrently with the others, the cores split in
    proportion to model size (measured faster than one model after another on a CPU).
    The weights are mmap'd (shared through the page cache: a 7B loads in about a second);
    `repack=True` reads them into llama.cpp's repacked CPU layout instead: ~11% faster CPU
    decoding after a load seconds longer, and numerically a different rounding of the same model
    (`weights` says which layout results come from; the README's determinism contract).

    `rpc=["host:port", ...]` places the base model's layers on llama.cpp RPC servers (`localeft
    rpc-server` on other machines; the other models stay here): by default all of them, in
    proportion to each server's free memory, keeping here what does not fit there;
    `rpc_split=[w1, ..., wn(, w_here)]` sets the shares (one per server, then optionally one for
    this machine). `rpc_timeout` bounds one remote call: a server that stops answering ends the
    process with one line after that many seconds, as llama.cpp ends it when a server dies
    (`placement` says where the layers went; docs/DISTRIBUTED.md). `rpc_output` keeps the
    base's output layer here ("local": a hidden state crosses the network per token instead
    of n_vocab logits) or on its server ("remote"); "auto" decides from the link measured at
    connect and the layer's cost here (`rpc_output_choice` says which and why).

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
        repack: bool = False,
        rpc: Sequence[str] | None = None,
        rpc_split: Sequence[float] | None = None,
        rpc_timeout: float = rpc_module.DEFAULT_TIMEOUT,
        rpc_output: str = "auto",
    ):
        base, self.experts = checked_models(large_base, small_ft, small_base, base, experts)
        self.n_ctx = validate.integer("n_ctx", n_ctx, 8)
        if n_threads is not None:
            validate.integer("n_threads", n_threads, 1)
        validate.integer("n_gpu_layers", n_gpu_layers, -1)
        self.base_prompt = validate.choice("base_prompt", base_prompt, ("template", "transcript"))
        validate.integer("drafter", drafter, 0, len(self.experts) - 1)
        validate.flag("overlap", overlap)
        self.repack = bool(validate.flag("repack", repack))
        remote = placement.remote(rpc, rpc_split, rpc_timeout, rpc_output)
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
        self.prompts = RolePrompts(self.group, self.base_prompt, self.n_ctx)

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
    def expert_weights(self) -> list[float]:
        """Each expert's weight, in order (one expert: [1.0] unless set otherwise)."""
        return [e.weight for e in self.experts]

    @property
    def weights(self) -> str:
        """The weight layout results come from: "repacked" (llama.cpp's repacked CPU copy of
        some weights, `repack=True`) or "mmap" (the file's own layout)."""
        return self.group.weights

    @property
    def vocab(self) -> VocabCheck:
        return self.group.vocab

    @property
    def models(self) -> dict[str, Model]:
        return {r.label: r.model for r in self.group.roles}

    @property
    def sources(self) -> dict[str, Source]:
        """Each role's model file and the LoRA adapters on it (with their scales), by label."""
        return dict(self.group.sources)

    @property
    def adapters(self) -> dict[str, list[tuple[str, float]]]:
        """The adapted roles' adapters as (path, scale), by label ({} without LoRA): what
        JSON output and saved chats record beside the model files."""
        return {
            label: [(str(p), s) for p, s in src.adapters]
            for label, src in self.group.sources.items()
            if src.adapters
        }

    @property
    def placement(self) -> list[dict]:
        """Where the base model's layers are when RPC servers hold some ([] when all local):
        per place ("local", then each server), its layers ("0-13", "14-27+output") and the MiB of
        weights there."""
        return [dict(row) for row in self.group.placement]

    @property
    def rpc_output_choice(self) -> dict | None:
        """Where the base's output layer is when RPC servers hold its layers ("local" or
        "remote") and why, e.g. {"where": "local", "why": "auto: 601 KB more per token ..."};
        None without RPC."""
        out = self.group.output
        return None if out is None else {"where": out.choice.where, "why": out.choice.why}

    @property
    def closed(self) -> bool:
        return self.group.closed

    def _check_open(self) -> None:
        if self.group.closed:
            raise ClosedError("this Emulator is closed")

    # --- public API ------------------------------------------------------------------------
    def prompt_tokens(
        self, prompt: str | Sequence[Message], *, tools: Sequence[dict] | None = None
    ) -> dict[str, list[int]]:
        """The token ids each context sees for this prompt (and tools, for chat), by role
        label (base, ft, ref)."""
        self._check_open()
        kind, checked = check_prompt(prompt)
        prompts = self.prompts.tokens(kind, checked, self.group.indices("eft"), check_tools(tools))
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
        after = self.prompts.ids("after", after)
        with group.lock:
            self._check_open()
            kind, checked = check_prompt(prompt)
            prompts = self.prompts.tokens(kind, checked, group.indices("eft"))
            self.prompts.check_fits(max(len(p) for p in prompts.values()) + len(after))
            rows = next_token_rows(group, {i: toks + after for i, toks in prompts.items()})
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
            check_text(continuation)
        elif not continuation:
            raise InvalidParameterError("the continuation must be text or token ids, not empty")
        else:
            continuation = self.prompts.ids("continuation", continuation)
        group = self.group
        with group.lock:
            self._check_open()
            prompts, cont = self.prompts.scoring(prompt, continuation)
            self.prompts.check_fits(max(len(p) for p in prompts.values()) + len(cont))
            return score_tokens(group, prompts, cont, b, extra, group.ft_model, top)

    def stream(
        self, prompt: str | Sequence[Message] | Sequence[int] | Request, **settings
    ) -> Stream:
        """Stream text pieces; a str prompt is raw completion, a list of messages is chat, a list
        of token ids is raw completion of exactly those ids (or a `request.Request`, built
        already, and no settings).

        Settings are validated (and the prompt rendered) here, before the first piece.
        """
        if isinstance(prompt, Request):
            if settings:
                raise InvalidParameterError("a Request carries its settings: give no others")
            req = prompt
        else:
            req = build(prompt, **settings)
        job = self.bind(req)
        return start(self.group, job, self._check_open)

    def generate(self, prompt: str | Sequence[int], **settings) -> Generation:
        """Complete raw text, or token ids as they are (no BOS added)."""
        if not isinstance(prompt, str) and not is_ids(prompt):
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

    def bind(self, req: Request) -> Job:
        """The request over this group: the contexts its mode runs, each one's prompt tokens,
        its grammar compiled for the vocabulary."""
        self._check_open()
        group = self.group
        req.penalties.within(group.n_vocab)
        indices = group.indices(req.mode)
        text_model = group.roles[group.base].model if req.mode == "base" else group.ft_model
        prompts, replies = self.prompts.with_replies(req.kind, req.prompt, indices, req.tools)
        family, grammar = None, req.grammar
        if req.tools and req.tool_choice != "none":
            family = toolformat.family(group.ft_model.chat_template)  # rendering checked it
            if req.forced_call:
                grammar = toolformat.call_grammar(
                    family, req.tools, req.tool_choice, req.parallel_tool_calls
                )
        return Job(
            request=req,
            indices=indices,
            prompts=prompts,
            replies=replies,
            beta=self.beta if req.beta is None else req.beta,
            speculative=req.mode == "eft"
            and use_speculative(
                req.speculative,
                self.gpu_offload,
                req.draft_tokens,
                masked_sampling=grammar is not None and not req.sampling.greedy,
            ),
            grammar=None if grammar is None else Grammar(text_model, grammar),
            text_model=text_model,
            tool_family=family,
        )

    def close(self) -> None:
        """Free the models (waiting for a request in progress); later calls raise ClosedError."""
        with self.group.lock:
            self.group.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
