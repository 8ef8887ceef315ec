"""A network link in user space: a TCP proxy in front of a server whose traffic is delayed,
optionally rate-limited and counted, and which can freeze (stop delivering, connections kept
open: a hung server, a pulled cable) or cut (reset every connection: a reboot, a dropped link).

Tests use it on loopback; benchmarks/net_bench.py runs it as a process inside a network
namespace for the latency part of a profile (the rate there is the kernel's tbf), driven by
lines on its stdin:

    python tests/linkproxy.py LISTEN_HOST:PORT=TARGET_HOST:PORT [...]
    stdin: "delay SECONDS" (one way) | "freeze" | "thaw" | "cut"; stdout: "ready" when listening

What it does not emulate: TCP's own round trip (the kernel between here and the client sees a
short path, so slow start and window limits of a long path are missing) and packet loss.
"""

from __future__ import annotations

import collections
import socket
import struct
import sys
import threading
import time

CHUNK = 64 << 10


class LinkProxy:
    """Listen on `listen` and forward every connection to `target`. `delay`: seconds added to
    each direction (a round trip gets twice that); `rate`: bytes per second per direction
    (None: no limit)."""

    def __init__(self, target, listen=("127.0.0.1", 0), delay: float = 0.0, rate=None):
        self.target = target
        self.delay, self.rate = delay, rate
        self.frozen = False
        self.up = self.down = 0  # bytes delivered to the server / to the client
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._server = socket.create_server(listen)
        self.address = self._server.getsockname()[:2]
        self.endpoint = f"{self.address[0]}:{self.address[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="linkproxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
                server = socket.create_connection(self.target)
            except OSError:
                if self._closed:
                    return
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks += [client, server]
            Pump(self, client, server, "up").start()
            Pump(self, server, client, "down").start()

    def freeze(self) -> None:
        """Deliver nothing from now on (what arrives is dropped); connections stay open."""
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    def cut(self) -> None:
        """Reset every connection now (RST to both sides)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:  # SHUT_RD wakes the pump blocked in recv (close alone would not, on Linux)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Pump:
    """One direction of one connection: a reader that stamps each chunk with its delivery time
    and a writer that delivers it then, no faster than the rate."""

    def __init__(self, link: LinkProxy, src: socket.socket, dst: socket.socket, way: str):
        self.link, self.src, self.dst, self.way = link, src, dst, way
        self.queue: collections.deque = collections.deque()
        self.ready = threading.Condition()
        self.eof = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while chunk := self.src.recv(CHUNK):
                if self.link.frozen:
                    continue
                with self.ready:
                    self.queue.append((time.monotonic() + self.link.delay, chunk))
                    self.ready.notify()
        except OSError:
            pass
        with self.ready:
            self.eof = True
            self.ready.notify()

    def _write(self) -> None:
        free = 0.0  # when the rate-limited line is next free
        try:
            while True:
                with self.ready:
                    while not self.queue and not self.eof:
                        self.ready.wait()
                    if not self.queue:
                        break
                    due, chunk = self.queue.popleft()
                start = max(due, free)
                if self.link.rate:
                    free = start + len(chunk) / self.link.rate
                    start = free  # the last byte leaves when the line has carried them all
                wait = start - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if self.link.frozen:
                    continue
                self.dst.sendall(chunk)
                with self.link._lock:
                    setattr(self.link, self.way, getattr(self.link, self.way) + len(chunk))
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> None:
    proxies = []
    for spec in argv:
        listen, _, target = spec.partition("=")
        proxies.append(LinkProxy(_endpoint(target), _endpoint(listen)))
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        for p in proxies:
            if words[:1] == ["delay"]:
                p.delay = float(words[1])
            elif words[:1] in (["freeze"], ["thaw"], ["cut"]):
                getattr(p, words[0])()
        print("ok", flush=True)
    for p in proxies:
        p.close()


if __name__ == "__main__":
    main(sys.argv[1:])
