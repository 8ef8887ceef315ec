"""The ASGI app: OpenAI's endpoints and the chat page over one Emulator.

request ─▶ auth, body limit, JSON ─▶ params (request.Request; bad ones: 400 at once)
        ─▶ worker line (one at a time; full: 503) ─▶ jobs (Emulator calls → events)
        ─▶ shapes (OpenAI JSON) ─▶ one response, or SSE chunks as tokens come

Settings are checked, and the prompt rendered and tokenized in a thread beside the event loop,
before the request waits its turn, so a bad request is answered at once whatever the line holds.
A client that goes away is noticed while it waits or streams: its ticket is cancelled, freeing
the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..engine import Emulator, Stream
from ..errors import ClosedError, ContextOverflowError, EngineUnavailable, InvalidParameterError
from ..errors import LocaleftError
from .. import toolformat
from . import client_api, jobs, params, shapes, tokenizer
from .shapes import APIError
from .sse import EventStream, wait_disconnect
from .worker import QueueFull, Worker

STATIC = Path(__file__).parent / "static"
MAX_BODY = 8 * 1024 * 1024  # bytes: a long prompt is a few hundred KB
QUEUE = 16  # requests waiting behind the running one
PREPARING = 2  # requests whose settings and prompt are checked at once (threads)
BODY_SECONDS = 60.0  # a request's body must arrive within this (headers: limits.py)


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def api_error(e: BaseException) -> APIError:
    """An Emulator error as the API answers it."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, InvalidParameterError):
        word = str(e).split(" ", 1)[0]
        param = e.param or (word if word in params.ENGINE_FIELDS else None)
        return APIError(400, str(e), param=param)
    if isinstance(e, ClosedError):
        return APIError(503, "the server is shutting down", code="unavailable")
    if isinstance(e, EngineUnavailable):  # supervisor.py: an RPC server died or froze
        retry = {"Retry-After": str(round(e.retry_after or 1))}
        return APIError(503, str(e), type="server_error", code="engine_unavailable", headers=retry)
    if isinstance(e, LocaleftError):
        return APIError(400, str(e))
    return APIError(500, f"internal error: {type(e).__name__}: {e}")


def checked(fn, *args, **kwargs):
    """Call fn; an Emulator error becomes the APIError to answer (its __cause__: the error)."""
    try:
        return fn(*args, **kwargs)
    except LocaleftError as e:
        raise api_error(e) from e


class Server:
    """The handlers, over one Emulator and its worker."""

    def __init__(
        self,
        em: Emulator,
        model: str,
        api_key: str | None,
        queue: int,
        max_body: int,
        body_seconds: float = BODY_SECONDS,
        defaults: dict | None = None,
    ):
        self.em, self.model, self.api_key = em, model, api_key
        self.defaults = defaults or {}  # the preset's settings the models were loaded with
        self.queue, self.max_body, self.body_seconds = queue, max_body, body_seconds
        self.worker: Worker | None = None
        self.preparing = asyncio.Semaphore(PREPARING)
        self.created = int(time.time())

    # --- plumbing ----------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)"
                if not given
                else "incorrect API key",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def body(self, request: Request) -> dict:
        """The JSON object of the body: 413 past max_body, 400 if it is not a JSON object."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise self._too_large()
        try:
            data = await asyncio.wait_for(self._read(request), self.body_seconds)
        except asyncio.TimeoutError:
            raise APIError(
                408,
                f"the request body did not arrive within {self.body_seconds:g} s",
                code="request_timeout",
                headers={"Connection": "close"},
            ) from None
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as e:
            reason = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise APIError(
                400, f"the body is not valid JSON ({reason})", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        return body

    async def _read(self, request: Request) -> bytearray:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body:
                raise self._too_large()
        return data

    def _too_large(self) -> APIError:
        return APIError(
            413, f"the request body is over {self.max_body} bytes", code="request_too_large"
        )

    async def prepared(self, fn, *args):
        """fn(*args) in a thread beside the event loop, errors answered at once as 400s: for
        what may take a while (settings checked, a JSON schema converted, a prompt rendered and
        tokenized). At most PREPARING run at once; the rest wait here, without a thread."""
        async with self.preparing:
            return await asyncio.to_thread(checked, fn, *args)

    async def bound(self, req) -> Stream:
        """The request's Stream: its prompt rendered and tokenized off the event loop."""
        return await self.prepared(self.em.stream, req)

    def submit(self, work, streams) -> object:
        try:
            return self.worker.submit(work)
        except (QueueFull, ClosedError) as e:
            for s in streams:
                if s is not None:
                    s.close()
            if isinstance(e, ClosedError):
                raise api_error(e) from None
            raise APIError(
                503,
                f"the server is busy ({self.queue} requests waiting); {e}",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(e.retry_after)},
            ) from None

    async def collect(self, ticket, request: Request) -> list:
        """Every event of a ticket until its end; ClientGone if the client leaves first."""
        watcher = asyncio.ensure_future(wait_disconnect(request.receive))
        events = []
        try:
            while True:
                getter = asyncio.ensure_future(ticket.next())
                await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    ticket.cancel()
                    raise ClientGone
                events.append(getter.result())
                if events[-1][0] in ("end", "error"):
                    return events
        finally:
            watcher.cancel()

    def stop(self) -> None:
        """The server is shutting down (SIGTERM, Ctrl-C): the running generation stops at its
        next token, its client gets the end of the reply; waiting requests are answered 503."""
        if self.worker is not None:
            self.worker.stop()

    # --- endpoints ---------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def health(self, request: Request) -> Response:
        engine = self.em.health() if hasattr(self.em, "health") else None  # supervisor.py
        status = engine["status"] if engine else "ok"
        return JSONResponse(
            {
                "status": "ok" if status == "ok" else "degraded",
                **({"engine": engine} if engine else {}),
                "model": self.model,
                "n_ctx": self.em.n_ctx,
                "beta": self.em.beta,
                "auth": self.api_key is not None,
                "queue": self.worker.state() if self.worker else None,
            },
            status_code=200 if status == "ok" else 503,
        )

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "localeft",
                        "localeft": {
                            "files": {k: str(m.path) for k, m in self.em.models.items()},
                            "adapters": self.em.adapters,
                            "n_ctx": self.em.n_ctx,
                            "beta": self.em.beta,
                            **self.load_facts(),
                        },
                    }
                ],
            }
        )

    def load_facts(self) -> dict:
        """What a client (`localeft generate --server`) checks before sending a request: every
        role's file and expert weight, the weight layout, how base models see chats, and the
        settings the command line that loaded them would default to."""
        return {
            "expert_weights": self.em.expert_weights,
            "weights": self.em.weights,
            "repack": self.em.repack,
            "base_prompt": self.em.base_prompt,
            "defaults": self.defaults,
        }

    def check_model(self, body: dict) -> None:
        """The `model` asked for is the one served (absent or null: that one too)."""
        name = body.get("model")
        if name is not None and name != self.model:
            raise APIError(
                404,
                f"the model {name!r} does not exist: this server serves {self.model!r} "
                "(localeft serve --model-name sets the name)",
                param="model",
                code="model_not_found",
            )

    async def chat(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.body(request)
        self.check_model(body)
        req = await self.prepared(params.chat, body, self.em.n_ctx)
        stream = await self.bound(req.requests[0])
        top = req.top_logprobs
        work = jobs.run(self.em, req.prompts, [stream], records=top is not None)
        ticket = self.submit(work, [stream])
        rid = shapes.new_id("chatcmpl")
        if req.stream:
            chunks = self._chat_chunks(ticket, rid, req, stream.tool_family)
            return EventStream(chunks, ticket.cancel)
        try:
            events = await self.collect(ticket, request)
        except ClientGone:
            return Response(status_code=499)
        g, records = None, []
        for ev in events:
            if ev[0] == "error":
                raise api_error(ev[1])
            if ev[0] == "piece":
                records += ev[3]
            elif ev[0] == "done":
                g = ev[2]
        logprobs = None
        if top is not None:
            logprobs = shapes.chat_logprobs(records, top, self._piece)
        ext = shapes.extension(g, records if top is not None else None, beta=self._beta(req))
        return JSONResponse(shapes.chat_completion(rid, self.model, g, logprobs, ext))

    async def _chat_chunks(self, ticket, rid: str, req: params.ApiRequest, family):
        top = req.top_logprobs
        split = None if family is None else toolformat.ContentStream(family)
        usage = {"usage": None} if req.include_usage else {}  # OpenAI: null until the last
        yield {**shapes.chat_chunk(rid, self.model, {"role": "assistant", "content": ""}), **usage}
        while True:
            ev = await ticket.next()
            if ev[0] == "piece":
                _, _, text, records = ev
                if split is not None:
                    text = split.feed(text)
                    if not text and not records:
                        continue
                chunk = shapes.chat_chunk(
                    rid,
                    self.model,
                    {"content": text},
                    logprobs=None
                    if top is None
                    else shapes.chat_logprobs(records, top, self._piece),
                    ext={"tokens": [r.as_dict() for r in records]} if top is not None else None,
                )
                yield {**chunk, **usage}
            elif ev[0] == "done":
                g = ev[2]
                for delta in shapes.tool_deltas(g, split):
                    yield {**shapes.chat_chunk(rid, self.model, delta), **usage}
                chunk = shapes.chat_chunk(
                    rid,
                    self.model,
                    {},
                    finish=shapes.FINISH.get(g.finish_reason),
                    ext=shapes.extension(g, beta=self._beta(req)),
                )
                yield {**chunk, **usage}
                if req.include_usage:
                    u = shapes.usage(g.stats.prompt_tokens, len(g.tokens))
                    yield shapes.chat_chunk(rid, self.model, None, usage_=u)
            elif ev[0] == "error":
                yield api_error(ev[1]).body()
                return
            else:
                return

    async def completions(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.body(request)
        self.check_model(body)
        req = await self.prepared(params.completion, body, self.em.n_ctx)
        streams = []
        try:
            for r in req.requests:
                s = await self.bound(r)
                if req.max_tokens == 0:  # echo only: the settings were checked, nothing runs
                    s.close()
                    s = None
                streams.append(s)
        except APIError:
            for s in streams:
                if s is not None:
                    s.close()
            raise
        top = req.top_logprobs
        work = jobs.run(
            self.em,
            req.prompts,
            streams,
            echo_top=top,
            echo_all=req.echo,
            records=top is not None,
            beta=req.requests[0].beta,
        )
        ticket = self.submit(work, streams)
        rid = shapes.new_id("cmpl")
        if req.stream:
            return EventStream(self._completion_chunks(ticket, rid, req), ticket.cancel)
        try:
            events = await self.collect(ticket, request)
        except ClientGone:
            return Response(status_code=499)
        n = len(req.prompts)
        echoes, gens, records = [None] * n, [None] * n, [[] for _ in range(n)]
        texts = [""] * n
        for ev in events:
            if ev[0] == "error":
                raise api_error(ev[1])
            if ev[0] == "echo":
                echoes[ev[1]] = ev[2]
            elif ev[0] == "piece":
                texts[ev[1]] += ev[2]
                records[ev[1]] += ev[3]
            elif ev[0] == "done":
                gens[ev[1]] = ev[2]
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, (prompt, e, g) in enumerate(zip(req.prompts, echoes, gens)):
            text = (e.text if e else "") + (g.text if g else "")
            logprobs = None
            if top is not None:
                start = 0 if e else len(self._prompt_text(prompt))
                logprobs = self._completion_logprobs(e, records[i], top, start)
            finish = shapes.FINISH.get(g.finish_reason) if g else "length"
            choice = shapes.completion_choice(i, text, logprobs, finish)
            choice["localeft"] = shapes.extension(
                g, records[i] if top is not None else None, beta=self._beta(req)
            )
            if g is None and e is not None:  # echo only: what scoring the prompt cost
                choice["localeft"]["stats"] = e.stats.as_dict()
            choices.append(choice)
            prompt_tokens += g.stats.prompt_tokens if g else len(e.ids)
            completion_tokens += len(g.tokens) if g else 0
        u = shapes.usage(prompt_tokens, completion_tokens)
        ext = {"beta": self._beta(req)}
        return JSONResponse(shapes.completion(rid, self.model, choices, u, ext))

    async def _completion_chunks(self, ticket, rid: str, req: params.ApiRequest):
        top = req.top_logprobs
        offset = len(self._prompt_text(req.prompts[0])) if top is not None else 0
        usage = {"usage": None} if req.include_usage else {}  # OpenAI: null until the last
        echo = None
        while True:
            ev = await ticket.next()
            if ev[0] == "echo":  # the prompt itself first (echo), with its scores
                echo = ev[2]
                logprobs = None if top is None else self._completion_logprobs(echo, [], top, 0)
                offset = sum(len(t) for t in echo.texts)
                choice = shapes.completion_choice(0, echo.text, logprobs, None)
                yield {**shapes.completion_chunk(rid, self.model, choice), **usage}
            elif ev[0] == "piece":
                _, _, text, records = ev
                logprobs = None
                if top is not None:
                    logprobs = self._completion_logprobs(None, records, top, offset)
                    offset += sum(len(r.text) for r in records)
                choice = shapes.completion_choice(0, text, logprobs, None)
                yield {**shapes.completion_chunk(rid, self.model, choice), **usage}
            elif ev[0] == "done":
                g = ev[2]
                finish = shapes.FINISH.get(g.finish_reason) if g else "length"
                choice = shapes.completion_choice(0, "", None, finish)
                ext = shapes.extension(g, beta=self._beta(req))
                if g is None and echo is not None:
                    ext["stats"] = echo.stats.as_dict()
                chunk = shapes.completion_chunk(rid, self.model, choice, ext=ext)
                yield {**chunk, **usage}
                if req.include_usage:
                    n_prompt = g.stats.prompt_tokens if g else len(echo.ids)
                    u = shapes.usage(n_prompt, len(g.tokens) if g else 0)
                    yield shapes.completion_chunk(rid, self.model, None, usage_=u)
            elif ev[0] == "error":
                yield api_error(ev[1]).body()
                return
            else:
                return

    async def tokenize(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.body(request)
        model = jobs.text_model(self.em)
        return JSONResponse(await asyncio.to_thread(checked, tokenizer.tokenize, model, body))

    async def detokenize(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.body(request)
        model = jobs.text_model(self.em)
        return JSONResponse(checked(tokenizer.detokenize, model, body))

    async def tokenizer_info(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(tokenizer.info(jobs.text_model(self.em), self.em.n_ctx))

    # --- helpers -----------------------------------------------------------------------------
    def _piece(self, token: int) -> bytes:
        return jobs.text_model(self.em).piece(token)

    def _prompt_text(self, prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return "".join(jobs.prompt_texts(self.em, prompt, prompt))

    def _beta(self, req: params.ApiRequest) -> float:
        beta = req.requests[0].beta
        return float(self.em.beta if beta is None else beta)

    @staticmethod
    def _completion_logprobs(e: jobs.Echo | None, records, top: int, start: int) -> dict:
        texts, lps, tops = [], [], []
        if e is not None:
            texts, lps = list(e.texts), list(e.logprobs)
            tops = [None if t is None else t[:top] for t in e.tops]
        texts += [r.text for r in records]
        lps += [r.logprob for r in records]
        tops += [r.top[:top] for r in records]
        return shapes.completion_logprobs(texts, lps, tops, start)


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _on_api_error(request: Request, exc: APIError) -> Response:
    return _error_response(exc)


async def _on_http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        where = f"{request.method} {request.url.path}"
        e = APIError(404, f"no such endpoint: {where}", code="not_found")
    elif exc.status_code == 405:
        e = APIError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
        )
    else:
        e = APIError(exc.status_code, str(exc.detail))
    return _error_response(e)


async def _on_crash(request: Request, exc: Exception) -> Response:
    return _error_response(api_error(exc))


def create_app(
    em: Emulator,
    *,
    model: str = "localeft",
    api_key: str | None = None,
    queue: int = QUEUE,
    max_body: int = MAX_BODY,
    body_seconds: float = BODY_SECONDS,
    defaults: dict | None = None,
) -> Starlette:
    """The ASGI app serving `em` (one request at a time; `queue` more may wait);
    `app.state.server.stop()` stops it generating (the server is shutting down). `defaults`:
    the preset settings (beta, temperature, n_ctx) the models were loaded with, for clients."""
    server = Server(em, model, api_key, queue, max_body, body_seconds, defaults)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.worker = Worker(queue)
        await asyncio.to_thread(em.prompts.measure_tokens)  # for refusing huge prompts at once
        try:
            yield
        finally:
            await asyncio.to_thread(server.worker.close)

    routes = [
        Route("/", server.page, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        *client_api.routes(server, api_error, ClientGone),
        Route("/tokenize", server.tokenize, methods=["POST"]),
        Route("/detokenize", server.detokenize, methods=["POST"]),
        Route("/tokenizer_info", server.tokenizer_info, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: _on_api_error, HTTPException: _on_http_error, 500: _on_crash},
    )
    app.state.server = server
    return app
