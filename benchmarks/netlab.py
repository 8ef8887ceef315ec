"""Emulated network links for the RPC benchmarks: two network namespaces of our own (the client's
and the servers'), joined by a veth pair, rate-limited by the kernel's token bucket (tc tbf) on
both ends, and delayed by a user-space proxy in the servers' namespace (tests/linkproxy.py;
this kernel has no netem). The host's interfaces and routes are never touched: both veth ends
live in the namespaces, which `close` deletes. Needs root, `ip` and `tc`.

    lab = Lab()                         # namespaces lft<pid>c / lft<pid>s, 10.77.0.1 <-> .2
    lab.server_cmd([...])               # a command line that runs in the servers' namespace
    port = lab.expose(8080)             # the proxy: 10.77.0.2:port -> 127.0.0.1:8080 there
    lab.shape(PROFILES["wifi"])         # rate both ways, round trip
    lab.client_cmd([...])               # a command line that runs in the client's namespace
    lab.close()

Profiles are (rate in bit/s or None, round trip in seconds); the delay is half the round trip
each way. What the proxy cannot emulate (TCP's own view of a long path: slow start, window
limits) is in tests/linkproxy.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    name: str
    rate: float | None  # bit/s, None: unshaped
    rtt: float  # seconds

    def describe(self) -> str:
        rate = f"{self.rate / 1e6:g} Mbit/s" if self.rate else "unshaped"
        return f"{self.name} ({rate}, {self.rtt * 1000:g} ms)"


PROFILES = {
    "loopback": Profile("loopback", None, 0.0),
    "lan": Profile("lan", 1e9, 0.0002),
    "wifi": Profile("wifi", 200e6, 0.002),
    "far": Profile("far", 50e6, 0.015),
}


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Lab:
    """The two namespaces, the link between them and the delay proxy."""

    def __init__(self, tag: str | None = None, attach: tuple[str, str] | None = None):
        """New namespaces (deleted by `close`), or `attach` to (client_ns, server_ns) that
        another process made (and deletes)."""
        tag = tag or str(os.getpid())
        self.client_ns, self.server_ns = attach or (f"lft{tag}c", f"lft{tag}s")
        self.client_ip, self.server_ip = "10.77.0.1", "10.77.0.2"
        self._proxy: subprocess.Popen | None = None
        self._exposed: list[str] = []
        self._shaped = False
        self._owned = attach is None
        if attach:
            return
        try:
            c, s = self.client_ns, self.server_ns
            _run("ip", "netns", "add", c)
            _run("ip", "netns", "add", s)
            _run("ip", "-n", c, "link", "add", "lftc", "type", "veth", "peer", "name", "lfts",
                 "netns", s)  # fmt: skip
            _run("ip", "-n", c, "addr", "add", f"{self.client_ip}/24", "dev", "lftc")
            _run("ip", "-n", s, "addr", "add", f"{self.server_ip}/24", "dev", "lfts")
            for ns, dev in ((c, "lftc"), (s, "lfts")):
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def server_cmd(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *cmd]

    def client_cmd(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *cmd]

    def expose(self, *ports: int) -> list[str]:
        """Start the delay proxy in the servers' namespace: server_ip:port -> 127.0.0.1:port
        there, for each port; returns the endpoints the client connects to. Call once."""
        specs = [f"{self.server_ip}:{p}=127.0.0.1:{p}" for p in ports]
        script = str(ROOT / "tests" / "linkproxy.py")
        self._proxy = subprocess.Popen(
            self.server_cmd([sys.executable, script, *specs]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("the delay proxy did not start")
        self._exposed = [f"{self.server_ip}:{p}" for p in ports]
        return self._exposed

    def shape(self, profile: Profile) -> None:
        """Rate-limit both directions of the veth pair (tbf) and set the proxy's delay."""
        for ns, dev in ((self.client_ns, "lftc"), (self.server_ns, "lfts")):
            if self._shaped:
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root")
            if profile.rate:
                burst = max(16 << 10, int(profile.rate / 8 / 1000))  # >= 1 ms at line rate
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                     "rate", f"{int(profile.rate)}bit", "burst", str(burst),
                     "latency", "100ms")  # fmt: skip
        self._shaped = bool(profile.rate)
        if self._proxy is not None:
            self._proxy.stdin.write(f"delay {profile.rtt / 2}\n")
            self._proxy.stdin.flush()
            assert self._proxy.stdout.readline().strip() == "ok"

    def close(self) -> None:
        if self._proxy is not None and self._proxy.poll() is None:
            self._proxy.stdin.close()
            try:
                self._proxy.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proxy.kill()
        if self._owned:
            for ns in (self.client_ns, self.server_ns):
                subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
