"""One request at a time, first come first served, in one thread: llama.cpp contexts are not
thread-safe, and generation is blocking CPU work that must not stall the event loop.

A request is a `Ticket`: its work runs in the worker thread and hands events to the event loop
through an asyncio queue (`emit` is thread-safe); `cancel()` (the client went away) drops a
waiting ticket from the line at once, and tells running work to stop at its next token.
Beyond `limit` waiting tickets, `submit` raises `QueueFull` with a retry estimate. `stop()`
(the server shutting down) ends the running work at its next token and answers the waiting.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, Callable

from ..errors import ClosedError


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class Ticket:
    """One request's place in line, and the channel its events come back by."""

    def __init__(self, work: Callable[[Ticket], None], loop: asyncio.AbstractEventLoop):
        self.work = work
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self.on_cancel: Callable[[Ticket], None] = lambda t: None

    def emit(self, event: Any) -> None:
        """From the worker thread: hand an event to the request's coroutine."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self._cancelled.set()

    async def next(self) -> Any:
        return await self._events.get()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        if not self._cancelled.is_set():
            self._cancelled.set()
            self.on_cancel(self)

    def stop(self) -> None:
        """Running work stops at its next token, and ends its events as usual."""
        self._cancelled.set()


class Worker:
    """The single worker thread and its bounded FIFO line."""

    def __init__(self, limit: int):
        self.limit = limit
        self._line: collections.deque[Ticket] = collections.deque()
        self._cond = threading.Condition()
        self._running: Ticket | None = None
        self._closed = False
        self._mean_seconds = 2.0  # a running estimate of one request's time, for Retry-After
        self.counts = {"completed": 0, "cancelled": 0, "rejected": 0}
        self._thread = threading.Thread(target=self._loop, name="localeft-worker", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Ticket], None]) -> Ticket:
        """Queue `work` (called with its ticket in the worker thread); QueueFull if the line
        already holds `limit` requests behind the running one, ClosedError once stopped."""
        ticket = Ticket(work, asyncio.get_running_loop())
        ticket.on_cancel = self._drop
        with self._cond:
            if self._closed:
                raise ClosedError("the server is shutting down")
            if len(self._line) + (self._running is not None) > self.limit:
                self.counts["rejected"] += 1
                wait = self._mean_seconds * (len(self._line) + 1)
                raise QueueFull(max(1, min(600, round(wait))))
            self._line.append(ticket)
            self._cond.notify()
        return ticket

    def state(self) -> dict:
        with self._cond:
            return {
                "running": int(self._running is not None),
                "waiting": len(self._line),
                "limit": self.limit,
                **self.counts,
            }

    def stop(self) -> None:
        """Shutting down: nothing new is taken; waiting requests are answered that the server
        is shutting down; the running one stops at its next token (its client gets what was
        generated, and the end of its reply)."""
        with self._cond:
            self._closed = True
            waiting, running = list(self._line), self._running
            self._line.clear()
            self._cond.notify()
        for t in waiting:
            t.emit(("error", ClosedError("the server is shutting down")))
        if running is not None:
            running.stop()

    def close(self, timeout: float = 5.0) -> None:
        self.stop()
        self._thread.join(timeout)

    def _drop(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self.counts["cancelled"] += 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._line and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                ticket = self._running = self._line.popleft()
            t0 = time.perf_counter()
            try:
                ticket.work(ticket)
            except BaseException as e:  # the work reports its own errors; this is a last net
                ticket.emit(("error", e))
            finally:
                seconds = time.perf_counter() - t0
                with self._cond:
                    self._running = None
                    self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds
                    self.counts["cancelled" if ticket.cancelled else "completed"] += 1
