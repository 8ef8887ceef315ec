"""`--server URL` against what is not a well-behaved `localeft serve`: a malformed address, a
listener that speaks something else, answers that are not localeft's, one that never answers.
Each is one line (`localeft: error: ...`, exit 1), never a traceback or a hang."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
from pathlib import Path

import httpx
import pytest
from clitools import assert_one_line_error, trio
from click.testing import CliRunner
from liveserver import running

from localeft import LoRA, client
from localeft.cli import cli
from localeft.server.app import create_app

MODELS = {
    "files": {"base": "/m/base.gguf", "ft": "/m/ft.gguf", "ref": "/m/ref.gguf"},
    "n_ctx": 256,
    "beta": 1.0,
}


def http(body: bytes, status: str = "200 OK", kind: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def models(info: dict) -> bytes:
    return http(json.dumps({"object": "list", "data": [{"id": "x", "localeft": info}]}).encode())


def events(*data: bytes) -> bytes:
    return http(b"".join(b"data: " + d + b"\n\n" for d in data), kind="text/event-stream")


@contextlib.contextmanager
def canned(answer, seen: list | None = None):
    """A loopback listener that answers each request with `answer(path)` (raw bytes; None:
    say nothing and keep the connection open); yields its URL. `seen` gets each request's
    (path, JSON body)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return conn.close()
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(h.split(b":")[1])
                for h in head.split(b"\r\n")
                if h.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:  # read it all: a socket closed on unread bytes resets
            body += conn.recv(65536)
        path = data.split(b" ")[1].decode()
        if seen is not None:
            seen.append((path, json.loads(body) if body else None))
        reply = answer(path)
        if reply is None:
            return held.append(conn)
        conn.sendall(reply)
        conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    monkeypatch.delenv("LOCALEFT_SERVER", raising=False)
    monkeypatch.delenv("LOCALEFT_API_KEY", raising=False)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://", "http://[::1", "ftp://x"],
)
def test_a_malformed_server_address_is_one_line(url):
    r = invoke("generate", "--server", url, "hi")
    assert_one_line_error(r, 1, "is not an http://HOST:PORT address")


def generation_answer(events_body: bytes):
    def answer(path: str) -> bytes:
        if path.endswith("/v1/models"):
            return models(MODELS)
        if path.endswith("/tokenize"):
            return http(b'{"tokens": {"base": [1], "ft": [1], "ref": [1]}}')
        return events_body

    return answer


FOREIGN = {
    # a listener that does not speak HTTP at all (its bytes must not reach the terminal)
    "not HTTP": (lambda path: b"\x00\xff garbage \x1b[31m\r\nmore\r\n\r\n", "not HTTP"),
    # /v1/models with localeft's keys but the wrong types
    "models typed wrong": (
        lambda path: models({"files": {"base": 1}, "n_ctx": "256", "beta": "x"}),
        "its /v1/models is not localeft's",
    ),
    "adapters not a mapping": (
        lambda path: models({**MODELS, "adapters": 5}),
        "its /v1/models is not localeft's",
    ),
    # events that are JSON but not localeft's
    "a piece without tokens": (
        generation_answer(events(b'{"piece": "x"}', b"[DONE]")),
        "not localeft's",
    ),
    "an error that is a string": (
        generation_answer(events(b'{"error": "boom"}', b"[DONE]")),
        "not localeft's",
    ),
    "an event that is a list": (
        generation_answer(events(b"[1, 2]", b"[DONE]")),
        "broke off the reply",
    ),
    "a generation that is not one": (
        generation_answer(events(b'{"generation": {"text": 1}}', b"[DONE]")),
        "not localeft's",
    ),
    # an error message over several lines (and control characters) is said on one
    "a message on two lines": (
        generation_answer(
            http(b'{"error": {"message": "kaboom\\nsecond \\u001b[2Jline"}}', "500 Oops")
        ),
        "refused the request: kaboom second [2Jline",
    ),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_server_that_is_not_localefts_is_one_line(case):
    answer, needle = FOREIGN[case]
    with canned(answer) as url:
        r = invoke("generate", "--server", url, "-n", "2", "hi")
    assert_one_line_error(r, 1, needle)
    assert "\x1b" not in r.stderr and "\x00" not in r.stderr


def test_a_malformed_score_or_token_list_is_one_line():
    def answer(path: str) -> bytes:
        if path.endswith("/v1/models"):
            return models(MODELS)
        if path.endswith("/tokenize"):
            return http(b'{"tokens": {"base": ["a"]}}')
        return http(b'{"tokens": 5}')

    with canned(answer) as url:
        r = invoke("score", "--server", url, "a", "b")
        assert_one_line_error(r, 1, "not localeft's")
        r = CliRunner().invoke(cli, ["chat", "--server", url], input="hi\n/bye\n")
        assert "not localeft's" in r.stderr and "Traceback" not in r.output


def test_a_listener_that_never_answers_is_a_timeout_not_a_hang(monkeypatch):
    monkeypatch.setattr(client, "MODELS_TIMEOUT", 0.5, raising=False)
    results = []
    with canned(lambda path: None) as url:
        t = threading.Thread(
            target=lambda: results.append(invoke("generate", "--server", url, "hi"))
        )
        t.start()
        t.join(15)
        assert not t.is_alive(), "the client still waits for /v1/models"
    assert_one_line_error(results[0], 1, "did not answer (timed out)")


@pytest.mark.parametrize("failing", ["/tokenize", "/generate"])
def test_chat_outlives_a_server_that_fails_and_keeps_the_message_for_retry(failing):
    asked = []

    def answer(path: str) -> bytes:
        if path.endswith("/v1/models"):
            return models(MODELS)
        if not path.endswith(failing):
            return http(b'{"tokens": {"base": [1], "ft": [1], "ref": [1]}}')
        asked.append(path)
        body = b'{"error": {"message": "the engine is restarting", "type": "server_error"}}'
        return http(body, "503 Service Unavailable")

    with canned(answer) as url:
        r = CliRunner().invoke(cli, ["chat", "--server", url], input="hi\n/retry\n/bye\n")
    assert r.exit_code == 0, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("localeft: error: ")]
    assert len(errors) == 2 and "the engine is restarting" in errors[0]
    assert len(asked) == 2  # /retry sent the message again


def test_what_the_server_serves_is_told_apart_from_a_namesake_and_an_expert(
    tiny, adapters, make_em, tmp_path
):
    """An adapter path with a colon works through --server; another file of the same name,
    or the same adapter as an expert of another weight, is refused with a message that shows
    the difference; --rpc-output, a load option, is said to be ignored as --rpc is."""
    copy = tmp_path / "with:colon" / "a.gguf"
    copy.parent.mkdir()
    copy.write_bytes(Path(adapters.a).read_bytes())
    small = ["--large-base", tiny.large_base, "--small-base", tiny.small_base]
    em = make_em(small_ft=LoRA(tiny.small_base, copy, scale=0.5))
    with running(create_app(em, model="tiny")) as url:
        r = invoke("generate", "--server", url, *small, "--small-ft-lora", f"{copy}:0.5", "hi")
        assert r.exit_code == 0, r.output
        r = invoke("generate", "--server", url, *small, "--small-ft-lora", f"{adapters.a}:0.5", "x")
        assert_one_line_error(r, 1, f"LoRA {copy} x0.5", f"LoRA {adapters.a} x0.5 asked for")
        r = invoke("generate", "--server", url, *small, "--expert-lora", f"{copy}:0.5", "hi")
        assert_one_line_error(r, 1, "at weight 1, not the 0.5 asked for")
        r = invoke("generate", "--server", url, "--rpc-output", "local", "-n", "2", "hi")
        assert r.exit_code == 0, r.output
        assert "--rpc-output is ignored with --server" in r.stderr


@pytest.mark.parametrize("words", [400, 100_000], ids=["over", "far over"])
def test_a_prompt_over_the_context_is_said_as_locally(tiny, make_em, words):
    prompt = "hello " * words  # far over: refused before it is tokenized ("at least")
    with running(create_app(make_em(), model="tiny")) as url:
        there = [
            invoke("generate", "--server", url, "-n", "2", prompt),
            invoke("score", "--server", url, prompt, "x"),
        ]
    here = [
        invoke("generate", *trio(tiny), "-n", "2", prompt),
        invoke("score", *trio(tiny), prompt, "x"),
    ]
    for local, remote in zip(here, there):
        assert_one_line_error(remote, 1, "shorten it or raise -c/--ctx-size")
        assert remote.stderr == local.stderr


def test_a_reply_broken_off_keeps_its_text_and_the_error_starts_a_line():
    cut = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    event = b'data: {"piece": "Hello", "tokens": [1]}\n\n'
    cut += b"%x\r\n%s\r\n" % (len(event), event)  # then the connection closes mid-stream
    with canned(generation_answer(cut)) as url:
        r = invoke("generate", "--server", url, "hi")
        assert_one_line_error(r, 1, "ended the reply before its end")
        assert r.stdout == "Hello\n"
        r = CliRunner().invoke(cli, ["chat", "--server", url], input="hi\n/bye\n")
    assert r.exit_code == 0 and "\nHello\n>>> /bye" in r.stdout, r.output


def test_api_keys_that_cannot_travel_in_a_header_are_refused_on_both_sides(
    tiny, make_em, monkeypatch
):
    with running(create_app(make_em(), model="tiny", api_key="k")) as url:
        for key in ("ключ", "a\nb"):
            monkeypatch.setenv("LOCALEFT_API_KEY", key)
            r = invoke("generate", "--server", url, "hi")
            assert_one_line_error(r, 1, "must be printable ASCII")
        monkeypatch.setenv("LOCALEFT_API_KEY", "wrong")
        r = invoke("generate", "--server", url, "hi")
        assert_one_line_error(r, 1, "refused the API key in LOCALEFT_API_KEY (incorrect API key)")
    monkeypatch.delenv("LOCALEFT_API_KEY")
    from localeft import server

    def started(*args, **kw):
        raise AssertionError("the server started with a key no client can send")

    monkeypatch.setattr(server, "serve", started)
    for key in ("ключ", " k"):
        r = invoke("serve", *trio(tiny), "--api-key", key)
        assert r.exit_code == 2 and "--api-key" in r.output and "printable ASCII" in r.output
    r = invoke("serve", *trio(tiny), "--api-key", "")  # not "no key": the user asked for one
    assert r.exit_code == 2 and "--api-key" in r.output and "must not be empty" in r.output


def test_serve_names_an_ipv6_address_as_a_url_the_client_takes(tiny, monkeypatch):
    from localeft import server

    monkeypatch.setattr(server, "serve", lambda *args, **kw: None)
    r = invoke("serve", *trio(tiny), "--host", "::1", "--port", "8081")
    assert r.exit_code == 0, r.output
    assert "serving localeft on http://[::1]:8081/ (chat page)" in r.stderr
    r = invoke("generate", "--server", "http://[::1]:1", "hi")
    assert_one_line_error(r, 1, "cannot reach a localeft server at http://[::1]:1")


def test_a_server_that_holds_other_models_by_the_next_request_refuses_it(tiny, make_em):
    """A client checks the models when it connects; a chat or a --jsonl batch then runs for
    long. If the server on that address is restarted with other options meanwhile, a request
    is refused (409) instead of answered by other models; a restart with the same ones is fine."""
    from linkproxy import LinkProxy

    from localeft.errors import ServerError

    with (
        running(create_app(make_em(), model="tiny")) as first,
        running(create_app(make_em(n_ctx=128), model="tiny")) as other,
        running(create_app(make_em(), model="tiny")) as same,
        LinkProxy(("127.0.0.1", int(first.rsplit(":", 1)[1]))) as link,
    ):
        c = client.Client(f"http://{link.endpoint}")
        before = list(c.stream("hi", max_tokens=3))
        link.target = ("127.0.0.1", int(other.rsplit(":", 1)[1]))
        for call in (
            lambda: list(c.stream("hi", max_tokens=3)),
            lambda: c.score("hi", " there"),
            lambda: c.prompt_tokens("hi"),
        ):
            with pytest.raises(ServerError, match="holds other models than when this client"):
                call()
        link.target = ("127.0.0.1", int(same.rsplit(":", 1)[1]))
        assert list(c.stream("hi", max_tokens=3)) == before
        r = httpx.post(same + "/localeft/v1/tokenize", json={"prompt": "hi", "served": [1]})
        assert r.status_code == 400 and "served must be an object" in r.text


def test_ctrl_c_while_a_chat_waits_for_the_server_keeps_the_conversation_as_it_was():
    """Ctrl-C while the request waits (in the server's line, say) used to leave the message in
    the conversation with no reply, so the next turn sent two user messages in a row."""
    seen, waiting = [], threading.Event()
    reply = events(
        b'{"piece": "ok", "tokens": [5]}',
        b'{"generation": {"text": "ok", "tokens": [5], "finish_reason": "length", '
        b'"seed": null, "stats": {}, "content": "ok"}}',
        b"[DONE]",
    )

    def answer(path: str) -> bytes | None:
        if not path.endswith("/generate"):
            return generation_answer(b"")(path)
        if not waiting.is_set():
            waiting.set()
            return None  # the first one waits until Ctrl-C
        return reply

    def ctrl_c() -> None:
        if waiting.wait(15):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    with canned(answer, seen) as url:
        r = CliRunner().invoke(cli, ["chat", "--server", url], input="hi\n/retry\nagain\n/bye\n")
    assert r.exit_code == 0 and "interrupted before the reply began" in r.stderr, r.output
    sent = [[m["content"] for m in body["prompt"]] for path, body in seen if "generate" in path]
    assert sent == [["hi"], ["hi"], ["hi", "ok", "again"]]
