"""`localeft rpc-server` serves real clients whatever other connections do: one that never
finishes its handshake, or stops halfway through a message, is dropped after a timeout (before,
llama.cpp's server waited on it forever and every client behind it failed with "busy"); a real
client idle between requests is kept."""

from __future__ import annotations

import os
import resource
import socket
import struct
import threading
import time

import pytest
from rpcservers import Server

from localeft import Emulator, rpc
from localeft.rpcgate import Gate

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


def test_a_flood_that_takes_every_file_descriptor_does_not_stop_the_gate():
    """With every descriptor taken, accept() fails (EMFILE); the gate used to stop accepting
    for good then. It waits until the flood is dropped and serves again."""
    inner = socket.create_server(("127.0.0.1", 0))
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    logs: list[str] = []
    gate = Gate(listener, inner.getsockname(), logs.append, hello_timeout=0.5)
    flood = [socket.create_connection(listener.getsockname()) for _ in range(20)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_fds = {int(fd) for fd in os.listdir("/proc/self/fd")}
    highest = max(open_fds)
    holes = [os.open(os.devnull, os.O_RDONLY) for fd in range(highest) if fd not in open_fds]
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 4, hard))  # room for about 3
    try:
        thread = threading.Thread(target=gate.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while not any("cannot accept" in line for line in logs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in holes:
            os.close(fd)
    try:
        assert all(closed_within(s, 5) for s in flood)  # every one accepted, then dropped
        assert thread.is_alive()
        assert "cannot accept connections for now: Too many open files" in logs
        listener.shutdown(socket.SHUT_RDWR)  # what stops it still does
        thread.join(5)
        assert not thread.is_alive()
    finally:
        for s in (*flood, listener, inner):
            s.close()


def test_the_lines_about_many_dropped_connections_are_whole(server):
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    assert all(closed_within(s, 5) for s in idle)
    for s in idle:
        s.close()
    _, out, _ = server.stop()
    ours = [line for line in out.splitlines() if "localeft rpc-server:" in line]
    dropped = [line for line in ours if "dropped" in line]
    assert len(dropped) == 40
    assert all(
        line.startswith("localeft rpc-server: dropped 127.0.0.1:")
        and line.endswith(": no handshake within 1 s")
        for line in dropped
    ), ours
