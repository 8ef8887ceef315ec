"""uvicorn as `localeft serve` runs it: with the connection limits of limits.py, and signals
that stop generating.

uvicorn alone, on SIGTERM or Ctrl-C, waits for every open response to finish, and a reply may
run to the whole context (25 s and more on a CPU; a second SIGTERM did nothing). Here the first
signal also stops the running generation at its next token: its client gets the reply so far,
then a final chunk with a finish reason ("stop"; `localeft.finish_reason`: "interrupted") and
[DONE]; waiting requests are answered 503. Open connections get GRACE_SECONDS to finish. A
second signal exits at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Callable

import uvicorn

from . import limits

GRACE_SECONDS = 5


def config(app, *, host: str, port: int, log_level: str = "warning", **limit_kw) -> uvicorn.Config:
    """uvicorn's settings for `app`: the connection limits (`limit_kw`: limits.protocol's) and
    a bounded graceful shutdown."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "info",
        http=limits.protocol(**limit_kw),
        timeout_graceful_shutdown=GRACE_SECONDS,
    )


class Serving(uvicorn.Server):
    """A uvicorn server whose first stop signal also calls `on_stop` (on the event loop), and
    whose second ends the process at once."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]):
        super().__init__(config)
        self.on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:  # the second signal: no more waiting
            sys.stderr.write("localeft: stopped at once (second signal)\n")
            sys.stderr.flush()
            os._exit(128 + sig)
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler must not take the worker's locks itself
            self._loop.call_soon_threadsafe(self.on_stop)
