"""The network between this machine and an RPC server, measured at connect: round trip and
bandwidth from the server to here, with llama.cpp's own protocol (the server does nothing it
would not do for a model load: allocate a buffer, clear it, hand it back, free it).

Why: which way the output layer goes (`rpc_output="auto"`) depends on how long the logits take
to come back, and `check`/`-v` show the link so a slow one is no surprise. Commands and layouts
are ggml-rpc's of protocol 7 (rpc.PROTOCOL); anything unexpected is a `LinkError`, and the
caller goes on without a measurement.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from .rpc import _CAPS, _HELLO, PROTOCOL, parse_endpoint

ALLOC_BUFFER, GET_ALIGNMENT, BUFFER_GET_BASE, FREE_BUFFER, BUFFER_CLEAR = 0, 1, 3, 4, 5
GET_TENSOR = 8
GGML_F32 = 0
# struct rpc_tensor (packed): id, type, buffer, ne[4], nb[4], op, op_params[16], flags,
# src[10], view_src, view_offs, data, name[64], padding
_TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
FIRST, LARGEST = 64 << 10, 16 << 20  # bytes of the first and the largest read
ENOUGH = 0.1  # seconds: a read this long measures the bandwidth (not the round trip, TCP's start)


class LinkError(OSError):
    """The measurement failed (the caller carries on without it)."""


@dataclass(frozen=True)
class Link:
    """A measured link: best round trip (seconds) and bytes per second from the server here."""

    rtt: float
    down: float

    def seconds(self, nbytes: float) -> float:
        """Time for the server to send `nbytes` here (one reply)."""
        return self.rtt + nbytes / self.down

    def describe(self) -> str:
        return f"{self.rtt * 1000:.2f} ms round trip, {self.down * 8 / 1e6:,.0f} Mbit/s to here"

    def as_dict(self) -> dict:
        return {"rtt_ms": round(self.rtt * 1000, 3), "down_mbit_s": round(self.down * 8 / 1e6, 1)}


class _Conn:
    def __init__(self, endpoint: str, timeout: float):
        self.sock = socket.create_connection(parse_endpoint(endpoint), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, cmd: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)

    def call(self, cmd: int, payload: bytes, want: int | None = None) -> memoryview:
        self.send(cmd, payload)
        size = struct.unpack("<Q", self.recv(8))[0]
        if want is not None and size != want:
            raise LinkError(f"unexpected reply of {size} bytes to command {cmd}")
        return self.recv(size)

    def recv(self, n: int) -> memoryview:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise LinkError("the server closed the connection")
            got += k
        return view


def measure(endpoint: str, timeout: float = 5.0, budget: float = 2.0) -> Link:
    """Round trip (best of 5 small requests) and bandwidth to here (reads of growing size, until
    one takes ENOUGH seconds or LARGEST bytes or the `budget` is spent). A LinkError if the
    server does not answer as expected."""
    try:
        conn = _Conn(endpoint, timeout)
    except OSError as e:
        raise LinkError(str(e)) from None
    try:
        with conn.sock:
            return _measure(conn, budget)
    except (OSError, struct.error) as e:
        raise LinkError(str(e) or type(e).__name__) from None


def _measure(conn: _Conn, budget: float) -> Link:
    hello = conn.call(_HELLO, bytes(_CAPS), 4 + _CAPS)
    if hello[0] != PROTOCOL[0]:
        raise LinkError(f"protocol {hello[0]}")
    rtt = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        conn.call(GET_ALIGNMENT, struct.pack("<I", 0), 8)
        rtt = min(rtt, time.perf_counter() - t)
    ptr, size = struct.unpack("<QQ", conn.call(ALLOC_BUFFER, struct.pack("<IQ", 0, LARGEST), 16))
    if not ptr or size < LARGEST:
        raise LinkError("the server would not lend a buffer")
    try:
        base = struct.unpack("<Q", conn.call(BUFFER_GET_BASE, struct.pack("<Q", ptr), 8))[0]
        conn.send(BUFFER_CLEAR, struct.pack("<QB", ptr, 0))  # one-way: what we read is zeros
        n, deadline, down = FIRST, time.perf_counter() + budget, 0.0
        while True:
            tensor = _TENSOR.pack(0, GGML_F32, ptr, n // 4, 1, 1, 1, 4, n, n, n, 0, *[0] * 16,
                                  0, *[0] * 10, 0, 0, base, b"localeft-link", 0)  # fmt: skip
            t = time.perf_counter()
            conn.call(GET_TENSOR, tensor + struct.pack("<QQ", 0, n), n)
            took = time.perf_counter() - t
            down = n / max(took - rtt, took / 2, 1e-9)
            if took >= ENOUGH or n >= LARGEST or time.perf_counter() > deadline:
                break
            n *= 2
    finally:
        conn.send(FREE_BUFFER, struct.pack("<Q", ptr))  # one-way
    return Link(rtt, down)
