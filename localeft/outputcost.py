"""What the large base's output layer weighs and costs on this machine: its tensors from the GGUF
header, and the time of its matrix-vector product here (a ggml micro-benchmark of the same
quantisation on a slice of the rows). `rpc_output="auto"` weighs that time against the network
time the logits would take (placement.output_here).

Why the output layer: with the base on RPC servers, the server that computes it sends back
n_vocab floats per row (152k x 4 B = 608 KB for Qwen2.5); keeping it here sends n_embd floats
instead (14 KB for a 7B), at the price of computing it here.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

from .rpc import _declare, _lib

GGML_TYPE_F32 = 0
# The output layer's tensors (llama.cpp's names), and the embedding it falls back to when tied.
OUTPUT, NORM, TIED = "output.weight", "output_norm.weight", "token_embd.weight"
# llama.cpp's regex_search over tensor names: the output projection, its norm, and the copy of
# the token embedding a tied model uses as its output (the input one stays here anyway).
OVERRIDE = rb"^(output|output_norm)\.(weight|bias)$|^token_embd\.weight$"
# The micro-benchmark's slice of the matrix: well beyond the caches (a 24 MB slice measured a
# 7B's 447 MB layer at 15 ms here, 256 MB at 35 ms, all of it at 40 ms).
SLICE_BYTES = 256 << 20


@dataclass(frozen=True)
class OutputLayer:
    """The output projection of a GGUF file: ggml type, bytes, and its shape (n_embd x rows)."""

    type: int
    nbytes: int
    n_embd: int
    rows: int


class _Gguf:
    def __init__(self):
        base = _lib("ggml-base")
        p, i64 = ctypes.c_void_p, ctypes.c_int64

        class Params(ctypes.Structure):
            _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

        self.Params = Params
        self.init = _declare(base, "gguf_init_from_file", p, ctypes.c_char_p, Params)
        self.free = _declare(base, "gguf_free", None, p)
        self.find_tensor = _declare(base, "gguf_find_tensor", i64, p, ctypes.c_char_p)
        self.tensor_type = _declare(base, "gguf_get_tensor_type", ctypes.c_int, p, i64)
        self.tensor_size = _declare(base, "gguf_get_tensor_size", ctypes.c_size_t, p, i64)
        self.row_size = _declare(base, "ggml_row_size", ctypes.c_size_t, ctypes.c_int, i64)


def output_layer(path: str | os.PathLike, n_embd: int) -> OutputLayer | None:
    """The output projection's type and size from the file's header (the token embedding where
    the model ties them); None where the header cannot be read."""
    g = _Gguf()
    ctx = g.init(os.fsencode(path), g.Params(True, None))
    if not ctx:
        return None
    try:
        for name in (OUTPUT, TIED):
            i = g.find_tensor(ctx, name.encode())
            if i >= 0:
                kind, size = g.tensor_type(ctx, i), g.tensor_size(ctx, i)
                row = g.row_size(kind, n_embd)
                return OutputLayer(kind, size, n_embd, size // row if row else 0)
        return None
    finally:
        g.free(ctx)


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


def matvec_seconds(layer: OutputLayer, threads: int, reps: int = 3) -> float:
    """Seconds one matrix-vector product of the whole layer takes on this CPU with `threads`
    (the best of `reps` over a slice of its rows, scaled up): the time keeping the output layer
    here adds to a token."""
    base, cpu = _lib("ggml-base"), _lib("ggml-cpu")
    p, i64, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    init = _declare(base, "ggml_init", p, _InitParams)
    free = _declare(base, "ggml_free", None, p)
    new_2d = _declare(base, "ggml_new_tensor_2d", p, p, ctypes.c_int, i64, i64)
    mul_mat = _declare(base, "ggml_mul_mat", p, p, p, p)
    new_graph = _declare(base, "ggml_new_graph", p, p)
    expand = _declare(base, "ggml_build_forward_expand", None, p, p)
    overhead = _declare(base, "ggml_graph_overhead", size)
    tensor_overhead = _declare(base, "ggml_tensor_overhead", size)
    get_data = _declare(base, "ggml_get_data", p, p)
    nbytes = _declare(base, "ggml_nbytes", size, p)
    compute = _declare(cpu, "ggml_graph_compute_with_ctx", ctypes.c_int, p, p, ctypes.c_int)
    row = layer.nbytes // max(layer.rows, 1)
    rows = max(1, min(layer.rows, SLICE_BYTES // max(row, 1)))
    mem = rows * row + 16 * layer.n_embd * 4 + overhead() + 8 * tensor_overhead() + (4 << 20)
    ctx = init(_InitParams(mem, None, False))
    if not ctx:
        raise MemoryError("ggml_init failed")
    try:
        w = new_2d(ctx, layer.type, layer.n_embd, rows)
        x = new_2d(ctx, GGML_TYPE_F32, layer.n_embd, 1)
        for t in (w, x):  # zeros: no denormals or NaNs to slow the arithmetic down
            ctypes.memset(get_data(t), 0, nbytes(t))
        graph = new_graph(ctx)
        expand(graph, mul_mat(ctx, w, x))
        compute(ctx, graph, threads)  # warm-up: pages touched, threads started
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            compute(ctx, graph, threads)
            best = min(best, time.perf_counter() - t0)
    finally:
        free(ctx)
    return best * layer.rows / rows


def cpu_buffer_type() -> int:
    """ggml's plain CPU buffer type: a tensor override to it keeps a tensor on this machine
    (llama.cpp then picks the repacked CPU layout where that applies)."""
    fn = _declare(_lib("ggml-base"), "ggml_backend_cpu_buffer_type", ctypes.c_void_p)
    return fn()
