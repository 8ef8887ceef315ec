"""`localeft serve --rpc` outlives its RPC servers: the engine runs in a supervised worker
process (server/supervisor.py), so when a server dies (SIGKILL), freezes (SIGSTOP) or its link
drops, llama.cpp ends that process, not the server. Requests in flight and in line get a 503
naming the server at once, /health says degraded, the worker restarts with backoff, and once
the RPC server is back requests succeed again, without restarting the server.

Real `localeft rpc-server` subprocesses on loopback; the link is tests/linkproxy.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from linkproxy import LinkProxy
from liveserver import running
from rpcservers import ROOT, Server
from tinymodels import EOS_ID, IM_END_ID

from localeft.server.app import create_app
from localeft.server.supervisor import RemoteEmulator, Supervisor

TIMEOUT = 2  # --rpc-timeout: a frozen server ends the engine after this long
BOUND = 30  # seconds: nothing may wait longer than this for an answer
SHORT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0}
# long enough to be generating when the server goes: the end tokens banned
LONG = {
    "messages": [{"role": "user", "content": "tell me"}],
    "max_tokens": 1500,
    "logit_bias": {str(EOS_ID): -100, str(IM_END_ID): -100},
}


def trio_kw(tiny, endpoint: str) -> dict:
    roles = ("large_base", "small_ft", "small_base")
    kw = {r: str(getattr(tiny, r)) for r in roles}
    return {**kw, "n_ctx": 2048, "rpc": [endpoint], "rpc_timeout": TIMEOUT, "rpc_output": "remote"}


@pytest.fixture
def serve():
    """serve(endpoint) -> the base URL of a server whose engine uses that RPC server."""
    opened = []

    def start(tiny, endpoint: str) -> str:
        supervisor = Supervisor(trio_kw(tiny, endpoint), backoff=(0.5, 2.0))
        supervisor.start()
        em = RemoteEmulator(supervisor)
        ctx = running(create_app(em, model="tiny"))
        opened.append((ctx, em))
        return ctx.__enter__()

    yield start
    for ctx, em in reversed(opened):
        ctx.__exit__(None, None, None)
        em.close()


def restart_on(port: int) -> Server:
    """A new rpc-server on the port of the one that went away."""
    s = Server.__new__(Server)
    s.port, s.endpoint = port, f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "localeft", "rpc-server", "--port", str(port), "-t", "1"]
    s.proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return s


def chat(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=BOUND)


def streaming_until_first_piece(url: str, body: dict, events: list) -> threading.Thread:
    """Stream `body` in a thread, appending each SSE data object to `events`."""
    started = threading.Event()

    def run() -> None:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=BOUND
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
                    if len(events) >= 3:
                        started.set()
        started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(BOUND)
    return t


def recovered(url: str) -> dict:
    """/health once it says ok again (within BOUND)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        health = httpx.get(url + "/health", timeout=BOUND)
        if health.status_code == 200:
            return health.json()
        time.sleep(0.2)
    raise AssertionError(f"still degraded: {health.json()}")


def test_a_killed_rpc_server_fails_requests_at_once_and_the_server_recovers(tiny, serve):
    server = Server()
    try:
        url = serve(tiny, server.endpoint)
        models = httpx.get(url + "/v1/models", timeout=BOUND)  # what the worker loaded
        assert models.status_code == 200, models.text
        facts = models.json()["data"][0]["localeft"]
        assert facts["weights"] == "mmap" and facts["adapters"] == {}
        assert facts["expert_weights"] == [1.0] and facts["files"]["base"] == str(tiny.large_base)
        want = chat(url, SHORT).json()["choices"][0]["message"]["content"]
        events: list = []
        streaming = streaming_until_first_piece(url, LONG, events)
        queued: list = []
        waiting = threading.Thread(target=lambda: queued.append(chat(url, SHORT)), daemon=True)
        waiting.start()
        time.sleep(0.3)  # the second request is in line behind the stream
        server.proc.kill()
        killed = time.monotonic()
        streaming.join(BOUND)
        waiting.join(BOUND)
        assert time.monotonic() - killed < 10
        error = events[-1]["error"]  # the stream ends with an OpenAI-shaped error
        assert error["code"] == "engine_unavailable" and error["type"] == "server_error"
        assert f"lost the connection to RPC server {server.endpoint}" in error["message"]
        (r,) = queued
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert server.endpoint in r.json()["error"]["message"]
        health = httpx.get(url + "/health", timeout=BOUND)
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert server.endpoint in health.json()["engine"]["reason"]
        r = chat(url, SHORT)  # meanwhile: at once, with a hint when to retry
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "the engine is restarting" in r.json()["error"]["message"]
        server = restart_on(server.port)
        assert recovered(url)["engine"]["restarts"] >= 1
        again = chat(url, SHORT)
        assert again.status_code == 200
        assert again.json()["choices"][0]["message"]["content"] == want
    finally:
        server.stop()


def test_a_frozen_rpc_server_fails_the_request_after_the_timeout_then_recovers(tiny, serve):
    server = Server()
    try:
        url = serve(tiny, server.endpoint)
        events: list = []
        streaming = streaming_until_first_piece(url, LONG, events)
        server.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        streaming.join(BOUND)
        took = time.monotonic() - frozen
        assert TIMEOUT <= took < TIMEOUT + 10, took
        error = events[-1]["error"]
        assert f"no answer from RPC server {server.endpoint} in time" in error["message"]
        assert httpx.get(url + "/health", timeout=BOUND).json()["status"] == "degraded"
        server.proc.send_signal(signal.SIGCONT)
        recovered(url)
        assert chat(url, SHORT).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("drop", ["cut", "freeze"])
def test_a_link_that_drops_fails_the_request_then_the_server_recovers(tiny, serve, drop):
    """cut: every connection reset (a reboot on the way); freeze: nothing gets through any
    more, connections open (a pulled cable): the RPC timeout ends the engine."""
    server = Server()
    host, port = server.endpoint.split(":")
    try:
        with LinkProxy((host, int(port))) as link:
            url = serve(tiny, link.endpoint)
            events: list = []
            streaming = streaming_until_first_piece(url, LONG, events)
            getattr(link, drop)()
            dropped = time.monotonic()
            streaming.join(BOUND)
            assert time.monotonic() - dropped < TIMEOUT + 10
            error = events[-1]["error"]
            assert error["code"] == "engine_unavailable" and link.endpoint in error["message"]
            if drop == "freeze":
                link.cut()  # the link comes back: stale connections reset, new ones pass
                link.thaw()
            recovered(url)
            assert chat(url, SHORT).status_code == 200
    finally:
        server.stop()


def test_a_request_for_a_restarting_engine_is_answered_at_once(tiny, serve):
    server = Server()
    try:
        url = serve(tiny, server.endpoint)
        server.stop()
        r = chat(url, SHORT)  # the engine finds out on this request's first remote call
        assert r.status_code == 503
        t = time.monotonic()
        for _ in range(5):
            r = chat(url, SHORT)
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert time.monotonic() - t < 5
        assert httpx.get(url + "/tokenizer_info", timeout=BOUND).status_code == 200
    finally:
        server.stop()


def test_serve_with_rpc_runs_the_engine_in_a_worker_process(tiny, tmp_path, monkeypatch):
    """The command line: --rpc gives the server a supervised engine; a server it cannot reach
    at start is the usual one-line error, nothing served."""
    from click.testing import CliRunner
    from hubcache import isolate
    from rpcservers import free_port

    from localeft import server as server_module
    from localeft.cli import cli

    isolate(tmp_path, monkeypatch)
    seen = []

    def fake(em, **kw):
        seen.append((type(em).__name__, em.health()["status"], em.n_ctx))

    monkeypatch.setattr(server_module, "serve", fake)
    args = ["serve", "-c", "256", "-t", "1", "--rpc-output", "remote"]
    for role in ("large_base", "small_ft", "small_base"):
        args += [f"--{role.replace('_', '-')}", str(getattr(tiny, role))]
    server = Server()
    try:
        r = CliRunner().invoke(cli, [*args, "--rpc", server.endpoint], catch_exceptions=False)
    finally:
        server.stop()
    assert r.exit_code == 0, r.output
    assert seen == [("RemoteEmulator", "ok", 256)]
    closed = f"127.0.0.1:{free_port()}"
    r = CliRunner().invoke(cli, [*args, "--rpc", closed])
    assert r.exit_code == 1 and len(seen) == 1
    assert r.stderr.startswith(f"localeft: error: cannot reach RPC server {closed}")
    assert len(r.stderr.splitlines()) == 1


def test_ctrl_c_ends_the_reply_as_without_rpc(tiny, tmp_path):
    """Ctrl-C reaches the whole process group, the engine's worker included: the worker leaves
    the stop to the server, whose client gets the reply so far and its end, not an error."""
    from rpcservers import free_port

    server = Server()
    port = free_port()
    cmd = [sys.executable, "-m", "localeft", "serve", "--port", str(port), "-c", "2048"]
    cmd += ["--rpc", server.endpoint, "--rpc-output", "remote"]
    for role in ("large_base", "small_ft", "small_base"):
        cmd += [f"--{role.replace('_', '-')}", str(getattr(tiny, role))]
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
                time.sleep(0.2)
        events: list = []
        streaming = streaming_until_first_piece(url, LONG, events)
        os.killpg(p.pid, signal.SIGINT)
        streaming.join(BOUND)
        p.wait(BOUND)
    finally:
        if p.poll() is None:
            p.kill()
        server.stop()
    assert "error" not in events[-1], events[-1]
    assert events[-1]["localeft"]["finish_reason"] == "interrupted"


def test_the_cli_as_a_client_of_a_degraded_server_says_so_and_the_chat_goes_on(tiny, serve):
    """While the worker restarts, /v1/models still answers from the parent, so `--server`
    connects; each request is then one line naming the restart, and a chat stays open (its
    message kept for /retry) instead of ending."""
    from click.testing import CliRunner

    from localeft.cli import cli

    server = Server()
    try:
        url = serve(tiny, server.endpoint)
        server.stop()
        assert chat(url, SHORT).status_code == 503  # the engine finds out
        assert httpx.get(url + "/v1/models", timeout=BOUND).status_code == 200
        r = CliRunner().invoke(cli, ["generate", "--server", url, "-n", "3", "hi"])
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
        assert "the engine is restarting" in r.stderr
        r = CliRunner().invoke(
            cli, ["chat", "--server", url, "-n", "3"], input="hi\n/retry\n/bye\n"
        )
        assert r.exit_code == 0, r.output
        assert r.stderr.count("localeft: error: ") == 2 and "engine is restarting" in r.stderr
    finally:
        server.stop()
