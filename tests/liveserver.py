"""A real uvicorn server in a thread, on a free loopback port (bound before the thread starts,
so no other process can take it in between)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx


@contextlib.contextmanager
def running(app, server_class=None, **limits):
    """Serve `app` on 127.0.0.1 as `localeft serve` does (its connection limits: `limits` as
    limits.protocol takes them); yields the base URL (http://127.0.0.1:PORT).
    `server_class(config)`: the uvicorn.Server to run it (default: uvicorn's own)."""
    import uvicorn

    from localeft.server import running as production

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = production.config(app, host="127.0.0.1", port=port, **limits)
    server = (server_class or uvicorn.Server)(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def post(url: str, path: str, body, **kw) -> httpx.Response:
    """POST `body` (JSON of an object, or bytes/text sent as they are) as application/json."""
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=60, **kw)
