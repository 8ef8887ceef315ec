"""llama.cpp as a process sees it, apart from any one model: its log (kept off the terminal, its
tail kept for error messages, a load's lines parsed for where the weights went), the backend's
one-time start, Ctrl-C during a load, C-level stderr, and what this machine offers (cores,
free memory, a GPU).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import sys
import tempfile
from typing import Callable

import llama_cpp  # imported before numpy: see docs/GPU notes (CUDA builds crashed the other way)

from . import rpc
from .interrupts import deferred_interrupts

_LOG_TAIL: collections.deque[str] = collections.deque(maxlen=20)
_LOG_SINK: list[str] | None = None  # every line, while a load records where it went
_BUFFER_LINE = re.compile(r"load_tensors:\s+(\S.*?) model buffer size =\s+([0-9.]+) MiB")
_LAYER_LINE = re.compile(r"load_tensors: layer\s+(\d+) assigned to device (\S+?),")
_initialised = False


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Keep llama.cpp's chatter off the terminal; remember the tail for error messages."""
    line = text.decode("utf-8", "replace")
    _LOG_TAIL.append(line)
    if _LOG_SINK is not None:
        _LOG_SINK.append(line)
    if os.environ.get("LOCALEFT_LLAMA_LOG"):
        print(line, end="", file=sys.stderr)


def init_backend() -> None:
    global _initialised
    if not _initialised:
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _initialised = True


try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc
except (AttributeError, OSError):
    _malloc_trim = None


def trim_heap() -> None:
    """Hand back to the OS the heap that loading freed (llama.cpp's GGUF metadata, graph
    reservation): ~7 MiB per model that glibc would otherwise keep."""
    if _malloc_trim is not None:
        _malloc_trim(0)


@contextlib.contextmanager
def captured_stderr():
    """Collect what C code prints to file descriptor 2 meanwhile (llama.cpp's grammar parser
    writes its errors there, not to the log): yields a list that holds the text afterwards."""
    out: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded, CliRunner)
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def llama_log_tail_clear() -> None:
    _LOG_TAIL.clear()


def last_llama_error(anything: bool = False) -> str:
    """The most telling recent llama.cpp log line, for an error message (`anything`: the last
    line, whatever it says)."""
    for line in reversed(_LOG_TAIL):
        if anything or "error" in line.lower() or "failed" in line.lower():
            return line.strip()
    return ""


class LoadInterrupt:
    """Ctrl-C during a model load. llama.cpp calls our progress callback while it reads the
    weights; a KeyboardInterrupt raised inside a ctypes callback is only printed ("Exception
    ignored ...") and the load goes on. So while loading, SIGINT is only recorded, the callback
    returns false (llama.cpp aborts the load), and the interrupt is raised afterwards."""

    def __init__(self, on_progress: Callable[[], None] | None = None):
        self.hits: list = []

        @llama_cpp.llama_progress_callback
        def progress(value: float, user_data: ctypes.c_void_p) -> bool:
            if on_progress is not None:
                on_progress()
            return not self.hits

        self.callback = progress

    @contextlib.contextmanager
    def watching(self):
        with deferred_interrupts() as self.hits:
            yield


def unguarded(patience: float = 1.0) -> contextlib.nullcontext:
    return contextlib.nullcontext()


class LoadLog:
    """Where llama.cpp's load log says a model went: MiB of weights per buffer ("CPU_Mapped",
    "RPC0[10.0.0.2:50052]", ...) and the device of each layer (n_layer: the output layer)."""

    def __init__(self):
        self.buffers: dict[str, float] = {}
        self.layers: dict[int, str] = {}

    @contextlib.contextmanager
    def recording(self, enabled: bool = True):
        global _LOG_SINK
        if not enabled:
            yield
            return
        _LOG_SINK = lines = []
        try:
            yield
        finally:
            _LOG_SINK = None
            for line in lines:
                if m := _BUFFER_LINE.search(line):
                    name = m.group(1)
                    self.buffers[name] = self.buffers.get(name, 0.0) + float(m.group(2))
                elif m := _LAYER_LINE.search(line):
                    self.layers[int(m.group(1))] = m.group(2)


def default_threads(from_env: bool = True) -> int:
    """$LOCALEFT_THREADS, else all cores this process may use (llama-cpp-python's default of
    cores/2 halves CPU speed)."""
    if from_env and os.environ.get("LOCALEFT_THREADS", "").isdigit():
        return max(1, int(os.environ["LOCALEFT_THREADS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping (Linux MemAvailable; the
    physical memory elsewhere), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def supports_gpu_offload() -> bool:
    """A GPU of this machine's own. (llama_supports_gpu_offload() also counts the RPC backend,
    which every build of scripts/install.sh has, GPU or not.)"""
    if not llama_cpp.llama_supports_gpu_offload():
        return False
    return rpc.local_gpu() if rpc.available() else True
