"""Real `localeft rpc-server` subprocesses on free loopback ports, for the RPC tests."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from localeft import rpc
from localeft.errors import RpcError

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, endpoint: str, seconds: float = 60.0) -> bool:
    """Whether the RPC server `proc` answers llama.cpp's handshake at `endpoint` within
    `seconds` (False at once when it has ended)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            rpc.probe(endpoint, timeout=2.0)
            return True
        except RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


class Server:
    """One `localeft rpc-server` subprocess on a free loopback port."""

    def __init__(self, *options: str):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "localeft", "rpc-server", "--port", str(self.port), "-t", "1"]
        cmd += options
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if not wait_ready(self.proc, self.endpoint):
            self.stop()
            raise AssertionError(f"no rpc-server: {self.proc.stderr.read()}")

    def stop(self) -> tuple[int, str, str]:
        """SIGINT (what Ctrl-C sends), then SIGKILL if it is not gone within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


def tcp_counters(ports: set[int]) -> dict[tuple[int, int], tuple[int, int]]:
    """(fd, port) -> (bytes sent and acked, bytes received) of this process's TCP sockets
    connected to those ports: llama.cpp's RPC connections (Linux TCP_INFO)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with s:
            try:
                port = s.getpeername()[1]
            except (OSError, IndexError, TypeError):
                continue
            if port in ports:
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                out[(fd, port)] = struct.unpack_from("<QQ", info, 120)
    return out


def traffic(before: dict, after: dict) -> tuple[int, int]:
    """Bytes (sent, received) between two `tcp_counters`."""
    sent = sum(after[k][0] - before[k][0] for k in after if k in before)
    received = sum(after[k][1] - before[k][1] for k in after if k in before)
    return sent, received


def trio_kw(tiny, **kw) -> dict:
    """The tiny trio's Emulator arguments at a context of 256, and `kw`."""
    roles = ("large_base", "small_ft", "small_base")
    return {**{r: getattr(tiny, r) for r in roles}, "n_ctx": 256, **kw}
