"""One llama.cpp model file and its contexts, over llama-cpp-python's ctypes bindings.

`Model` owns the weights and the vocabulary of one GGUF file; `Context` owns one KV cache over a
model. A context decodes a batch of tokens asking for logits at its last `n` positions and hands
them out as a NumPy *view* of llama.cpp's output buffer (valid until its next decode): no
n_ctx x n_vocab score matrix, no copies. Nothing here knows about EFT or sampling.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import weakref
from pathlib import Path
from typing import Sequence

import llama_cpp  # imported before numpy: see docs/GPU notes (CUDA builds crashed the other way)
import numpy as np

from . import layout, outputcost
from .errors import ContextOverflowError, LocaleftError, ModelFileError
from .layout import Call
from .native import LoadInterrupt, LoadLog, default_threads, init_backend, last_llama_error
from .native import llama_log_tail_clear, supports_gpu_offload, trim_heap, unguarded

MAX_OUTPUTS = 16
# A remote load may go this many RPC timeouts between llama.cpp's progress reports (one per
# tensor): a 70B's 860 MB output tensor takes 70 s over 100 Mbit/s.
LOAD_PATIENCE = 10
# Tokens per llama.cpp compute pass. On a CPU, 128 prompt-processes as fast as 512 (within 3%
# here) and touches a quarter of the compute buffer (1.5B: 17 vs 66 MiB); GPUs want big passes.
CPU_UBATCH, GPU_UBATCH = 128, 512


class _Override(ctypes.Structure):
    """struct llama_model_tensor_buft_override: tensors whose name matches go to that buffer
    type (a NULL pattern ends the list)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class Model:
    """The weights and vocabulary of one GGUF file (loaded once)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_gpu_layers: int = 0,
        repack: bool = True,
        mmap: bool | None = None,
        vocab_only: bool = False,
        devices: Sequence[int] = (),
        tensor_split: Sequence[float] = (),
        output_here: bool = False,
        watchdog=None,
    ):
        """`repack`: llama.cpp may copy quantised weights into a faster CPU layout. With `mmap`
        the file's pages would stay mapped beside that copy (measured: peak RSS 1.5x the file),
        so by default a repacking model is read into memory instead (1.0x, same speed) and a
        non-repacking one is mmap'd. `vocab_only`: metadata and tokenizer, no weights (checks
        before the real load). Ctrl-C aborts a load promptly (KeyboardInterrupt).

        `devices` (ggml_backend_dev_t handles, such as remote ones from rpc.connect) replaces
        llama.cpp's choice of devices: the last `n_gpu_layers` layers go there, split in
        proportion to `tensor_split` (one weight per device), the rest stay on this CPU;
        `output_here` keeps the output layer and final norm on this CPU all the same (a tensor
        override: then a hidden state crosses the network per row instead of the logits).
        `watchdog` (rpc.Watchdog: `guard()`, `touch()`) bounds every call that may wait on
        those devices; the load (minutes for tens of GB over a network) gets LOAD_PATIENCE
        times the bound between llama.cpp's progress reports."""
        init_backend()
        self.path = Path(path)
        check_gguf_file(self.path)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = -1 if n_gpu_layers < 0 else n_gpu_layers
        self.remote = bool(devices) and not vocab_only
        # On a GPU of this machine (what picks GPU settings). Remote layers do not count: the
        # servers may be CPUs, and this machine computes its share of them on its CPU.
        self.offloaded = (
            n_gpu_layers != 0 and not vocab_only and not self.remote and supports_gpu_offload()
        )
        self.guard = watchdog.guard if watchdog is not None else unguarded
        if devices:  # llama.cpp copies both lists during the load
            self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.addressof(self._devices)
        if tensor_split:
            self._split = (ctypes.c_float * llama_cpp.llama_max_devices())(*tensor_split)
            params.tensor_split = self._split
        if output_here:
            here = _Override(outputcost.OVERRIDE, outputcost.cpu_buffer_type())
            self._overrides = (_Override * 2)(here, _Override(None, None))
            params.tensor_buft_overrides = ctypes.addressof(self._overrides)
        mmap = not repack if mmap is None else mmap
        params.load_mode = (
            llama_cpp.LLAMA_LOAD_MODE_MMAP if mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        )
        params.use_extra_bufts = repack
        params.vocab_only = vocab_only
        interrupt = LoadInterrupt(watchdog.touch if watchdog is not None else None)
        params.progress_callback = interrupt.callback
        llama_log_tail_clear()
        self.load_log = LoadLog()
        with (
            interrupt.watching(),
            self.load_log.recording(),
            self.guard(LOAD_PATIENCE),
        ):
            self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            detail = last_llama_error()
            if self.remote:
                raise ModelFileError(
                    f"cannot load {self.path} across the RPC servers"
                    + (f": {detail}" if detail else " (out of memory there?)")
                )
            raise ModelFileError(
                f"cannot load {self.path}: llama.cpp rejected it"
                + (f" ({detail})" if detail else " (corrupt or truncated GGUF?)")
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self._model))
        if not self.n_ctx_train:  # a vocab-only load skips the hyperparameters
            self.n_ctx_train = self._meta_int("context_length") or 0
        self.size_bytes = int(llama_cpp.llama_model_size(self._model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        # llama.cpp names the buffer of the weights it repacked CPU_REPACK (a numerics fact: the
        # repacked kernels round differently from the file's layout)
        self.repacked = any("REPACK" in name for name in self.load_log.buffers)
        self._contexts: list[weakref.ref] = []
        self._adapters: dict[Path, Adapter] = {}
        self._pieces: dict[int, bytes] = {}
        trim_heap()

    def __repr__(self) -> str:
        return f"Model({self.path.name!r}, n_vocab={self.n_vocab})"

    def close(self) -> None:
        """Free the weights, after every context still open on them and every adapter."""
        for ref in getattr(self, "_contexts", ()):
            ctx = ref()
            if ctx is not None:
                ctx.close()
        for adapter in getattr(self, "_adapters", {}).values():
            adapter.close()
        if getattr(self, "_model", None):
            with self.guard():  # remote weights: freeing them is a call to the server
                llama_cpp.llama_model_free(self._model)
            self._model = None

    __del__ = close

    # --- vocabulary -------------------------------------------------------------------------
    def tokenize(
        self, text: str, *, add_bos: bool | None = None, special: bool = True
    ) -> list[int]:
        """Text to token ids; `special` parses control tokens like <|im_start|> in the text."""
        data = text.encode("utf-8")
        add = self.add_bos if add_bos is None else add_bos
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, add, special)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, add, special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes a token contributes to the output (control tokens render as nothing; with
        `special`, as their text: what a prompt that parsed them had written)."""
        cached = self._pieces.get(token) if not special else None
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            cached = buf.raw[:n]
            if not special:
                self._pieces[token] = cached
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def token_text(self, token: int) -> bytes:
        """A token's vocabulary text (for comparing tokenizers)."""
        return llama_cpp.llama_vocab_get_text(self._vocab, token) or b""

    @property
    def vocab_ptr(self):
        """llama.cpp's vocabulary handle (for samplers such as the grammar)."""
        return self._vocab

    @property
    def bos_id(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    def token_attr(self, token: int) -> int:
        """llama.cpp's attribute bits of a token (LLAMA_TOKEN_ATTR_*)."""
        return int(llama_cpp.llama_vocab_get_attr(self._vocab, token))

    @staticmethod
    def is_special_attr(attr: int) -> bool:
        """Control and unknown tokens: what only parsed markup may produce."""
        return bool(
            attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)
        )

    @staticmethod
    def lstrips(attr: int) -> bool:
        return bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP)

    @staticmethod
    def rstrips(attr: int) -> bool:
        return bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)

    def unused_ids(self, n: int | None = None) -> np.ndarray:
        """Ids below n that the vocabulary marks unused (padding such as Qwen2.5's ids past its
        real tokens): never to be generated."""
        n = self.n_vocab if n is None else min(n, self.n_vocab)
        get, vocab = llama_cpp.llama_vocab_get_attr, self._vocab
        unused = llama_cpp.LLAMA_TOKEN_ATTR_UNUSED
        return np.array([i for i in range(n) if get(vocab, i) & unused], dtype=np.int64)

    def is_eog(self, token: int) -> bool:
        """End of generation, by the vocabulary's own test (eos, eot, <|im_end|>, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def special_text(self, which: str) -> str:
        """Text of the bos or eos token ('' if the vocabulary has none)."""
        fn = {"bos": llama_cpp.llama_vocab_bos, "eos": llama_cpp.llama_vocab_eos}[which]
        tok = fn(self._vocab)
        if tok < 0:
            return ""
        return (llama_cpp.llama_vocab_get_text(self._vocab, tok) or b"").decode("utf-8", "replace")

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None."""
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", "replace")

    def _meta_int(self, key: str) -> int | None:
        arch = self.meta("general.architecture")
        value = self.meta(f"{arch}.{key}")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def kv_bytes(self, n_ctx: int) -> int:
        """Bytes of one context's F16 KV cache for n_ctx tokens, from the GGUF metadata (an
        estimate: 0 where the metadata lacks the shapes)."""
        n_layer = self._meta_int("block_count") or 0
        n_embd = self._meta_int("embedding_length") or 0
        heads = self._meta_int("attention.head_count") or 1
        kv_heads = self._meta_int("attention.head_count_kv") or heads
        k_len = self._meta_int("attention.key_length") or n_embd // heads
        v_len = self._meta_int("attention.value_length") or n_embd // heads
        return 2 * n_layer * n_ctx * kv_heads * (k_len + v_len)

    @property
    def n_layer(self) -> int:
        """Transformer blocks (0 where the metadata lacks them)."""
        return self._meta_int("block_count") or 0

    @property
    def n_embd(self) -> int:
        """Width of the hidden state (0 where the metadata lacks it)."""
        return self._meta_int("embedding_length") or 0

    @property
    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    def adapter(self, path: str | os.PathLike) -> Adapter:
        """The LoRA adapter at `path`, loaded for this model once (its tensors sit beside the
        weights; any number of contexts apply it, each with its own scale). Load adapters
        before the contexts that use them."""
        key = Path(path)
        if key not in self._adapters:
            self._adapters[key] = Adapter(self, key)
        return self._adapters[key]

    def new_context(
        self,
        n_ctx: int,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_threads_step: int | None = None,
        n_ubatch: int | None = None,
        adapters: Sequence[tuple[Adapter, float]] = (),
    ) -> Context:
        ctx = Context(
            self,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_batch=n_batch,
            n_threads_step=n_threads_step,
            n_ubatch=n_ubatch,
            adapters=adapters,
        )
        self._contexts.append(weakref.ref(ctx))
        return ctx


class Adapter:
    """One LoRA adapter GGUF loaded for one model (llama_adapter_lora_init). llama.cpp adds
    `scale * alpha / rank * B(A x)` beside each adapted weight's product in the contexts
    that set it; the model's own weights are never changed."""

    def __init__(self, model: Model, path: Path):
        self.model, self.path = model, path
        llama_log_tail_clear()
        self._ptr = llama_cpp.llama_adapter_lora_init(model._model, str(path).encode())
        if not self._ptr:
            detail = last_llama_error()
            raise ModelFileError(
                f"cannot apply LoRA adapter {path} to {model.path}"
                + (f": {detail}" if detail else "")
            )

    def close(self) -> None:
        """Free the adapter (before its model, after the contexts that use it)."""
        if getattr(self, "_ptr", None):
            llama_cpp.llama_adapter_lora_free(self._ptr)
            self._ptr = None


class Context:
    """One KV cache over a model: decode tokens, read logits views, roll back."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_threads: int | None,
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


def check_gguf_file(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file (bad magic {magic!r})")
