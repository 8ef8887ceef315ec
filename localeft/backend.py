"""One llama.cpp model file, over llama-cpp-python's ctypes bindings: `Model` owns the
weights (loaded here or partly on RPC servers) and the vocabulary of one GGUF file, `Adapter`
a LoRA adapter loaded for it; its KV caches are `context.Context`s. Nothing here knows about
EFT or sampling.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from pathlib import Path
from typing import Sequence

import llama_cpp  # imported before numpy: see docs/GPU notes (CUDA builds crashed the other way)
import numpy as np

from . import outputcost
from .errors import ModelFileError
from .native import LoadInterrupt, LoadLog, init_backend, last_llama_error
from .native import llama_log_tail_clear, supports_gpu_offload, trim_heap, unguarded

# A remote load may go this many RPC timeouts between llama.cpp's progress reports (one per
# tensor): a 70B's 860 MB output tensor takes 70 s over 100 Mbit/s.
LOAD_PATIENCE = 10


class _Override(ctypes.Structure):
    """struct llama_model_tensor_buft_override: tensors whose name matches go to that buffer
    type (a NULL pattern ends the list)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


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

    def track(self, ctx) -> None:
        """A context over this model (context.Context registers itself): closed before the
        model frees its weights."""
        self._contexts.append(weakref.ref(ctx))


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
