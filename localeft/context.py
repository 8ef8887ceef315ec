"""One KV cache over a model: decode tokens in llama_decode calls of a chosen layout, read
logits rows as NumPy *views* of llama.cpp's output buffer (valid until the next decode), roll
back. No n_ctx x n_vocab score matrix, no copies; nothing here knows about EFT or sampling.
`Context(model, n_ctx=...)` makes one over a `backend.Model`.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import TYPE_CHECKING, Sequence

import llama_cpp  # imported before numpy: see docs/GPU notes (CUDA builds crashed the other way)
import numpy as np

from . import layout
from .errors import ContextOverflowError, LocaleftError
from .layout import Call
from .native import default_threads, trim_heap

if TYPE_CHECKING:  # annotations only: backend.Model knows its contexts by `track`
    from .backend import Adapter, Model

MAX_OUTPUTS = 16
# Tokens per llama.cpp compute pass. On a CPU, 128 prompt-processes as fast as 512 (within 3%
# here) and touches a quarter of the compute buffer (1.5B: 17 vs 66 MiB); GPUs want big passes.
CPU_UBATCH, GPU_UBATCH = 128, 512


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class Context:
    """One KV cache over a model: decode tokens, read logits views, roll back."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_threads_step: int | None = None,
        n_ubatch: int | None = None,
        adapters: Sequence[tuple[Adapter, float]] = (),
    ):
        """n_threads: for batches (prompts, verification); n_threads_step: for single-token
        decode steps (defaults to n_threads; fewer when contexts decode concurrently).
        `adapters`: LoRA adapters of this model and their scales, set for the context's
        life (a fine-tuned model made of the weights plus the adapters)."""
        self.model = model
        self.n_vocab = model.n_vocab
        threads = n_threads or default_threads()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch = min(n_batch, n_ctx)
        # Remote layers (RPC) may run on a CPU there, and one pass is what the watchdog times.
        default_ubatch = GPU_UBATCH if model.offloaded else CPU_UBATCH
        params.n_ubatch = self.n_ubatch = min(n_ubatch or default_ubatch, self.n_batch)
        params.n_seq_max = 1
        # Logits rows one decode may return (speculative verification needs k+1). llama.cpp
        # otherwise reserves compute memory for n_batch rows: 512 x 152k floats = 311 MB.
        params.n_outputs_max = self.max_outputs = MAX_OUTPUTS
        # Both counts start at the step value: a context configured for more batch threads
        # than step threads slowed concurrent steps by ~15% here (idle workers competing for
        # the cores). Batches switch to n_threads_batch for their duration (`decode`).
        self.n_threads_batch = threads
        self.n_threads_step = n_threads_step or threads
        params.n_threads = params.n_threads_batch = self.n_threads_step
        params.no_perf = True
        with model.guard():  # remote layers: their KV cache and compute buffers are allocated there
            self._ctx = llama_cpp.llama_init_from_model(model._model, params)
        if not self._ctx:
            raise LocaleftError(f"cannot create a context of {n_ctx} tokens for {model.path.name}")
        self.adapters = tuple(adapters)
        if self.adapters:
            self._set_adapters()
        self.n_ctx = min(n_ctx, int(llama_cpp.llama_n_ctx(self._ctx)))  # llama.cpp may pad it
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        for i in range(self.n_batch):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        self.tokens: list[int] = []  # what the KV cache holds, in order
        self.calls: list[Call] = []  # the llama_decode calls that computed it (layout.py)
        self._n_out = 0  # logits rows available for the last len(tokens) positions
        self._rows: np.ndarray | None = None  # rows `logits` returns instead of llama.cpp's
        self._kept: tuple[tuple, np.ndarray] | None = None  # the last prefill's row, by layout
        self.n_evaluated = 0  # tokens decoded over this context's life (for KV-reuse stats)
        self._dirty = False
        self._all = False
        model.track(self)
        trim_heap()

    def _set_adapters(self) -> None:
        n = len(self.adapters)
        ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(a._ptr for a, _ in self.adapters))
        scales = (ctypes.c_float * n)(*(s for _, s in self.adapters))
        if llama_cpp.llama_set_adapters_lora(self._ctx, ptrs, n, scales) != 0:
            names = ", ".join(a.path.name for a, _ in self.adapters)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            raise LocaleftError(f"llama.cpp refused LoRA adapters {names} on {self.model.path}")

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            llama_cpp.llama_batch_free(self._batch)
            with self.model.guard():
                llama_cpp.llama_free(self._ctx)
            self._ctx = None

    __del__ = close

    def set_step_threads(self, n: int) -> None:
        """Threads for single-token steps from now on (a CPU layout change)."""
        self.n_threads_step = n
        if not self._all:
            llama_cpp.llama_set_n_threads(self._ctx, n, n)

    @contextlib.contextmanager
    def all_threads(self):
        """Use n_threads_batch for everything meanwhile (a context that usually shares the CPU
        with others, running alone)."""
        if self.n_threads_step == self.n_threads_batch or self._all:
            yield self
            return
        self._all = True
        llama_cpp.llama_set_n_threads(self._ctx, self.n_threads_batch, self.n_threads_batch)
        try:
            yield self
        finally:
            self._all = False
            llama_cpp.llama_set_n_threads(self._ctx, self.n_threads_step, self.n_threads_step)

    def eval(self, tokens: list[int], n_logits: int = 1) -> np.ndarray:
        """Decode `tokens` after what the cache holds; logits of the last n_logits positions.

        Returns a float32 view of shape (n_logits, n_vocab) into llama.cpp's buffer.
        """
        self.decode(tokens, n_logits)
        return self.logits(n_logits)

    def decode(self, tokens: list[int], n_logits: int = 1) -> None:
        """Like eval, without reading the logits (on GPU builds the read waits for the device,
        so decode every context first and read afterwards). One llama_decode call per
        n_ubatch tokens, the logits rows in the last."""
        n = len(tokens)
        if n == 0 or not 0 < n_logits <= min(n, self.n_batch, self.max_outputs):
            raise ValueError(f"bad decode: {n} tokens, {n_logits} logits rows")
        self._check_room(n)
        last = max((n - 1) % self.n_ubatch + 1, n_logits)
        bounds = sorted({*range(0, n - last, self.n_ubatch), n - last, n})
        with self.all_threads() if n > 1 else contextlib.nullcontext():
            for a, b in zip(bounds, bounds[1:]):
                self._decode(tokens[a:b], n_logits if b == n else 0)

    def _check_room(self, n: int) -> None:
        if len(self.tokens) + n > self.n_ctx:
            raise ContextOverflowError(
                f"context full: {len(self.tokens)} + {n} tokens exceed n_ctx={self.n_ctx}"
            )

    def _decode(self, chunk: Sequence[int], n_out: int) -> None:
        """One llama_decode call after what the cache holds, its last n_out rows' logits
        asked for; recorded in `calls`."""
        if self._dirty:  # an interrupted decode may have left cells past our token list
            llama_cpp.llama_memory_seq_rm(self._mem, 0, len(self.tokens), -1)
        m = len(chunk)
        p0 = len(self.tokens)
        self._tok[:m] = chunk
        self._pos[:m] = np.arange(p0, p0 + m)
        self._out[:m] = 0
        if n_out:
            self._out[m - n_out : m] = 1
        self._batch.n_tokens = m
        self._n_out = 0
        self._rows = None
        self._dirty = True
        with self.model.guard():
            rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            llama_cpp.llama_memory_seq_rm(self._mem, 0, p0, -1)
            self._dirty = False
            if rc == 1:
                raise ContextOverflowError(f"no room in the KV cache (n_ctx={self.n_ctx})")
            raise LocaleftError(f"llama_decode failed with code {rc} on {self.model.path.name}")
        self.tokens.extend(chunk)
        self.calls.append((p0, tuple(chunk)))
        self.n_evaluated += m
        self._n_out = n_out
        self._dirty = False

    def logits(self, n: int = 1) -> np.ndarray:
        """The last decode's logits rows (float32 view, shape (n, n_vocab))."""
        if self._rows is not None:  # a prefill's row, kept from before (`bring`)
            if n > len(self._rows):
                raise ValueError(f"only {len(self._rows)} logits rows are available, not {n}")
            return self._rows[len(self._rows) - n :]
        if n > self._n_out:
            raise ValueError(f"only {self._n_out} logits rows are available, not {n}")
        with self.model.guard():  # waits for an asynchronous (GPU, RPC) decode to finish
            ptr = llama_cpp.llama_get_logits(self._ctx)
        rows = np.ctypeslib.as_array(ptr, shape=(self._n_out, self.n_vocab))
        return rows[self._n_out - n :]

    def _has_rows(self, n: int) -> bool:
        """The last call's logits rows are at hand, asked for as n rows (their values depend
        on which rows the call asked for)."""
        return (len(self._rows) if self._rows is not None else self._n_out) == n

    def holds_with_row(self, tokens: list[int]) -> bool:
        """The cache holds exactly `tokens`, the logits row of the last one at hand."""
        return self._has_rows(1) and self.tokens == tokens

    def truncate(self, n: int) -> None:
        """Forget every token after the first n (KV cache removal)."""
        if n >= len(self.tokens):
            return
        self._n_out, self._rows = 0, None
        while self.calls and self.calls[-1][0] >= n:
            self.calls.pop()
        if not llama_cpp.llama_memory_seq_rm(self._mem, 0, n, -1):
            # Some architectures (recurrent) cannot drop a suffix: rebuild the prefix.
            keep = self.tokens[:n]
            llama_cpp.llama_memory_clear(self._mem, True)
            self.tokens, self.calls, self._dirty = [], [], False
            if keep:
                self.eval(keep, 1)
            return
        del self.tokens[n:]

    def bring(self, calls: Sequence[Call], n: int, n_logits: int = 1) -> None:
        """Hold positions [0, n) as computed by exactly these calls (a layout; see layout.py),
        with the logits of the last n_logits positions: reuse what the cache holds that was
        computed by the same calls, decode the rest call by call (Ctrl-C lands between calls,
        keeping each finished one). A prefill's last row is kept aside, so the same prompt
        asked again needs no decode at all."""
        m = layout.matched(self.calls, len(self.tokens), calls, n)
        key = tuple(calls)
        if m == len(calls):
            if n_logits == 0 or (self._has_rows(n_logits) and self.calls[-1] == calls[-1]):
                self.truncate(n)  # (logits rows survive when nothing is dropped)
                return
            if n_logits == 1 and self._kept is not None and self._kept[0] == key:
                self.truncate(n)
                self._rows = self._kept[1]
                return
            m -= 1  # its rows are gone: decode the last call again
        self.truncate(calls[m][0] if m < len(calls) else n)
        self._check_room(sum(len(t) for _, t in calls[m:]))
        with self.all_threads():
            for i in range(m, len(calls)):
                last = i == len(calls) - 1
                self._decode(calls[i][1], n_logits if last else 0)
        self.truncate(n)
        if n_logits == 1 and len(self.tokens) == layout.end(calls[-1]):
            self._kept = (key, self.logits(1).copy())

    def run_call(self, call: Call, n_out: int) -> None:
        """Decode one call of a layout at its position (dropping what the cache holds from
        there), its last n_out rows' logits asked for."""
        start, tokens = call
        self.truncate(start)
        self._check_room(len(tokens))
        with self.all_threads() if len(tokens) > 1 else contextlib.nullcontext():
            self._decode(tokens, n_out)

    def sync(self, tokens: list[int], n_logits: int = 1) -> np.ndarray:
        """Make the cache hold exactly `tokens`, evaluating only what differs from what it holds.

        Returns the logits of the last n_logits positions (reusing the last decode's if they
        already cover them).
        """
        self.sync_decode(tokens, n_logits)
        return self.logits(n_logits)

    def sync_decode(self, tokens: list[int], n_logits: int = 1) -> None:
        """`sync` without reading the logits. What differs is decoded as it comes (one call per
        n_ubatch tokens), not in a canonical layout: speculative decoding's blocks."""
        keep = common_prefix(self.tokens, tokens)
        if keep == len(tokens) == len(self.tokens) and self._has_rows(n_logits):
            return
        keep = min(keep, len(tokens) - n_logits)
        self.truncate(keep)
        self.decode(tokens[keep:], n_logits)
