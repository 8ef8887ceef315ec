"""`localeft rpc-server`: lend this machine's backend (its GPU, else the CPU) to a localeft on
another machine, through llama.cpp's own RPC server (ggml_backend_rpc_start_server) on a private
loopback port behind a gate (rpcgate: handshake and stall timeouts)."""

from __future__ import annotations

import ctypes
import ipaddress
import signal
import socket
import sys
import threading
import time
from typing import Sequence

from .rpc import ACCEL, CPU, _declare, _rpc, ggml
from .rpcgate import HELLO_TIMEOUT, STALL_TIMEOUT, Gate


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


def listen(host: str, port: int) -> socket.socket:
    """The public listening socket (OSError if the address is taken or not ours)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
    except OSError:
        s.close()
        raise
    return s


def _private_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    sock: socket.socket,
    threads: int,
    cache: str | None,
    hello_timeout: float = HELLO_TIMEOUT,
    stall_timeout: float = STALL_TIMEOUT,
    gate: bool = True,
) -> str:
    """Serve this machine's backend on the listening `sock` until SIGINT or SIGTERM; returns
    why it stopped ("signal" or llama.cpp's failure). llama.cpp's blocking server runs in a
    daemon thread (a ctypes call never sees Python's signal handlers) on a private loopback port
    behind the gate (`gate=False`: on `sock`'s address itself, for measuring what the gate
    costs); the main thread waits."""
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

    if gate:
        inner = ("127.0.0.1", _private_port())
    else:
        inner = sock.getsockname()[:2]
        sock.close()

    def run() -> None:
        where = f"{inner[0]}:{inner[1]}".encode()
        start(where, cache.encode() if cache else None, threads, len(devs), array)
        why[0] = "llama.cpp's server stopped (see its message above)"
        stop.set()

    def log(line: str) -> None:  # from the gate's threads: one write per line, never mixed
        with log_lock:
            sys.stdout.write(f"localeft rpc-server: {line}\n")
            sys.stdout.flush()

    log_lock = threading.Lock()

    handlers = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in handlers}
    try:
        threading.Thread(target=run, name="rpc-server", daemon=True).start()
        if gate:
            _wait_listening(inner, stop)  # else the first clients are dropped, not served
            door = Gate(sock, inner, log, hello_timeout, stall_timeout)
            threading.Thread(target=door.run, name="rpc-gate", daemon=True).start()
        while not stop.wait(1.0):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
        ctypes.CDLL(None).fflush(None)  # llama.cpp's own lines (C stdio) before ours that follow
        sys.stdout.flush()
    return why[0]


def _wait_listening(address: tuple, stop: threading.Event, seconds: float = 30.0) -> None:
    """Until llama.cpp's server accepts connections at `address` (or it stopped)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)


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
