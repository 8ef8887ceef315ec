"""`localeft rpc-server` serves real clients whatever other connections do: one that never
finishes its handshake, or stops halfway through a message, is dropped after a timeout (before,
llama.cpp's server waited on it forever and every client behind it failed with "busy"); a real
client idle between requests is kept."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from rpcservers import Server

from localeft import Emulator, rpc

HELLO = struct.pack("<BQ", 14, 24) + bytes(24)


@pytest.fixture
def server():
    s = Server("--hello-timeout", "1", "--stall-timeout", "1")
    yield s
    s.stop()


def trio_kw(tiny, **kw) -> dict:
    roles = ("large_base", "small_ft", "small_base")
    return {**{r: getattr(tiny, r) for r in roles}, "n_ctx": 256, **kw}


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes this connection within `seconds` (EOF or reset)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_connection_that_sends_three_bytes_does_not_hold_the_server(tiny, server):
    idle = socket.create_connection(("127.0.0.1", server.port))
    idle.sendall(HELLO[:3])
    t = time.monotonic()
    with Emulator(**trio_kw(tiny, rpc=[server.endpoint], rpc_output="remote")) as em:
        assert em.generate("the cat", max_tokens=4, mode="base").stats.generated_tokens == 4
    assert time.monotonic() - t < 5  # no "busy": the real client never waited for it
    assert closed_within(idle, 5)
    idle.close()
    code, out, _ = server.stop()
    assert code == 0
    assert "localeft rpc-server: dropped 127.0.0.1:" in out
    assert ": no handshake within 1 s" in out


def test_a_client_that_stops_halfway_through_a_message_is_dropped_for_the_next(tiny, server):
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(HELLO)
    assert len(stalled.recv(8 + 28)) > 0  # its turn: the server answered the handshake
    stalled.sendall(struct.pack("<BQ", 11, 4) + b"\x00")  # GET_DEVICE_MEMORY, 1 of 4 bytes
    rpc.probe(server.endpoint, timeout=5.0)  # the next client is served once it is dropped
    assert closed_within(stalled, 1)
    stalled.close()
    _, out, _ = server.stop()
    assert ": a message stalled for 1 s" in out


def test_a_real_client_idle_between_requests_keeps_its_server(tiny, server):
    with Emulator(**trio_kw(tiny, rpc=[server.endpoint], rpc_output="remote")) as em:
        first = em.generate("the cat", max_tokens=6, mode="base", speculative=False)
        time.sleep(2.5)  # longer than both timeouts
        again = em.generate("the cat", max_tokens=6, mode="base", speculative=False)
    assert again.tokens == first.tokens
    assert server.proc.poll() is None
