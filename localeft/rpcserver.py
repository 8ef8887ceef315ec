"""`localeft rpc-server`: lend this machine's backend (its GPU, else the CPU) to a localeft on
another machine, through llama.cpp's own RPC server (ggml_backend_rpc_start_server)."""

from __future__ import annotations

import ctypes
import ipaddress
import signal
import threading
from typing import Sequence

from .rpc import ACCEL, CPU, _declare, _rpc, ggml


def serving_devices() -> list[int]:
    """What an rpc-server lends: the accelerators (GPUs) if any, else the CPU (as llama.cpp's
    own rpc-server chooses)."""
    g = ggml()
    devs = g.devices()
    gpus = [d for d in devs if g.dev_type(d) not in (CPU, ACCEL)]
    return gpus or [d for d in devs if g.dev_type(d) == CPU][:1]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str, port: int, threads: int, cache: str | None) -> str:
    """Serve this machine's backend on host:port until SIGINT or SIGTERM; returns why it
    stopped ("signal" or llama.cpp's failure). llama.cpp's blocking server runs in a daemon
    thread (a ctypes call never sees Python's signal handlers); the main thread waits."""
    start = _declare(
        _rpc(),
        "ggml_backend_rpc_start_server",
        None,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    )
    devs = serving_devices()
    array = (ctypes.c_void_p * len(devs))(*devs)
    stop = threading.Event()
    why = ["signal"]

    def run() -> None:
        where = f"{host}:{port}".encode()
        start(where, cache.encode() if cache else None, threads, len(devs), array)
        why[0] = "llama.cpp's server stopped (see its message above)"
        stop.set()

    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        threading.Thread(target=run, name="rpc-server", daemon=True).start()
        while not stop.wait(1.0):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return why[0]


def describe_devices(devs: Sequence[int]) -> list[str]:
    g = ggml()
    out = []
    for d in devs:
        free, total = g.memory(d)
        out.append(
            f"{g.dev_name(d).decode()} ({g.dev_description(d).decode()}, "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
        )
    return out
