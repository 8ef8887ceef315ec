"""llama.cpp's RPC backend (ggml-rpc) through ctypes: a model's layers on other machines.

An `rpc-server` process (`serve`) lends its machine's backend (CPU, or its GPU) to one client at
a time; a client registers each server (`connect`) and passes the remote devices to a model load
(`backend.Model(devices=...)`). The weights and the KV cache of remote layers live on the servers,
only activations cross the network. The library exists when llama.cpp was built with
-DGGML_RPC=ON (scripts/install.sh does): `available()`.

Faults: llama.cpp aborts the whole process when a server dies or the connection breaks (ggml-rpc
checks every reply with GGML_ABORT), and waits forever on a server that stops answering without
closing the connection (no socket timeout). So a client checks each endpoint with its own short
handshake before loading (a one-line error instead of an abort), turns llama.cpp's abort into a
one-line message (`on_abort`, with whatever the program registered with `at_fault`, such as where
the chat history is), and bounds every remote call with a `Watchdog`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NoReturn, Sequence

from .errors import InvalidParameterError, RpcError

DEFAULT_PORT = 50052
DEFAULT_TIMEOUT = 60.0  # seconds one remote call may take before the client gives up
MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS, and llama.cpp's device limit
PROTOCOL = (7, 0)  # RPC_PROTO_MAJOR/MINOR_VERSION of the llama.cpp this package wraps
_HELLO, _CAPS = 14, 24  # RPC_CMD_HELLO; RPC_CONN_CAPS_SIZE (transport capabilities, zero: TCP)
CPU, GPU, IGPU, ACCEL = 0, 1, 2, 3  # enum ggml_backend_dev_type

_libs: dict[str, ctypes.CDLL | None] = {}


def _lib(name: str) -> ctypes.CDLL | None:
    """One of llama.cpp's shared libraries: the very copy the running llama_cpp loaded. (A wheel
    holds libggml-base.so, .so.0 and .so.0.25.3 as three files, not links: opening another one
    would load a second instance with its own globals, such as the abort callback.)"""
    if name not in _libs:
        import llama_cpp  # here, not at the top: the CLI as a client never loads llama.cpp
        from llama_cpp._ctypes_extensions import load_shared_library

        llama_cpp.llama_backend_init()  # idempotent: llama.cpp's libraries are all loaded
        path = _loaded_path(name)
        try:
            _libs[name] = (
                ctypes.CDLL(path)
                if path
                else load_shared_library(name, llama_cpp.llama_cpp._base_path)
            )
        except (OSError, RuntimeError):
            _libs[name] = None
    return _libs[name]


def _loaded_path(name: str) -> str | None:
    """The file of lib<name> mapped into this process, where the platform says (Linux, macOS)."""
    pattern = re.compile(rf"(^|[/\\])(lib)?{re.escape(name)}(\.[0-9]+)*\.(so|dylib)(\.[0-9]+)*$")
    paths: list[str] = []
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError), open("/proc/self/maps") as f:
            paths = [line.split(None, 5)[-1].strip() for line in f if "/" in line]
    elif sys.platform == "darwin":
        with contextlib.suppress(OSError, AttributeError):
            dyld = ctypes.CDLL(None)
            dyld._dyld_get_image_name.restype = ctypes.c_char_p
            paths = [dyld._dyld_get_image_name(i).decode() for i in range(dyld._dyld_image_count())]
    return next((p for p in paths if pattern.search(p)), None)


def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


class _Ggml:
    """The few ggml functions the RPC plumbing needs, declared once."""

    def __init__(self):
        base, ggml = _lib("ggml-base"), _lib("ggml")
        p, size = ctypes.c_void_p, ctypes.c_size_t
        self.reg_dev_count = _declare(base, "ggml_backend_reg_dev_count", size, p)
        self.reg_dev_get = _declare(base, "ggml_backend_reg_dev_get", p, p, size)
        self.dev_name = _declare(base, "ggml_backend_dev_name", ctypes.c_char_p, p)
        self.dev_description = _declare(base, "ggml_backend_dev_description", ctypes.c_char_p, p)
        self.dev_type = _declare(base, "ggml_backend_dev_type", ctypes.c_int, p)
        self.dev_memory = _declare(
            base, "ggml_backend_dev_memory", None, p, ctypes.POINTER(size), ctypes.POINTER(size)
        )
        self.set_abort_callback = _declare(base, "ggml_set_abort_callback", p, p)
        self.dev_count = _declare(ggml, "ggml_backend_dev_count", size)
        self.dev_get = _declare(ggml, "ggml_backend_dev_get", p, size)

    def memory(self, dev: int) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def devices(self) -> list[int]:
        """This process's own devices (RPC servers are never registered globally)."""
        import llama_cpp

        llama_cpp.llama_backend_init()  # loads the backends once
        return [self.dev_get(i) for i in range(self.dev_count())]


_ggml: _Ggml | None = None


def ggml() -> _Ggml:
    global _ggml
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def available() -> bool:
    """Whether llama.cpp was built with its RPC backend (libggml-rpc)."""
    return _lib("ggml-rpc") is not None


def require() -> None:
    if not available():
        raise RpcError(
            "this llama-cpp-python was built without llama.cpp's RPC backend; reinstall with "
            "scripts/install.sh (it builds with -DGGML_RPC=ON)"
        )


def _rpc() -> ctypes.CDLL:
    require()
    return _lib("ggml-rpc")


def local_gpu() -> bool:
    """Whether this machine has a GPU backend of its own. (llama_supports_gpu_offload() is true
    in every RPC build, GPU or not, since remote devices count as GPUs.)"""
    g = ggml()
    return any(g.dev_type(d) in (GPU, IGPU) for d in g.devices())


# --- endpoints -----------------------------------------------------------------------------------
def parse_endpoint(text) -> tuple[str, int]:
    """ "HOST:PORT" -> (host, port); llama.cpp's RPC transport is IPv4 only."""
    if not isinstance(text, str):
        raise InvalidParameterError(f"an RPC endpoint must be a 'HOST:PORT' string, got {text!r}")
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidParameterError(f"RPC endpoint {text!r} is not HOST:PORT")
    if ":" in host or host.startswith("["):
        raise InvalidParameterError(
            f"RPC endpoint {text!r}: llama.cpp's RPC backend speaks IPv4 only; give an IPv4 "
            "address or a host name"
        )
    if any(c.isspace() for c in host):
        raise InvalidParameterError(f"RPC endpoint {text!r} has spaces in its host")
    p = int(port)
    if not 1 <= p <= 65535:
        raise InvalidParameterError(f"RPC endpoint {text!r}: port must be 1-65535")
    return host, p


def endpoints(values: Sequence[str]) -> list[str]:
    """Validated, normalised "host:port" strings, each once."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidParameterError(f"rpc must be a list of 'HOST:PORT' strings, got {values!r}")
    out = [f"{h}:{p}" for h, p in map(parse_endpoint, values)]
    twice = {e for e in out if out.count(e) > 1}
    if twice:
        raise InvalidParameterError(f"RPC endpoint {sorted(twice)[0]} is given twice")
    if len(out) > MAX_SERVERS:
        raise InvalidParameterError(f"at most {MAX_SERVERS} RPC servers, got {len(out)}")
    return out


def probe(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """Connect and exchange llama.cpp's HELLO (the protocol version), with a timeout: an
    unreachable, foreign, incompatible or busy server is a one-line RpcError here, where
    llama.cpp would abort the process or wait forever. Returns the server's version."""
    host, port = parse_endpoint(endpoint)
    try:
        addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except (socket.gaierror, UnicodeError):
        raise RpcError(f"cannot reach RPC server {endpoint}: unknown host {host!r}") from None
    try:
        sock = socket.create_connection(addr, timeout=min(timeout, 3.0))
    except OSError as e:
        why = "connection refused" if isinstance(e, ConnectionRefusedError) else _why(e)
        raise RpcError(
            f"cannot reach RPC server {endpoint}: {why} (is `localeft rpc-server` running "
            "there, on that port?)"
        ) from None
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(struct.pack("<BQ", _HELLO, _CAPS) + bytes(_CAPS))
            size = struct.unpack("<Q", _recv(sock, 8))[0]
            if size != 4 + _CAPS:
                raise ConnectionError("unexpected reply")
            major, minor, patch = _recv(sock, size)[:3]
        except socket.timeout:
            raise RpcError(
                f"RPC server {endpoint} accepted the connection but did not answer within "
                f"{timeout:g} s (busy with another client? an rpc-server serves one at a time)"
            ) from None
        except OSError as e:
            raise RpcError(
                f"{endpoint} did not answer as a llama.cpp RPC server ({_why(e)}); a server of "
                "another llama.cpp version may close the connection"
            ) from None
    if major != PROTOCOL[0] or minor > PROTOCOL[1]:
        raise RpcError(
            f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}, this client "
            f"{PROTOCOL[0]}.{PROTOCOL[1]}: install the same llama-cpp-python on both machines"
        )
    return major, minor, patch


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


@dataclass(frozen=True)
class Device:
    """One remote device as llama.cpp registered it."""

    handle: int  # ggml_backend_dev_t
    endpoint: str
    index: int  # the device's number on its server
    name: str  # llama.cpp's name in this process: RPC0, RPC1, ...
    label: str  # how the user knows it: the endpoint (/index where a server has several)
    free: int  # bytes the server reports free
    total: int

    @property
    def buffer(self) -> str:
        """The name of llama.cpp's buffers on this device (as its load log prints them)."""
        return f"RPC{self.index}[{self.endpoint}]"


def connect(endpoint: str) -> list[Device]:
    """Register a server with llama.cpp (ggml_backend_rpc_add_server) and return its devices.
    Registration is per process and for good (llama.cpp keeps it); the devices are not added to
    the global device list, so only a model given them explicitly uses them."""
    add = _declare(_rpc(), "ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
    on_abort([endpoint])
    reg = add(endpoint.encode())
    if not reg:
        raise RpcError(f"RPC server {endpoint} offers no device")
    g = ggml()
    n = g.reg_dev_count(reg)
    devices = []
    for i in range(n):
        dev = g.reg_dev_get(reg, i)
        free, total = g.memory(dev)
        label = endpoint if n == 1 else f"{endpoint}/{i}"
        devices.append(Device(dev, endpoint, i, g.dev_name(dev).decode(), label, free, total))
    return devices


# --- faults --------------------------------------------------------------------------------------
_fault_notes: list[Callable[[], str | None]] = []
_known: list[str] = []
_abort_cb = None
last_fault: str | None = None  # the reason `fault` is ending the process with (for its notes)


def at_fault(note: Callable[[], str | None]) -> Callable[[], None]:
    """Register a line to print (or None) when an RPC fault ends the process, such as where the
    work so far is saved. Returns a function that unregisters it."""
    _fault_notes.append(note)
    return lambda: _fault_notes.remove(note) if note in _fault_notes else None


def fault(reason: str) -> NoReturn:
    """End the process with a one-line error (llama.cpp cannot go on without its server): the
    streamed text is flushed first, then the registered notes."""
    global last_fault
    last_fault = reason
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    lines = [f"\nlocaleft: error: {reason}"]
    for note in list(_fault_notes):
        with contextlib.suppress(Exception):
            text = note()
            if text:
                lines.append(f"localeft: {text}")
    with contextlib.suppress(Exception):
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
    os._exit(1)


def _gone(within: float = 1.0) -> list[str]:
    """The known endpoints that refuse connections, trying for `within` seconds (a server
    killed a moment ago may still be closing its listening socket). A connection that waits
    proves nothing: a live server busy with its client queues it, or drops it when the queue
    is full."""
    gone: list[str] = []
    deadline = time.monotonic() + within
    while True:
        for e in _known:
            if e in gone:
                continue
            try:
                socket.create_connection(parse_endpoint(e), timeout=0.2).close()
            except socket.timeout:
                pass
            except OSError:
                gone.append(e)
        if gone or time.monotonic() > deadline:
            return gone
        time.sleep(0.05)


def on_abort(endpoints: Sequence[str]) -> None:
    """Turn llama.cpp's abort (GGML_ABORT: a dead server, a broken connection) into `fault`:
    one line naming the lost server instead of a backtrace and SIGABRT."""
    global _abort_cb
    _known.extend(e for e in endpoints if e not in _known)
    if _abort_cb is not None:
        return

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def callback(message: bytes) -> None:
        text = message.decode("utf-8", "replace").strip()
        detail = text.rsplit(": ", 1)[-1] if ": " in text else text
        if "RPC" not in text:
            fault(f"llama.cpp stopped the process: {text}")
        gone = _gone()
        lost = f"RPC server {', '.join(gone)}" if gone else f"an RPC server ({', '.join(_known)})"
        fault(
            f"lost the connection to {lost} ({detail}); llama.cpp cannot continue without it, "
            "so the process ends"
        )

    _abort_cb = callback
    ggml().set_abort_callback(ctypes.cast(callback, ctypes.c_void_p))


class Watchdog:
    """Bounds calls into llama.cpp that wait on RPC servers: llama.cpp's sockets have no
    timeout, so a server that stops answering without closing the connection (a hung process, a
    network that drops packets) would block the client forever. A call that takes longer than
    `timeout` seconds ends the process with `fault`; a load, `patience` times that without
    progress."""

    def __init__(self, timeout: float, endpoints: Sequence[str]):
        self.timeout = timeout
        self.endpoints = list(endpoints)
        self._deadlines: dict[object, float] = {}
        self._spans: dict[object, float] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, patience: float = 1.0) -> Iterator[None]:
        """Bound the block to `patience` x timeout seconds (renewed by `touch`)."""
        key, span = object(), self.timeout * patience
        with self._cond:
            self._spans[key] = span
            self._deadlines[key] = time.monotonic() + span
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="rpc-watchdog")
                self._thread.daemon = True
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadlines.pop(key, None)
                self._spans.pop(key, None)

    def touch(self) -> None:
        """A sign of life (llama.cpp's load progress): every guarded block gets its full time
        again."""
        with self._cond:
            now = time.monotonic()
            for key in self._deadlines:
                self._deadlines[key] = now + self._spans[key]

    def _watch(self) -> None:
        with self._cond:
            while True:
                if not self._deadlines:
                    self._cond.wait()
                    continue
                left = min(self._deadlines.values()) - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                break
        fault(
            f"no answer from RPC server {', '.join(self.endpoints)} in time (--rpc-timeout "
            f"{self.timeout:g} s): hung, or the network is down; the process ends"
        )
