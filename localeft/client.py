"""A running `localeft serve` behind the Emulator methods the commands use, so `localeft
generate/chat/score --server URL` run the code they run locally, minus the model load.

`Client` offers `stream`, `score`, `prompt_tokens`, `beta`, `n_ctx`, `models`, `base_prompt`,
`weights`; each call is one HTTP request to the server's own endpoints (server/client_api.py),
which run it through `request.build` and the server's Emulator and send back the whole result.
Requests carry every setting, beta included, so the server's defaults never decide an output.

Only the standard library and localeft's plain-data modules are imported: a client process
starts without NumPy or llama.cpp.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import validate
from .errors import ContextOverflowError, InvalidParameterError, LocaleftError, ServerError
from .results import Generation, Score, Stats

CONNECT_TIMEOUT = 10.0  # seconds; then no limit: a reply may wait its turn in the server's line
MODELS_TIMEOUT = 30.0  # seconds for /v1/models, which a server answers at once (never queued)
PREFIX = "/localeft/v1"
# /v1/models' facts that decide a reply's numbers besides its settings (client_api.served)
SERVED = ("files", "adapters", "n_ctx", "expert_weights", "weights", "repack", "base_prompt")
# what a reply that is not what a localeft server sends raises while it is read
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


@dataclass(frozen=True)
class ServedModel:
    """A model file as the server reports it (Emulator.models' values have `.path` too)."""

    path: Path


class Client:
    """A connection to `localeft serve` at `url` (http://HOST:PORT; `api_key`: its --api-key,
    default $LOCALEFT_API_KEY). Reads the server's models and settings at once: an unreachable
    server, or one that is not localeft's, is a ServerError here."""

    def __init__(self, url: str, api_key: str | None = None):
        given = url.strip()
        self.url = given.rstrip("/")
        try:  # urlsplit and .port raise ValueError for a bad port or IPv6 address
            parts = urlsplit(given if "://" in given else "http://" + given)
            port = parts.port
        except ValueError:
            parts = port = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"--server {url!r} is not an http://HOST:PORT address")
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = port or (443 if parts.scheme == "https" else 80)
        self._base = parts.path.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("LOCALEFT_API_KEY")
        self._headers = {"Content-Type": "application/json"}
        if key:  # an HTTP header: printable ASCII only (else http.client raises mid-request)
            if not (key.isascii() and key.isprintable()):
                raise ServerError("the API key (LOCALEFT_API_KEY) must be printable ASCII text")
            self._headers["Authorization"] = f"Bearer {key}"
        info = self._models()
        try:
            self._load(info)
        except (*MALFORMED, InvalidParameterError):
            raise ServerError(
                f"{self.url} is not a localeft server (its /v1/models is not localeft's)"
            ) from None
        self.placement: list[dict] = []
        self.closed = False

    def _load(self, info: dict) -> None:
        """The server's models and settings, as /v1/models' localeft extension says them."""
        self.n_ctx: int = _typed(info["n_ctx"], int)
        self.base_prompt: str = _typed(info.get("base_prompt", "template"), str)
        self.weights: str = _typed(info.get("weights", ""), str)
        self.repack: bool | None = info.get("repack")
        self.roles: dict[str, str] = {
            _typed(label, str): _typed(p, str) for label, p in info["files"].items()
        }
        self.expert_weights: list[float] = list(info.get("expert_weights", []))
        self.adapters: dict[str, list] = {
            label: [tuple(a) for a in pairs] for label, pairs in info.get("adapters", {}).items()
        }
        self.defaults: dict = dict(info.get("defaults", {}))
        self.models = {label: ServedModel(Path(p)) for label, p in self.roles.items()}
        self.beta = info["beta"]
        # sent back with each request: a server that holds other models by then refuses it
        self._served = {k: info[k] for k in SERVED if k in info}

    # --- settings --------------------------------------------------------------------------
    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = validate.beta(value)

    # --- what the commands call ------------------------------------------------------------
    def stream(self, prompt, **settings) -> RemoteStream:
        """Generate on the server: text pieces as they come, `.generation` at the end."""
        if settings.get("beta") is None:
            settings["beta"] = self.beta
        response = self._post(f"{PREFIX}/generate", {"prompt": prompt, "settings": settings})
        return RemoteStream(self, response)

    def score(self, prompt, continuation, *, beta=None, betas=(), top: int = 0) -> Score:
        body = {
            "prompt": prompt,
            "continuation": continuation,
            "beta": self.beta if beta is None else beta,
            "betas": list(betas),
            "top": top,
        }
        answer = self._read(self._post(f"{PREFIX}/score", body))
        try:
            return Score.from_dict(answer)
        except MALFORMED:
            raise self._unreadable() from None

    def prompt_tokens(self, prompt) -> dict[str, list[int]]:
        answer = self._read(self._post(f"{PREFIX}/tokenize", {"prompt": prompt}))
        try:
            return {
                _typed(k, str): [_typed(t, int) for t in v] for k, v in answer["tokens"].items()
            }
        except MALFORMED:
            raise self._unreadable() from None

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- HTTP ------------------------------------------------------------------------------
    def _unreadable(self) -> ServerError:
        return ServerError(f"the server at {self.url} sent an answer that is not localeft's")

    def _connection(self) -> http.client.HTTPConnection:
        kind = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        conn = kind(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ServerError(
                f"cannot reach a localeft server at {self.url} ({_reason(e)}); start one with "
                "`localeft serve`, or drop --server (and LOCALEFT_SERVER) to load the models here"
            ) from None
        return conn

    def _send(self, method: str, path: str, body: dict | None = None, timeout=None):
        """The response to one request; `timeout`: seconds the answer may take (None: no
        limit)."""
        conn = self._connection()
        conn.sock.settimeout(timeout)
        try:
            data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
            conn.request(method, self._base + path, body=data, headers=self._headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if isinstance(e, http.client.BadStatusLine):
                raise ServerError(
                    f"{self.url} is not a localeft server (its answer is not HTTP)"
                ) from None
            raise ServerError(f"the server at {self.url} did not answer ({_reason(e)})") from None
        if response.status != 200:
            try:
                raise self._error(response)
            finally:
                conn.close()
        return response

    def _post(self, path: str, body: dict):
        return self._send("POST", path, {**body, "served": self._served})

    def _read(self, response) -> dict:
        try:
            return json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise ServerError(
                f"the server at {self.url} broke off its answer ({_reason(e)})"
            ) from None
        finally:
            response.close()

    def _models(self) -> dict:
        response = self._send("GET", "/v1/models", timeout=MODELS_TIMEOUT)
        try:
            info = json.loads(response.read())["data"][0]["localeft"]
            info["files"].items(), info["n_ctx"], info["beta"]  # noqa: B018  (localeft's, or not)
        except (OSError, http.client.HTTPException, *MALFORMED):
            raise ServerError(
                f"{self.url} is not a localeft server (no models it serves)"
            ) from None
        finally:
            response.close()
        return info

    def _error(self, response) -> Exception:
        """The exception a refused request raises here, as a local run would raise it."""
        try:
            err = json.loads(response.read())["error"]
            message = _typed(err["message"], str)
            err.get("code")
        except (OSError, http.client.HTTPException, *MALFORMED):
            err, message = {}, f"HTTP {response.status} {response.reason}"
        message = _one_line(message)
        if response.status == 400 and err.get("code") == "context_length_exceeded":
            return _overflow(message, err)
        if response.status == 400:
            return InvalidParameterError(message)
        if response.status == 401 and "Authorization" in self._headers:
            return ServerError(
                f"the server at {self.url} refused the API key in LOCALEFT_API_KEY ({message})"
            )
        if response.status == 401:
            return ServerError(
                f"the server at {self.url} needs its API key: set LOCALEFT_API_KEY ({message})"
            )
        if response.status == 404:
            return ServerError(f"{self.url} is not a localeft server, or an older one ({message})")
        return ServerError(f"the server at {self.url} refused the request: {message}")


class RemoteStream:
    """A generation on the server, read as server-sent events: iterate for text pieces;
    `.generation` is the server's Generation once it ended. `close()` hangs up (the server
    stops at its next token); what had come is kept, finish_reason "interrupted"."""

    def __init__(self, client: Client, response):
        self._client, self._response = client, response
        self.generation: Generation | None = None
        self.tokens: list[int] = []
        self.records: list = []
        self._text: list[str] = []

    def __iter__(self) -> RemoteStream:
        return self

    def __next__(self) -> str:
        while True:
            event = self._event()
            if event is None:
                self._hang_up()
                if self.generation is None:
                    raise ServerError(
                        f"the server at {self._client.url} ended the reply before its end"
                    )
                raise StopIteration
            try:
                piece = self._take(event)
            except LocaleftError:  # the server's own error (InvalidParameterError is a ValueError)
                raise
            except MALFORMED:
                self._hang_up()
                raise self._client._unreadable() from None
            if piece:
                return piece

    def _take(self, event: dict) -> str | None:
        """Take in one event; its text piece, if it has one."""
        if "piece" in event:
            piece, tokens = _typed(event["piece"], str), event["tokens"]
            self.tokens += [_typed(t, int) for t in tokens]
            if piece:
                self._text.append(piece)
            return piece
        if "generation" in event:
            self.generation = Generation.from_dict(event["generation"])
            self.records = self.generation.logprobs or []
        elif "error" in event:
            self._hang_up()
            raise _event_error(self._client, event["error"])
        return None

    def _event(self) -> dict | None:
        """The next event's data; None at [DONE] or when the stream ends."""
        response = self._response
        if response is None:
            return None
        try:
            while True:
                line = response.readline()
                if not line:
                    return None
                if line.startswith(b"data: "):
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        return None
                    event = json.loads(data)
                    if not isinstance(event, dict):
                        raise ValueError("an event that is not an object")
                    return event
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._hang_up()
            raise ServerError(
                f"the server at {self._client.url} broke off the reply ({_reason(e)})"
            ) from None

    def _hang_up(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        if self.generation is None and self._response is not None:
            self.generation = Generation(
                "".join(self._text),
                list(self.tokens),
                "interrupted",
                Stats(weights=self._client.weights),
                content="".join(self._text),
            )
        self._hang_up()


def _event_error(client: Client, err: dict) -> Exception:
    if not isinstance(err, dict):
        return client._unreadable()
    message = _one_line(str(err.get("message", "unknown error")))
    if err.get("code") == "context_length_exceeded":
        return _overflow(message, err)
    if err.get("type") == "invalid_request_error":
        return InvalidParameterError(message)
    return ServerError(f"the server at {client.url}: {message}")


def _overflow(message: str, err: dict) -> ContextOverflowError:
    """A prompt over the server's context, with the sizes it said (as a local run has them)."""
    tokens, n_ctx = err.get("tokens"), err.get("n_ctx")
    sized = all(isinstance(x, int) and not isinstance(x, bool) for x in (tokens, n_ctx))
    if not sized:
        tokens = n_ctx = None
    return ContextOverflowError(
        message, tokens=tokens, n_ctx=n_ctx, at_least=err.get("at_least") is True
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    return _one_line(getattr(e, "strerror", None) or str(e) or type(e).__name__)


def _one_line(text: str, limit: int = 500) -> str:
    """What a server said, fit for a one-line error: printable, on one line, not too long."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _typed(value, kind: type):
    """`value` if it is a `kind` (bool is no int here), else TypeError: a malformed answer."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value
