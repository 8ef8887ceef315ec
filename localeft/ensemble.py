"""The group of llama.cpp contexts one Emulator drives as one: which model plays which role,
one context per (file, role kind), the shared vocabulary, and the moves every decoder needs:
prefill, one step everywhere, a verify batch, the rows for the combiner.

It knows nothing of sampling, stop strings or text: token ids in, logits views out.

Roles: context 0 is the base model; each expert adds a fine-tuned context ("ft") and a
reference context ("ref"), both shared when files repeat (one model file used as the ref of
two experts is loaded, and run, once). Pre-trained contexts (base, refs) are "base"-kind and
see the base rendering of a chat; fine-tuned ones are "ft"-kind. A role may be a model with
LoRA adapters (lora.LoRA): its context is keyed by (file, kind, adapters) over the one Model
of that file, so a small base and its adapted fine-tune share one load of the weights.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from . import layout, lora, outputcost, placement, rpc, rpclink, validate
from .backend import Model, check_gguf_file
from .context import Context
from .ggufinfo import Header, read_header
from .native import available_memory, default_threads
from .eft import Combiner, Term
from .layout import Span
from .errors import InsufficientMemoryError, InvalidParameterError, LocaleftWarning
from .errors import ModelFileError
from .vocab import check_vocabularies


@dataclass
class Role:
    """One context as the group sees it: its label (base, ft, ref, ft0, ref1, ...), its kind
    ("base" for pre-trained models, "ft" for fine-tuned ones) and the context itself."""

    label: str
    ctx: Context
    kind: str

    @property
    def model(self) -> Model:
        return self.ctx.model


@dataclass(frozen=True)
class Expert:
    """A fine-tuning delta: `weight · (log p_ft − log p_ref)`. `ft` and `ref` are model paths
    or `LoRA(model, adapter)`s."""

    ft: str | os.PathLike | lora.LoRA
    ref: str | os.PathLike | lora.LoRA
    weight: float = 1.0


def checked_models(large_base, small_ft, small_base, base, experts) -> tuple:
    """(base, [Expert]) from either the up-scaling trio or base + experts, checked."""
    trio = (large_base, small_ft, small_base)
    if any(x is not None for x in trio):
        if base is not None or experts:
            raise InvalidParameterError(
                "give either large_base/small_ft/small_base or base/experts"
            )
        if any(x is None for x in trio):
            raise InvalidParameterError("up-scaling needs large_base, small_ft and small_base")
        for name, value in zip(("large_base", "small_ft", "small_base"), trio):
            lora.checked(name, value)
        base, experts = large_base, [Expert(ft=small_ft, ref=small_base)]
    if base is None or not experts:
        raise InvalidParameterError("an Emulator needs a base model and at least one expert")
    lora.checked("base", base)
    if isinstance(experts, (str, bytes, Expert)) or not isinstance(experts, Sequence):
        raise InvalidParameterError("experts must be a list of Expert(ft, ref, weight)")
    return base, [_expert(e, i) for i, e in enumerate(experts)]


def _expert(e, i: int) -> Expert:
    if not isinstance(e, Expert):
        raise InvalidParameterError(
            f"experts[{i}] must be an Expert(ft=..., ref=..., weight=...), got {e!r}"
        )
    return Expert(
        lora.checked(f"experts[{i}].ft", e.ft),
        lora.checked(f"experts[{i}].ref", e.ref),
        validate.weight(f"experts[{i}].weight", e.weight),
    )


PROBE = ("overlap", "sequential", "sequential", "overlap") * 2  # the first 8 EFT steps


class Ensemble:
    """Loaded models and one context per (file, kind), driven together.

    `overlap` chooses the CPU layout of single-token steps: True decodes the base model
    concurrently with the others, the cores split in proportion to model size; False runs
    them one after another with every core; None (default) measures both on the first EFT
    steps and keeps the faster (`layout`, `layout_probe`).
    """

    def __init__(
        self,
        base: str | os.PathLike,
        experts: Sequence[Expert],
        *,
        drafter: int = 0,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        overlap: bool | None = None,
        repack: bool = False,
        remote: placement.Remote | None = None,
    ):
        """`remote`: the base model's layers go to these RPC servers (the others stay here)."""
        self.lock = threading.RLock()  # llama.cpp contexts are not thread-safe
        self.owner: object | None = None  # the decoder whose state the KV caches hold
        self.models: dict[Path, Model] = {}
        self.roles: list[Role] = []
        self.closed = False
        self._pool: ThreadPoolExecutor | None = None
        self.placement: list[dict] = []  # where the base model's layers are, when remote
        self.devices: list[rpc.Device] = []  # the RPC servers' devices it uses
        self.plan: placement.Plan | None = None
        self.output: OutputPlace | None = None  # where the base's output layer is, when remote
        try:
            self._load(
                base, experts, drafter, n_ctx, n_gpu_layers, n_threads, overlap, repack, remote
            )
        except BaseException:
            self.close()
            raise

    def _load(
        self, base, experts, drafter, n_ctx, n_gpu_layers, n_threads, overlap, repack, remote
    ):
        many = len(experts) > 1
        specs = [(base, "base", "base")] + [
            spec
            for i, e in enumerate(experts)
            for spec in (
                (e.ft, "ft", f"ft{i}" if many else "ft"),
                (e.ref, "base", f"ref{i}" if many else "ref"),
            )
        ]
        keys = [(lora.source(value), kind, label) for value, kind, label in specs]
        files = list(dict.fromkeys(src.path for src, _, _ in keys))
        adapted = list(dict.fromkeys((src.path, a) for src, _, _ in keys for a, _ in src.adapters))
        # Everything that can fail cheaply fails before the first weight is read.
        self.headers = _check_files(files, adapted)
        base_path = keys[0][0].path
        if remote and keys[0][0].adapters:
            raise InvalidParameterError(
                "LoRA adapters on the base model are not supported with RPC servers"
            )
        devices, links = remote.connect() if remote else ([], {})
        unique = list(dict.fromkeys((src, kind) for src, kind, _ in keys))
        cores = _threads(n_threads)
        self.vocab, plan, self.output = self._precheck(
            files,
            [src.path for src, _ in unique],
            n_ctx,
            n_gpu_layers,
            base_path,
            devices,
            links,
            remote,
            cores,
            sum(a.stat().st_size for _, a in adapted),
        )
        self.devices, self.plan = devices, plan
        watchdog = rpc.Watchdog(remote.timeout, remote.endpoints) if remote else None
        for p in files:
            if plan is not None and p == base_path:
                self.models[p] = Model(
                    p,
                    n_gpu_layers=plan.n_gpu_layers,
                    devices=[d.handle for d in devices],
                    tensor_split=plan.weights,
                    repack=repack,
                    output_here=self.output is not None and self.output.here,
                    watchdog=watchdog,
                )
                self.placement = placement.placement_rows(
                    plan,
                    devices,
                    self.models[p].load_log,
                    output_here=self.output.here,
                    links=links,
                )
            else:
                self.models[p] = Model(p, n_gpu_layers=n_gpu_layers, repack=repack)
        for p, a in adapted:  # before any context of the model: llama.cpp sizes graphs by them
            self.models[p].adapter(a)
        self.gpu_offload = any(m.offloaded for m in self.models.values())
        # The weight layout results depend on (Stats.weights): llama.cpp's repacked CPU copy
        # of some weights, or the file's own layout (mmap'd)
        self.weights = "repacked" if any(m.repacked for m in self.models.values()) else "mmap"
        # Sizes are what each model computes here: a base all on RPC servers only waits.
        sizes = [self.models[src.path].size_bytes for src, _ in unique]
        if plan is not None:
            sizes[0] = sizes[0] * plan.local_layers // (plan.n_layer + 1) + self.output.nbytes
        step = step_threads(
            sizes,
            cores,
            enabled=overlap is not False and not self.gpu_offload,
            waits=plan is not None and plan.local_layers == 0,
        )
        self._split, self._cores = step, cores
        index = {}
        for (src, kind), n_step in zip(unique, step or [None] * len(unique)):
            label = next(lab for q, k, lab in keys if (q, k) == (src, kind))
            model = self.models[src.path]
            ctx = Context(
                model,
                n_ctx=n_ctx,
                n_threads=cores,
                n_threads_step=n_step,
                adapters=[(model.adapter(a), scale) for a, scale in src.adapters],
            )
            index[(src, kind)] = len(self.roles)
            self.roles.append(Role(label, ctx, kind))
        self.n_ctx = min(r.ctx.n_ctx for r in self.roles)
        at = [index[(src, kind)] for src, kind, _ in keys]
        self.base = at[0]
        self.terms = [(at[1 + 2 * i], at[2 + 2 * i], e.weight) for i, e in enumerate(experts)]
        self.drafter = self.terms[drafter][0]  # the fine-tuned context that drafts and runs alone
        self.files = {label: src.path for src, _, label in keys}  # every role's model file
        self.sources = {label: src for src, _, label in keys}  # ... and its adapters
        # CPU layout: measured, unless forced (overlap=True/False) or moot (GPU, one core).
        self.layout = "overlap" if step is not None else "sequential"
        self.layout_probe: dict[str, float] | None = None
        # A base that computes nothing here only waits for its servers: overlap, unmeasured.
        probe = step is not None and overlap is None and sizes[0] > 0
        self._probe = list(PROBE) if probe else None
        self._probe_times: dict[str, list[float]] = {"overlap": [], "sequential": []}
        if step is not None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="localeft")

    @staticmethod
    def _precheck(
        files: list[Path],
        contexts: list[Path],
        n_ctx: int,
        n_gpu_layers: int,
        base_path: Path,
        devices: list[rpc.Device],
        links: dict[str, rpclink.Link | None],
        remote: placement.Remote | None,
        cores: int,
        adapter_bytes: int = 0,
    ):
        """Vocabularies, trained context and memory, from each file's metadata and tokenizer
        alone (llama.cpp's vocab-only load): a mismatch or a trio that cannot fit is reported
        in a second, not after minutes of loading weights. With RPC `devices`, also where the
        base's layers go (rpc.plan) and its output layer (placement.output_here): what goes
        there does not count here. Returns the vocabulary check, that plan (None without RPC)
        and the output choice."""
        heads = [Model(p, vocab_only=True) for p in files]
        plan, output = None, None
        try:
            vocab = check_vocabularies(heads)
            for m in heads:
                if m.n_ctx_train and n_ctx > m.n_ctx_train:
                    warnings.warn(
                        f"a context of {n_ctx} tokens is more than {m.path.name} was trained "
                        f"on ({m.n_ctx_train}): expect worse text past {m.n_ctx_train} tokens",
                        LocaleftWarning,
                        stacklevel=4,
                    )
            kv_per_file = {m.path: m.kv_bytes(n_ctx) for m in heads}
            head = next(m for m in heads if m.path == base_path)
            n_layer, n_embd, n_vocab = head.n_layer, head.n_embd, head.n_vocab
        finally:
            for m in heads:
                m.close()
        here = {p: 0 if n_gpu_layers else p.stat().st_size for p in files}
        if devices:
            size, n_kv = base_path.stat().st_size, contexts.count(base_path)
            per_layer = size / (n_layer + 1) + n_kv * kv_per_file[base_path] / max(n_layer, 1)
            plan = placement.plan(n_layer, devices, remote.split, per_layer)
            placement.check_remote_memory(plan, devices, per_layer)
            output = _output_place(remote, plan, devices, links, base_path, n_embd, n_vocab, cores)
            # The input embedding always stays here: about one layer's worth.
            here[base_path] = size * (plan.local_layers + 1) // (n_layer + 2) + output.nbytes
            kv_per_file[base_path] = (
                kv_per_file[base_path] * min(plan.local_layers, n_layer) // max(n_layer, 1)
            )
        kv = sum(kv_per_file[p] for p in contexts)
        weights = sum(here.values()) + adapter_bytes
        free = available_memory()
        need = weights + kv
        if free is not None and need > free:
            gib = 2**30
            raise InsufficientMemoryError(
                f"these models need about {need / gib:.1f} GiB (weights {weights / gib:.1f} + "
                f"KV caches {kv / gib:.1f} for a context of {n_ctx} tokens) but "
                f"{free / gib:.1f} GiB of memory is available; use a smaller context (n_ctx), "
                "smaller quantisations, GPU offload, or RPC servers (--rpc)"
            )
        return vocab, plan, output

    # --- what the group is -----------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        """Ids every model shares (the combined distribution's support)."""
        return self.vocab.n_shared

    @property
    def ft_model(self) -> Model:
        """The drafter's model: its chat template, its end-of-generation tokens."""
        return self.roles[self.drafter].model

    def indices(self, mode: str) -> list[int]:
        """Contexts a mode runs: every one for EFT, the base or the drafter alone."""
        if mode == "eft":
            return list(range(len(self.roles)))
        return [self.base] if mode == "base" else [self.drafter]

    def combiner(self, beta: float, rows: int = 1) -> Combiner:
        """The EFT formula with every expert's weight scaled by beta, over context order."""
        terms = [Term(ft, ref, beta * w) for ft, ref, w in self.terms]
        return Combiner(self.n_vocab, self.base, terms, max_rows=rows, never=self.vocab.unused)

    def single(self, rows: int = 1) -> Combiner:
        """One model's logits alone (`combine([rows])`), over the shared range, padding masked."""
        return Combiner(self.n_vocab, 0, [], max_rows=rows, never=self.vocab.unused)

    # --- moves -----------------------------------------------------------------------------
    def prefill(
        self, prompts: dict[int, list[int]], replies: dict[int, Sequence[Span]] | None = None
    ) -> None:
        """Bring each context to its token list, logits of the last position ready, decoded in
        the generation layout (layout.plan: prompt stretches in chunks of n_ubatch from their
        start, `replies[i]` one token per call on a CPU, in chunks with GPU offload) and
        reusing only what the KV cache holds of that layout (`Context.n_evaluated` counts what
        was decoded)."""
        for i, toks in prompts.items():
            ctx = self.roles[i].ctx
            spans = replies.get(i, ()) if replies else ()
            reply_chunk = ctx.n_ubatch if self.gpu_offload else 1
            ctx.bring(layout.plan(toks, spans, ctx.n_ubatch, reply_chunk), len(toks), 1)

    def rows(self, indices: Sequence[int], n: int = 1) -> list[np.ndarray]:
        """The last decode's logits rows per context (float32 views; on a GPU this waits for
        the device)."""
        return [self.roles[i].ctx.logits(n) for i in indices]

    @property
    def has_layouts(self) -> bool:
        """A CPU run with 2+ cores and contexts: overlap and sequential both exist."""
        return self._split is not None

    @property
    def overlap(self) -> bool:
        """The base decodes beside the other contexts (else one after another)."""
        return self.layout == "overlap"

    def _use(self, layout: str) -> None:
        """Set every context's step threads for a layout: overlap splits the cores by model
        size, sequential gives each context all of them."""
        for r, n in zip(self.roles, self._split or [None] * len(self.roles)):
            r.ctx.set_step_threads(n if layout == "overlap" and n else self._cores)
        self.layout = layout

    def step(self, token: int, indices: Sequence[int], seconds: dict[str, float]) -> None:
        """Decode one token in every given context. On a CPU with overlap the base decodes on
        its own thread beside the others; otherwise every decode is launched before any
        logits are read (GPU builds return from decode early). Adds wall time per label.

        While the CPU layout is undecided, the first EFT steps alternate the two layouts
        (ABBA order, four steps each) and the faster median wins for the group's life: which
        one wins depends on the machine and the trio (1.5B + 2x0.5B on 2 cores: overlap;
        7B + 2x0.5B: sequential), so it is measured rather than guessed."""
        probing = self._probe is not None and len(indices) == len(self.roles)
        if probing:
            want = self._probe[0]
            if want != self.layout:
                self._use(want)
            t0 = time.perf_counter()
        roles = [self.roles[i] for i in indices]
        pending = None
        if self.layout == "overlap" and len(roles) > 1 and indices[0] == self.base:
            pending = self._pool.submit(_timed, roles[0].ctx.decode, [token])
        try:
            for r in roles[1:] if pending else roles:
                seconds[r.label] += _timed(r.ctx.decode, [token])
        finally:
            if pending is not None:
                seconds[roles[0].label] += _wait(pending)
        if probing:
            self._probe_times[want].append(time.perf_counter() - t0)
            self._probe.pop(0)
            if not self._probe:
                self._decide()

    def _decide(self) -> None:
        med = {k: 1000 * statistics.median(v) for k, v in self._probe_times.items()}
        self.layout_probe = med
        self._probe = None
        self._use(min(med, key=med.get))

    def verify(
        self, blocks: dict[int, list[int]], n_rows: int, seconds: dict[str, float]
    ) -> list[np.ndarray | None]:
        """Bring each given context to its token list in one batch, with logits at its last
        n_rows positions; returns rows by context index (None where not given). A context that
        holds all but the last n_rows - 1 tokens with its last row at hand (just after the
        prompt) decodes only those: its prompt keeps the layout it was decoded in."""
        out: list[np.ndarray | None] = [None] * len(self.roles)
        first: dict[int, np.ndarray] = {}
        for i, toks in blocks.items():
            ctx, k = self.roles[i].ctx, n_rows - 1
            if k and ctx.holds_with_row(toks[:-k]):
                first[i] = ctx.logits(1).copy()
                seconds[self.roles[i].label] += _timed(ctx.decode, toks[-k:], k)
            else:
                seconds[self.roles[i].label] += _timed(ctx.sync_decode, toks, n_rows)
        for i in blocks:
            rows = self.roles[i].ctx.logits(n_rows - (i in first))
            out[i] = np.concatenate([first[i], rows]) if i in first else rows
        return out

    @contextlib.contextmanager
    def alone(self, index: int | None) -> Iterator[None]:
        """Context `index` runs by itself meanwhile: with overlap it gets every core for its
        single-token steps too (one-model modes, the drafter while drafting)."""
        if index is None or not self.overlap:
            yield
            return
        with self.roles[index].ctx.all_threads():
            yield

    @contextlib.contextmanager
    def layout_as(self, layout: str) -> Iterator[None]:
        """Run in this CPU layout meanwhile, probing suspended (for comparing layouts)."""
        if layout == "overlap" and self._split is None:
            raise ValueError("no overlap layout here (GPU offload, one core or one context)")
        saved, probe, self._probe = self.layout, self._probe, None
        self._use(layout)
        try:
            yield
        finally:
            self._use(saved)
            self._probe = probe

    def sequential(self):
        """Decode one context after another meanwhile, each with every core."""
        return self.layout_as("sequential")

    def close(self) -> None:
        self.closed = True
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for r in self.roles:
            r.ctx.close()
        for m in self.models.values():
            m.close()


@dataclass(frozen=True)
class OutputPlace:
    """Where the base's output layer is (`choice`: here or not, and why) and the bytes of it
    this machine holds and computes per token (0 when it is remote)."""

    choice: placement.OutputChoice
    nbytes: int

    @property
    def here(self) -> bool:
        return self.choice.here


def _output_place(remote, plan, devices, links, path, n_embd, n_vocab, cores) -> OutputPlace:
    """Keep the output layer here or on its server (placement.output_here): "auto" measures
    the layer's matrix-vector product on this CPU with every core."""
    dev = placement.output_device(plan, devices)
    if dev is None:
        return OutputPlace(placement.OutputChoice(True, "its layers stay here"), 0)
    layer = outputcost.output_layer(path, n_embd) if n_embd else None
    link = links.get(dev.endpoint)
    local = None
    if remote.output == "auto" and link is not None and layer is not None:
        local = outputcost.matvec_seconds(layer, cores)
    saved = (n_vocab - n_embd) * 4
    choice = placement.output_here(remote.output, dev.endpoint, link, saved, local)
    return OutputPlace(choice, layer.nbytes if layer and choice.here else 0)


def _check_files(files: list[Path], adapted: list[tuple[Path, Path]]) -> dict[Path, Header]:
    """Every model file is a GGUF model (not an adapter), every adapter a LoRA adapter GGUF
    that fits its model: from the headers alone, before any weights load. Returns the
    headers read, by path."""
    headers: dict[Path, Header] = {}
    for p in files:
        check_gguf_file(p)
        headers[p] = read_header(p)
        lora.check_model(headers[p])
    for p, a in adapted:
        if not a.exists():
            raise ModelFileError(f"LoRA adapter file not found: {a}")
        check_gguf_file(a)
        if a not in headers:
            headers[a] = read_header(a)
        lora.check_adapter(headers[p], headers[a])
    return headers


def _threads(requested: int | None) -> int:
    """Threads per decode: as asked, but never more than the cores this process may use
    (oversubscribed, llama.cpp's spinning workers ran 13x slower here)."""
    cores = default_threads(from_env=False)
    if requested is None:
        return default_threads()
    if requested > cores:
        warnings.warn(
            f"{requested} threads is more than the {cores} cores available: using {cores}",
            LocaleftWarning,
            stacklevel=5,
        )
        return cores
    return requested


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def step_threads(
    sizes: list[int], cores: int, enabled: bool, waits: bool = False
) -> list[int] | None:
    """Threads for single-token steps when context 0 (the base) decodes concurrently with the
    rest, which run one after another: cores split in proportion to model size (decode time on
    a CPU follows the bytes read). `waits`: the base's layers are on RPC servers and its thread
    mostly waits for them (then computes its share here, such as the output layer, in a burst):
    the others keep every core. None where overlap is off or there is nothing to split."""
    if not enabled or len(sizes) < 2:
        return None
    if sizes[0] == 0:  # the base computes on RPC servers: its thread only waits for them
        return [1] + [cores] * (len(sizes) - 1)
    share = round(cores * sizes[0] / sum(sizes))
    if waits:
        return [min(max(share, 1), cores)] + [cores] * (len(sizes) - 1)
    if cores < 2:
        return None
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
