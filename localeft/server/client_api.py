"""The endpoints the CLI uses as a client of `localeft serve` (`--server URL`): a request runs
here exactly as the local command would run it, and what comes back is everything the command
prints — a `Generation` (text, token ids, stats, per-token records) or a `Score` — where
OpenAI's shapes carry only part of it (no token ids without logprobs, no per-model totals).

    POST /localeft/v1/generate  {"prompt", "settings"}   server-sent events:
        {"piece": text, "tokens": [ids]} ... {"generation": Generation.as_dict()}, [DONE]
    POST /localeft/v1/score     {"prompt", "continuation", "beta", "betas", "top"} -> Score
    POST /localeft/v1/tokenize  {"prompt"} -> {"tokens": {label: [ids]}}

`settings` are `request.build`'s keyword arguments, validated there as for every door (a bad
one: 400 at once). Requests take their turn in the server's one line like any other. Floats
travel as Python writes them (shortest repr, Infinity for -inf): they read back to the same
doubles, so the client prints the bytes a local run prints. Errors are OpenAI's error object;
a prompt over the context also says by how much (`tokens`, `n_ctx`, `at_least`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import request as requests
from ..errors import ContextOverflowError, InvalidParameterError, LocaleftError
from .shapes import APIError
from .sse import EventStream

PREFIX = "/localeft/v1"


def routes(server, api_error: Callable[[BaseException], APIError], gone: type) -> list[Route]:
    """The routes, over the app's Server; `api_error` maps an exception to the error answered,
    `gone` is the exception `Server.collect` raises when the client left."""
    api = ClientApi(server, api_error, gone)
    return [
        Route(f"{PREFIX}/generate", api.generate, methods=["POST"]),
        Route(f"{PREFIX}/score", api.score, methods=["POST"]),
        Route(f"{PREFIX}/tokenize", api.tokenize, methods=["POST"]),
    ]


def error_body(err: APIError, e: BaseException) -> dict:
    """The error object answered for `e`, with the sizes of a context overflow."""
    body = err.body()
    if isinstance(e, ContextOverflowError):
        body["error"].update(tokens=e.tokens, n_ctx=e.n_ctx, at_least=e.at_least)
    return body


def _json(data: dict, status: int = 200, headers: dict | None = None) -> Response:
    """JSON as Python writes it (floats exact; -inf as Infinity, which JSONResponse refuses)."""
    body = json.dumps(data, ensure_ascii=False).encode()
    return Response(body, status, headers=headers, media_type="application/json")


def _field(body: dict, name: str, kind: type, default=None):
    value = body.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise InvalidParameterError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def built(prompt, settings) -> requests.Request:
    """The Request the settings describe (logit_bias keys come as JSON strings, which
    request.build reads)."""
    if not isinstance(settings, dict):
        raise InvalidParameterError(f"settings must be an object, got {settings!r}")
    unknown = sorted(set(settings) - set(requests.build.__kwdefaults__))
    if unknown:
        raise InvalidParameterError(f"unknown setting {unknown[0]!r}")
    return requests.build(prompt, **settings)


class ClientApi:
    """The handlers, over the app's Server (its Emulator, worker, auth and body reading)."""

    def __init__(self, server, api_error, gone: type):
        self.server, self.api_error, self.gone = server, api_error, gone

    async def _guarded(self, request: Request, handler) -> Response:
        try:
            self.server.authorize(request)
            body = await self.server.body(request)
            self._check_served(body.get("served"))
            return await handler(request, body)
        except APIError as e:  # a request refused before it ran: its cause says the sizes
            return _json(error_body(e, e.__cause__), e.status, e.headers)
        except LocaleftError as e:
            err = self.api_error(e)
            return _json(error_body(err, e), err.status)

    def _check_served(self, expected) -> None:
        """A client checked the models when it connected and sends what it saw (`served`):
        if this server holds others now (restarted with other options, or another server on
        that port), the request is refused rather than answered by other models."""
        if expected is None:
            return
        if not isinstance(expected, dict):
            raise InvalidParameterError(f"served must be an object, got {expected!r}")
        mine = served(self.server)
        if any(mine.get(k) != v for k, v in expected.items()):
            raise APIError(
                409,
                "the server holds other models than when this client connected (it was "
                "restarted with other options?); run the command again to check them anew",
                code="models_changed",
            )

    async def generate(self, request: Request) -> Response:
        return await self._guarded(request, self._generate)

    async def score(self, request: Request) -> Response:
        return await self._guarded(request, self._score)

    async def tokenize(self, request: Request) -> Response:
        return await self._guarded(request, self._tokenize)

    async def _generate(self, request: Request, body: dict) -> Response:
        server = self.server
        req = built(body.get("prompt"), body.get("settings", {}))
        stream = await server.bound(req)
        ticket = server.submit(_generation(stream), [stream])
        return EventStream(self._events(ticket), ticket.cancel)

    async def _events(self, ticket):
        while True:
            ev = await ticket.next()
            if ev[0] == "piece":
                yield {"piece": ev[1], "tokens": ev[2]}
            elif ev[0] == "done":
                yield {"generation": ev[1].as_dict()}
                return
            else:
                yield error_body(self.api_error(ev[1]), ev[1])
                return

    async def _score(self, request: Request, body: dict) -> Response:
        prompt, continuation = body.get("prompt"), body.get("continuation")
        settings = dict(
            beta=body.get("beta"), betas=_field(body, "betas", list, []), top=body.get("top", 0)
        )
        em = self.server.em

        def work(ticket) -> None:
            try:
                ticket.emit(("done", em.score(prompt, continuation, **settings)))
                ticket.emit(("end",))
            except LocaleftError as e:
                ticket.emit(("error", e))

        ticket = self.server.submit(work, [])
        try:
            events = await self.server.collect(ticket, request)
        except self.gone:
            return Response(status_code=499)
        if events[-1][0] == "error":
            raise events[-1][1]
        return _json(events[0][1].as_dict(per_token=True))

    async def _tokenize(self, request: Request, body: dict) -> Response:
        tokens = await asyncio.to_thread(self.server.em.prompt_tokens, body.get("prompt"))
        return _json({"tokens": tokens})


def served(server) -> dict:
    """What decides a reply's numbers besides its settings, as /v1/models says it (and the
    client sends it back): the files by role, their adapters and weights, the context, the
    weight layout, how base models see chats."""
    em = server.em
    facts = {
        "files": {label: str(m.path) for label, m in em.models.items()},
        "adapters": em.adapters,
        "n_ctx": em.n_ctx,
        **server.load_facts(),
    }
    del facts["defaults"]  # the client's settings are sent with every request
    return json.loads(json.dumps(facts))


def _generation(stream):
    """The worker's part: run the stream, hand out its pieces with their new token ids, then the
    Generation."""

    def work(ticket) -> None:
        sent = 0
        try:
            for piece in stream:
                if ticket.cancelled:
                    stream.close()  # the client went away: stop at this token
                    return
                n = len(stream.tokens)
                ticket.emit(("piece", piece, stream.tokens[sent:n]))
                sent = n
            ticket.emit(("done", stream.generation))
        except LocaleftError as e:
            ticket.emit(("error", e))
        finally:
            stream.close()

    return work
