"""`localeft serve` against hostile clients and shutdown: a huge prompt is refused before it
is tokenized and nothing slow runs on the event loop; headers and bodies must arrive in time,
open connections are capped; a stop signal ends the running reply at its next token; absurd
settings never give padding ids or non-finite numbers; echo gives back the prompt's text."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from liveserver import post, running
from tinymodels import BASE_VOCAB_SIZE, EOS_ID, IM_END_ID, write_model

from localeft import Emulator
from localeft.server import params
from localeft.server import running as running_module
from localeft.server.app import create_app
from localeft.textstream import TextStream

HI = [{"role": "user", "content": "hi"}]
NO_END = {str(EOS_ID): -1e6, str(IM_END_ID): -1e6}  # replies run to max_tokens


@pytest.fixture(scope="module")
def sem(make_em):
    return make_em()


@pytest.fixture(scope="module")
def url(sem):
    with running(create_app(sem, model="tiny")) as base:
        yield base


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> bool:
    """Does the server close `sock` within `seconds` (sending `drip` every 0.2 s meanwhile)?"""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            pass
        except OSError:
            return True
        if drip:
            try:
                sock.sendall(drip)
            except OSError:
                return True
    return False


def finite(x) -> bool:
    """Every number in a JSON value is finite."""
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(finite(v) for v in x.values())
    if isinstance(x, list):
        return all(finite(v) for v in x)
    return True


# --- one huge prompt must not freeze everyone else ---------------------------------------------
def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(url, sem, tokenized):
    huge = "the cat is a dog " * 100_000  # 1.7 MB: thousands of times the 256-token context
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": huge}]}),
        ("/v1/completions", {"prompt": huge}),
        ("/v1/completions", {"prompt": huge, "echo": True, "max_tokens": 0, "logprobs": 1}),
    ):
        t = time.perf_counter()
        r = post(url, path, body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded"
        assert "at least" in err["message"] and f"holds {sem.n_ctx}" in err["message"]
        assert time.perf_counter() - t < 5
    assert max(tokenized, default=0) < 10_000  # never the huge text


def test_slow_request_checks_leave_the_event_loop_free(url, monkeypatch):
    """Settings checks (a JSON schema's conversion can take a while) run beside the event loop:
    /health answers meanwhile."""
    real = params.chat

    def slow(body, n_ctx):
        time.sleep(3)
        return real(body, n_ctx)

    monkeypatch.setattr(params, "chat", slow)
    t = threading.Thread(
        target=post, args=(url, "/v1/chat/completions", {"messages": HI, "max_tokens": 2})
    )
    t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    latency = time.perf_counter() - t0
    t.join(30)
    assert latency < 1.5, f"/health took {latency:.2f} s while a request was being checked"


def test_prompts_are_prepared_a_few_at_a_time(sem, monkeypatch):
    """Rendering and tokenizing take a thread each: a burst of requests does not take one
    thread per request."""
    at_once, most = [0], [0]
    lock = threading.Lock()
    real = sem.stream

    def slow(req):
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        time.sleep(0.3)
        with lock:
            at_once[0] -= 1
        return real(req)

    with running(create_app(sem)) as base:
        monkeypatch.setattr(sem, "stream", slow)
        body = {"messages": HI, "max_tokens": 2, "temperature": 0}
        threads = [
            threading.Thread(target=post, args=(base, "/v1/chat/completions", body))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert 1 <= most[0] <= 2


# --- connections: headers and bodies in time, a cap on how many ---------------------------------
def test_headers_sent_a_byte_at_a_time_are_cut_off(sem):
    with running(create_app(sem), header_seconds=1.0) as base:
        with socket.create_connection(("127.0.0.1", port_of(base))) as s:
            s.sendall(b"GET /health HTTP/1.1\r\n")
            assert closed_within(s, 4, drip=b"X")
        with socket.create_connection(("127.0.0.1", port_of(base))) as s:  # kept alive, then
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the next request drips
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /health HTTP/1.1\r\n")
            assert closed_within(s, 4, drip=b"X")
        assert httpx.get(base + "/health").status_code == 200


def test_a_body_that_does_not_arrive_in_time_answers_408(sem):
    with running(create_app(sem, body_seconds=1.0)) as base:
        with socket.create_connection(("127.0.0.1", port_of(base))) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"mess'
            )
            s.settimeout(5)
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"request_timeout" in answer
            assert closed_within(s, 3)


def test_open_connections_are_capped(sem):
    with running(create_app(sem), max_connections=4) as base:
        idle = [socket.create_connection(("127.0.0.1", port_of(base))) for _ in range(4)]
        try:
            with socket.create_connection(("127.0.0.1", port_of(base))) as extra:
                extra.settimeout(5)
                answer = extra.recv(4096)
                assert answer.startswith(b"HTTP/1.1 503"), answer
                assert b"too_many_connections" in answer
                assert closed_within(extra, 3)
        finally:
            for s in idle:
                s.close()
        time.sleep(0.2)
        assert httpx.get(base + "/health").status_code == 200


# --- stopping ------------------------------------------------------------------------------------
def test_a_stop_signal_ends_the_running_reply_at_its_next_token(sem, monkeypatch):
    app = create_app(sem)
    servers = []

    def serving(config):
        servers.append(running_module.Serving(config, app.state.server.stop))
        return servers[-1]

    gate, fed = threading.Event(), []
    real_feed = TextStream.feed

    def feed(self, piece):  # the worker pauses inside its 3rd token
        fed.append(piece)
        if len(fed) == 3:
            gate.wait(30)
        return real_feed(self, piece)

    monkeypatch.setattr(TextStream, "feed", feed)
    body = {"messages": HI, "max_tokens": 200, "temperature": 0, "logit_bias": NO_END}
    chunks, waiting = [], []

    def stream(base):
        with httpx.stream(
            "POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as r:
            chunks.extend(line[6:] for line in r.iter_lines() if line.startswith("data: "))

    with running(app, server_class=serving) as base:
        streamer = threading.Thread(target=stream, args=(base,))
        streamer.start()
        deadline = time.monotonic() + 20
        while len(fed) < 3 or httpx.get(base + "/health").json()["queue"]["running"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        waiter = threading.Thread(
            target=lambda: waiting.append(post(base, "/v1/chat/completions", body))
        )
        waiter.start()
        while httpx.get(base + "/health").json()["queue"]["waiting"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        servers[0].handle_exit(signal.SIGTERM, None)
        time.sleep(0.2)
        gate.set()  # the token in progress finishes; the reply ends there
        streamer.join(10)
        waiter.join(10)
        assert time.monotonic() - t0 < 5
    assert chunks[-1] == "[DONE]"
    last = json.loads(chunks[-2])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["localeft"]["finish_reason"] == "interrupted"
    assert last["localeft"]["stats"]["generated_tokens"] < 10  # not the 200 asked for
    assert (
        waiting[0].status_code == 503 and "shutting down" in waiting[0].json()["error"]["message"]
    )


def test_a_second_stop_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    import uvicorn

    stopped = []
    s = running_module.Serving(uvicorn.Config(app=None), lambda: stopped.append(1))
    s.handle_exit(signal.SIGTERM, None)
    assert s.should_exit and exits == []
    s.handle_exit(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_sigterm_stops_localeft_serve_within_seconds(tiny, tmp_path):
    """The real command and the real signal: the reply in progress ends with a finish reason,
    the process exits within seconds (the reply asked for would take much longer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "localeft", "serve", "--port", str(port), "-c", "1024", "-t", "1"]
    cmd += ["--large-base", str(tiny.large_base), "--small-ft", str(tiny.small_ft)]
    cmd += ["--small-base", str(tiny.small_base)]
    env = {**os.environ, "PYTHONPATH": str(root), "XDG_STATE_HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, cwd=root, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        body = {"messages": HI, "max_tokens": 1000, "temperature": 0, "logit_bias": NO_END}
        events = []
        with httpx.stream(
            "POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as r:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 5:
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert time.monotonic() - t0 < 8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["localeft"]["finish_reason"] == "interrupted"
    assert last["localeft"]["stats"]["generated_tokens"] < 1000


# --- absurd values, padding, echo ---------------------------------------------------------------
@pytest.fixture(scope="module")
def padded_url(tmp_path_factory):
    """A server over three models whose vocabularies end in 16 unused (padding) ids."""
    d = tmp_path_factory.mktemp("padded")
    pad = BASE_VOCAB_SIZE + 16
    paths = {
        "large_base": write_model(d / "l.gguf", seed=101, n_embd=64, n_layer=3, pad_to=pad),
        "small_ft": write_model(d / "f.gguf", seed=202, pad_to=pad),
        "small_base": write_model(d / "b.gguf", seed=303, pad_to=pad),
    }
    with Emulator(**paths, n_ctx=256) as em, running(create_app(em)) as base:
        yield base


@pytest.mark.parametrize("temperature", [1e50, 1e100, 1e300, 1.7976931348623157e308])
def test_absurd_temperatures_give_text_and_finite_numbers(padded_url, temperature):
    for extra in ({}, {"top_p": 0.9}, {"min_p": 0.01}):
        body = {"prompt": "hello", "max_tokens": 8, "temperature": temperature, "seed": 3}
        r = post(padded_url, "/v1/completions", {**body, "logprobs": 3, **extra})
        assert r.status_code == 200, r.text
        data = r.json()
        assert finite(data) and data["choices"][0]["text"]
        ids = [t["id"] for t in data["choices"][0]["localeft"]["tokens"]]
        assert len(ids) == 8 and max(ids) < BASE_VOCAB_SIZE  # never a padding id


def test_unused_ids_and_empty_content_are_refused(padded_url):
    r = post(padded_url, "/v1/completions", {"prompt": [5, BASE_VOCAB_SIZE + 3], "max_tokens": 1})
    assert r.status_code == 400 and "unused" in r.json()["error"]["message"]
    body = {"prompt": [BASE_VOCAB_SIZE], "echo": True, "max_tokens": 0, "logprobs": 1}
    assert post(padded_url, "/v1/completions", body).status_code == 400
    r = post(padded_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": []}]})
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]


def test_echo_gives_back_the_prompt_control_tokens_included(url, sem):
    prompt = "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"
    for max_tokens in (0, 2):
        body = {"prompt": prompt, "echo": True, "max_tokens": max_tokens, "logprobs": 1}
        choice = post(url, "/v1/completions", body).json()["choices"][0]
        assert choice["text"].startswith(prompt)
        lp = choice["logprobs"]
        assert "".join(lp["tokens"]).startswith(prompt)
        offsets = [sum(map(len, lp["tokens"][:i])) for i in range(len(lp["tokens"]))]
        assert lp["text_offset"] == offsets
    ids = sem.prompt_tokens(prompt)["ft"]  # token ids: their text, control tokens included
    body = {"prompt": ids, "echo": True, "max_tokens": 0}
    text = post(url, "/v1/completions", body).json()["choices"][0]["text"]
    assert text.count("<|im_start|>") == 2 and text.count("<|im_end|>") == 1


def test_events_never_carry_non_finite_numbers():
    from localeft.server.sse import event

    assert event({"a": [1.5, float("-inf")], "b": {"c": float("nan")}}) == (
        b'data: {"a": [1.5, null], "b": {"c": null}}\n\n'
    )
