"""The door of `localeft rpc-server`: a forwarder between the network and llama.cpp's own RPC
server (which listens on a private loopback port), so that a connection that never finishes
its handshake, or stops in the middle of a message, cannot hold the server.

llama.cpp's server serves one client at a time and reads with no timeout: a client that sends
3 bytes and waits holds it forever, and every real client behind it waits too. The gate reads a
connection's first message (llama.cpp's HELLO) itself, within `hello_timeout`; only then does
the connection take its turn at the server. During a session it follows the client's message
framing (| command: 1 byte | size: 8 bytes | payload |) and drops the session when a message
stalls halfway for `stall_timeout` seconds; between messages a client may stay idle as long as
it likes (a loaded model waiting for the next request). TCP keepalive finds clients that
vanished. What the protocol still trusts is in docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from typing import Callable

HELLO_TIMEOUT = 10.0  # seconds for a new connection's handshake message
STALL_TIMEOUT = 30.0  # seconds a message may stall halfway
MAX_HELLO = 4096  # bytes: a first message larger than this is not llama.cpp's HELLO
HEADER = 9  # command byte + 8-byte size
_BUFFER = 1 << 20
SCARCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # accept again a bit later


class Gate:
    """Accept on `listen`, forward to llama.cpp's server at `inner`, one session at a time.
    `log` gets one line per dropped connection."""

    def __init__(
        self,
        listen: socket.socket,
        inner: tuple[str, int],
        log: Callable[[str], None],
        hello_timeout: float = HELLO_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
    ):
        self.listen, self.inner, self.log = listen, inner, log
        self.hello_timeout, self.stall_timeout = hello_timeout, stall_timeout
        self.turn = threading.Lock()  # the session in progress

    def run(self) -> None:
        """Accept until the listening socket is closed. Any other failure to accept passes: a
        connection reset before it was accepted, or every file descriptor taken by a flood of
        connections (they are dropped within the handshake timeout)."""
        starved = False
        while True:
            try:
                conn, peer = self.listen.accept()
            except OSError as e:
                if self.listen.fileno() < 0 or e.errno in (errno.EBADF, errno.EINVAL):
                    return
                if e.errno in SCARCE:
                    if not starved:
                        self.log(f"cannot accept connections for now: {e.strerror}")
                    starved = True
                    time.sleep(0.1)
                continue
            starved = False
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer) -> None:
        who = f"{peer[0]}:{peer[1]}"
        with conn:
            _keepalive(conn)
            try:
                hello = self._handshake(conn)
            except socket.timeout:
                self.log(f"dropped {who}: no handshake within {self.hello_timeout:g} s")
                return
            except (OSError, ValueError) as e:
                self.log(f"dropped {who}: {e}")
                return
            with self.turn:
                try:
                    inner = socket.create_connection(self.inner)
                except OSError as e:
                    self.log(f"dropped {who}: llama.cpp's server did not accept ({e})")
                    return
                with inner:
                    self._session(conn, inner, hello, who)

    def _handshake(self, conn: socket.socket) -> bytes:
        conn.settimeout(self.hello_timeout)
        header = _recv_exact(conn, HEADER)
        size = struct.unpack_from("<Q", header, 1)[0]
        if size > MAX_HELLO:
            raise ValueError(f"a first message of {size} bytes is not an RPC handshake")
        return header + _recv_exact(conn, size)

    def _session(self, conn: socket.socket, inner: socket.socket, hello: bytes, who: str) -> None:
        for s in (conn, inner):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        inner.sendall(hello)
        back = threading.Thread(target=_pipe, args=(inner, conn), daemon=True)
        back.start()
        try:
            self._forward(conn, inner)
        except socket.timeout:
            self.log(f"dropped {who}: a message stalled for {self.stall_timeout:g} s")
        except OSError:
            pass
        finally:
            for s in (conn, inner):  # ends the other direction; llama.cpp frees the session
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            back.join()

    def _forward(self, conn: socket.socket, inner: socket.socket) -> None:
        """Client to server, following the framing: no timeout between messages, the stall
        timeout within one."""
        buf = bytearray(_BUFFER)
        view = memoryview(buf)
        header = bytearray()
        left = 0  # payload bytes still due in the current message
        while True:
            conn.settimeout(None if not left and not header else self.stall_timeout)
            n = conn.recv_into(buf)
            if not n:
                return
            inner.sendall(view[:n])
            i = 0
            while i < n:
                if left:
                    take = min(left, n - i)
                    left -= take
                    i += take
                else:
                    take = min(HEADER - len(header), n - i)
                    header += view[i : i + take]
                    i += take
                    if len(header) == HEADER:
                        left = struct.unpack_from("<Q", header, 1)[0]
                        header.clear()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Server to client, as it comes."""
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before its handshake")
        data += chunk
    return bytes(data)


def _keepalive(conn: socket.socket) -> None:
    """Notice a client whose machine vanished (no FIN, no RST) within about two minutes."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, name):
            conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
