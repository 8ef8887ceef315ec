"""`localeft serve`'s engine in a supervised worker process (as Ollama runs its llama.cpp
runners): llama.cpp ends the process that holds a lost RPC server's connection, so that process
is not the server's.

`Supervisor` starts engineproc.main in a child process and restarts it with backoff whenever it
ends; `RemoteEmulator` is what the app serves instead of an Emulator: the same calls (`stream`,
`prompt_tokens`, `score`, `n_ctx`, `beta`, `models`), forwarded to the child, with the
tokenizers loaded here (vocabulary only) so the tokenizer endpoints never need the child. When
the child ends, every call waiting on it, and every request in line, fails at once with
`EngineUnavailable` naming the cause (the app answers 503 with Retry-After); `/health` says
"degraded" until a new child has loaded.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from concurrent.futures import Future
from typing import Any

from ..backend import Model
from ..errors import EngineUnavailable, LocaleftError
from ..generation import Stream
from . import engineproc

BACKOFF = (1.0, 30.0)  # seconds before the first restart, and the most between two


class Channel:
    """Calls into one child process; every pending call fails when it ends."""

    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.ids = itertools.count(1)
        self.pending: dict[int, Future] = {}
        self.lock = threading.Lock()
        self.ended: str | None = None  # why, once the child is gone
        self.fault: str | None = None  # what it said before it went
        self.done = threading.Event()

    def call(self, op: str, *args) -> Any:
        future: Future = Future()
        with self.lock:
            if self.ended is not None:
                raise EngineUnavailable(self.ended)
            mid = next(self.ids)
            self.pending[mid] = future
            try:
                self.conn.send((mid, op, args))
            except (OSError, ValueError):
                self.pending.pop(mid, None)
                raise EngineUnavailable(self.ended or "the engine process is gone") from None
        return future.result()

    def read(self) -> None:
        """The replies, until the child is gone (its connection closes)."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "reply":
                _, mid, ok, value = message
                with self.lock:
                    future = self.pending.pop(mid, None)
                if future is not None and ok:
                    future.set_result(value)
                elif future is not None:
                    future.set_exception(value)
            elif message[0] == "fault" and message[1]:
                self.fault = _unended(message[1])
        self.process.join(5)
        code = self.process.exitcode
        why = self.fault or f"the engine process ended (exit status {code})"
        with self.lock:
            self.ended = why
            pending, self.pending = self.pending, {}
        for future in pending.values():
            future.set_exception(EngineUnavailable(f"{why}; the engine is restarting"))
        self.done.set()

    def close(self) -> None:
        with self.lock:
            if self.ended is None:
                try:
                    self.conn.send((0, "exit", ()))
                except (OSError, ValueError):
                    pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _unended(reason: str) -> str:
    """rpc.fault's reason without its ending (the process it ends is not the server)."""
    ends = ("; llama.cpp cannot continue without it, so the process ends", "; the process ends")
    for tail in ends:
        if reason.endswith(tail):
            return reason[: -len(tail)]
    return reason


class Supervisor:
    """The engine's child process: started, watched, restarted with exponential backoff."""

    def __init__(self, kwargs: dict, backoff: tuple[float, float] = BACKOFF):
        self.kwargs, self.backoff = kwargs, backoff
        self.ctx = multiprocessing.get_context("spawn")  # llama.cpp's threads do not fork
        self.channel: Channel | None = None
        self.info: dict = {}
        self.status = "starting"
        self.reason: str | None = None
        self.restarts = 0
        self.next_try: float | None = None  # monotonic time of the next restart
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> dict:
        """Start the first child and wait until it has loaded: its load error as a
        LocaleftError (the command line reports it and exits), else what it serves."""
        channel, failure = self._spawn()
        if channel is None:
            raise LocaleftError(failure)
        self._up(channel)
        threading.Thread(target=self._watch, name="engine-supervisor", daemon=True).start()
        return self.info

    def _spawn(self) -> tuple[Channel | None, str | None]:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(
            target=engineproc.main, args=(child, self.kwargs), name="localeft-engine", daemon=True
        )
        process.start()
        child.close()
        try:
            first = parent.recv()
        except (EOFError, OSError):
            process.join(5)
            return None, f"the engine process ended while loading (exit status {process.exitcode})"
        if first[0] != "ready":
            process.join(5)
            return None, first[1]
        self.info = first[1]
        channel = Channel(process, parent)
        threading.Thread(target=channel.read, name="engine-replies", daemon=True).start()
        return channel, None

    def _up(self, channel: Channel) -> None:
        with self.lock:
            self.channel, self.status, self.reason, self.next_try = channel, "ok", None, None

    def _watch(self) -> None:
        while not self.closed.is_set():
            channel = self.channel
            channel.done.wait()
            if self.closed.is_set():
                return
            wait = self.backoff[0]
            with self.lock:
                self.status, self.reason = "degraded", channel.ended
            while not self.closed.is_set():
                with self.lock:
                    self.next_try = time.monotonic() + wait
                if self.closed.wait(wait):
                    return
                new, failure = self._spawn()
                if new is not None and self.closed.is_set():
                    new.close()
                    return
                if new is not None:
                    self.restarts += 1
                    self._up(new)
                    break
                with self.lock:
                    self.reason = f"{channel.ended}; restarting failed: {failure}"
                wait = min(wait * 2, self.backoff[1])

    def current(self) -> Channel:
        """The live child's channel, or EngineUnavailable saying why there is none."""
        with self.lock:
            if self.status == "ok" and self.channel is not None:
                return self.channel
            retry = None
            if self.next_try is not None:
                retry = max(1.0, self.next_try - time.monotonic())
            why = self.reason or "the engine is starting"
        when = f"; next try in {retry:.0f} s" if retry is not None else ""
        raise EngineUnavailable(f"the engine is restarting: {why}{when}", retry_after=retry)

    def state(self) -> dict:
        with self.lock:
            out = {"status": self.status, "restarts": self.restarts, "reason": self.reason}
            if self.channel is not None and self.status == "ok":
                out["pid"] = self.channel.process.pid
            if self.next_try is not None and self.status != "ok":
                out["retry_in"] = round(max(0.0, self.next_try - time.monotonic()), 1)
        return out

    def close(self) -> None:
        self.closed.set()
        if self.channel is not None:
            self.channel.close()


class RemoteStream(Stream):
    """A Stream whose pieces are generated in the child (one call per piece)."""

    def __init__(self, channel: Channel, sid: int, tool_family: str | None):
        super().__init__()
        self.channel, self.sid, self.tool_family = channel, sid, tool_family
        self.finished = False

    def __next__(self) -> str:
        if self.finished:
            raise StopIteration
        piece, tokens, records, generation = self.channel.call("next", self.sid)
        self.tokens += tokens
        self.records += records
        if piece is None:
            self.finished, self.generation = True, generation
            raise StopIteration
        return piece

    def close(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.generation = self.channel.call("close", self.sid)
        except EngineUnavailable:
            pass


class _ChildPrompts:
    """`Emulator.prompts` as far as the app uses it: the child measured its tokens at load."""

    def measure_tokens(self) -> None:
        pass


class RemoteEmulator:
    """What the app needs of an Emulator, over the supervised child."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.prompts = _ChildPrompts()
        info = supervisor.info
        self.n_ctx, self.beta = info["n_ctx"], info["beta"]
        self.placement, self.rpc_output_choice = info["placement"], info["rpc_output"]
        self.adapters, self.expert_weights = info["adapters"], info["expert_weights"]
        self.weights, self.repack = info["weights"], info["repack"]
        self.base_prompt = info["base_prompt"]
        heads: dict[str, Model] = {}
        self.models = {
            label: heads.setdefault(path, Model(path, vocab_only=True))
            for label, path in info["files"].items()
        }

    def stream(self, req) -> RemoteStream:
        channel = self.supervisor.current()
        sid, family = channel.call("stream", req)
        return RemoteStream(channel, sid, family)

    def prompt_tokens(self, *args, **kwargs):
        return self.supervisor.current().call("call", "prompt_tokens", args, kwargs)

    def score(self, *args, **kwargs):
        return self.supervisor.current().call("call", "score", args, kwargs)

    def health(self) -> dict:
        return self.supervisor.state()

    def close(self) -> None:
        self.supervisor.close()
        for m in set(self.models.values()):
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
