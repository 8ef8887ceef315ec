"""Server-sent events as OpenAI streams them: `data: {json}` per chunk, then `data: [DONE]`.

`EventStream` is a plain ASGI response that watches the connection while it sends: when the
client goes away, the chunk source is stopped and `on_disconnect` runs at once (the worker then
stops generating at its next token), whatever the server's ASGI version does on a failed send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import AsyncIterator, Callable

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies: do not buffer the stream
]


def event(data: dict | str) -> bytes:
    """One event. JSON has no NaN or Infinity (Python's json would write them, and clients'
    parsers would fail on them): a non-finite number is written as null."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = json.dumps(data, ensure_ascii=False, allow_nan=False)
        except ValueError:
            text = json.dumps(_finite(data), ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


DONE = event("[DONE]")


async def wait_disconnect(receive) -> None:
    """Returns when the client has gone away (the request body was read before)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream:
    """An ASGI response: the chunks of `chunks` as events, then [DONE]."""

    def __init__(self, chunks: AsyncIterator[dict], on_disconnect: Callable[[], None]):
        self.chunks = chunks
        self.on_disconnect = on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished = sender.done() and not sender.cancelled() and sender.exception() is None
            for task in (sender, watcher):
                task.cancel()
            for task in (sender, watcher):
                with contextlib.suppress(BaseException):
                    await task
            if not finished:
                self.on_disconnect()

    async def _send_all(self, send) -> None:
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": event(chunk), "more_body": True})
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
        finally:
            await self.chunks.aclose()
