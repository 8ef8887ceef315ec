"""`localeft serve`: EFT behind OpenAI's API, and a chat page, on this machine.

Needs the `server` extra (Starlette, uvicorn): `pip install 'localeft[server]'`.

| module | one job |
|---|---|
| `app.py` | the ASGI app: routes, auth, body limit, errors; one handler per endpoint |
| `params.py` | OpenAI field names -> `request.Request`s (request.build validates them) |
| `worker.py` | one request at a time in one thread, a bounded FIFO line, cancellation |
| `jobs.py` | what the worker runs: Emulator calls -> events |
| `client_api.py` | the endpoints `localeft generate/chat/score --server` use: whole results |
| `shapes.py` | OpenAI's response shapes (and the `localeft` extension) |
| `sse.py` | server-sent events, watching for clients that leave |
| `limits.py` | below the app: headers in time, a cap on open connections |
| `running.py` | uvicorn as `localeft serve` runs it: those limits, signals that stop generating |
| `static/` | the chat page (no build step, nothing fetched from the internet) |
"""

from __future__ import annotations

import ipaddress

INSTALL = "pip install 'localeft[server]'"


def missing() -> str | None:
    """The first server dependency that is not installed, or None."""
    import importlib.util

    for name in ("starlette", "uvicorn"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    em,
    *,
    host: str,
    port: int,
    model: str,
    api_key=None,
    queue=16,
    log_level="warning",
    defaults: dict | None = None,
):
    """Serve `em` until stopped (SIGTERM or Ctrl-C: running.py). `defaults`: the preset's
    settings the models were loaded with, for clients (`--server`)."""
    from . import running
    from .app import create_app

    app = create_app(em, model=model, api_key=api_key, queue=queue, defaults=defaults)
    config = running.config(app, host=host, port=port, log_level=log_level)
    running.Serving(config, app.state.server.stop).run()
