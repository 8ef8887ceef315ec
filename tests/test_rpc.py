"""The large base's layers on other machines through llama.cpp's RPC backend.

Every server here is a real `localeft rpc-server` subprocess on a free loopback port, stopped by
the fixture that started it (SIGINT, then SIGKILL past a bound). No address but 127.0.0.1.
Nothing is skipped: scripts/install.sh (and so .ci/run) builds llama.cpp with -DGGML_RPC=ON.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hubcache import isolate
from rpcservers import Server, free_port, trio_kw

from localeft import Emulator, InvalidParameterError, LocaleftError
from localeft import placement, rpc
from localeft.backend import Model
from localeft.native import supports_gpu_offload
from localeft.cli import cli
from localeft.errors import InsufficientMemoryError, RpcError

ROOT = Path(__file__).resolve().parent.parent
FAST = ["-c", "256", "-t", "1"]
BOUND = 30  # seconds: a client whose server died must be gone well before this


@pytest.fixture
def make_servers():
    """make_servers(n) -> n running servers, all stopped when the test ends."""
    started: list[Server] = []

    def make(n: int) -> list[Server]:
        for _ in range(n):
            started.append(Server())
        return started[-n:]

    yield make
    for s in started:
        s.stop()


def trio_args(tiny) -> list[str]:
    args = list(FAST)
    for role in ("large_base", "small_ft", "small_base"):
        args += [f"--{role.replace('_', '-')}", str(getattr(tiny, role))]
    return args


# --- exactness ---------------------------------------------------------------------------------
PROMPTS = ["hello the cat", "a dog is", [{"role": "user", "content": "hi there"}]]


@pytest.mark.parametrize("output", ["remote", "local"])
def test_every_layer_remote_gives_the_local_distribution(tiny, make_em, servers, output):
    """Tolerance: none, with the output layer on the last server or kept here. The remote CPU
    backend runs the same ggml kernels on the same F32 weights (no repacking applies to F32),
    and ggml splits a matrix product by rows, so every dot product is summed in the same order:
    given the same requests, the log-probabilities agree to the last bit (max |diff| = 0.0).
    What does change sums is batching: a KV cache filled in other chunks (the shared `em` after
    other tests) differs by ~3e-6 here or there, RPC or not; hence a fresh local Emulator with
    the same history. On real Q4_K_M models the same holds against a local load without
    repacking (max |dp| 0.0 and 5e-7); the layout this machine repacks weights into rounds
    differently, RPC or not (docs/DISTRIBUTED.md)."""
    eps = [s.endpoint for s in servers]
    em = make_em()
    with Emulator(**trio_kw(tiny, rpc=eps, rpc_output=output)) as remote:
        place = {row["device"]: row for row in remote.placement}
        here = output == "local"
        assert place["local"]["layers"] == ("input+output" if here else "input")
        assert place["local"]["n_layers"] == 0 and place[eps[0]]["layers"] == "0-1"
        assert place[eps[1]]["layers"] == ("2" if here else "2+output")
        assert all(place[e]["weights_mib"] > 0 for e in eps)
        assert remote.rpc_output_choice == {"where": output, "why": f"rpc_output={output!r}"}
        for prompt in PROMPTS:
            for beta in (0.0, 1.0, 2.0):
                local, there = em.logprobs(prompt, beta=beta), remote.logprobs(prompt, beta=beta)
                assert np.array_equal(local, there), np.abs(local - there).max()
        for p in PROMPTS[:2]:
            assert np.array_equal(em.logprobs(p, after=[7, 8]), remote.logprobs(p, after=[7, 8]))


@pytest.mark.parametrize("output", ["remote", "local"])
def test_generation_over_rpc_is_identical_plain_and_speculative(tiny, make_em, servers, output):
    eps = [s.endpoint for s in servers]
    em = make_em()
    with Emulator(**trio_kw(tiny, rpc=eps, rpc_output=output)) as remote:
        for prompt in PROMPTS:
            want = em.generate(prompt, max_tokens=40) if isinstance(prompt, str) else None
            if want is None:
                want = em.chat(prompt, max_tokens=40)
                run = remote.chat
            else:
                run = remote.generate
            plain = run(prompt, max_tokens=40, speculative=False)
            spec = run(prompt, max_tokens=40, speculative=True)
            fixed = run(prompt, max_tokens=40, speculative=True, draft_tokens=4)
            assert plain.tokens == spec.tokens == fixed.tokens == want.tokens
            assert spec.stats.speculative and spec.stats.drafted > 0
        sampled = dict(max_tokens=30, temperature=0.9, top_p=0.95, seed=11, speculative=False)
        assert (
            remote.generate("the cat", **sampled).tokens == em.generate("the cat", **sampled).tokens
        )
        g = remote.generate("the cat", max_tokens=3)
        assert g.stats.placement == remote.placement
        json.dumps(g.stats.as_dict())  # placement travels in the stats as plain JSON


def test_a_split_keeps_layers_here_as_llama_cpp_places_them(tiny, make_em, servers):
    eps = [s.endpoint for s in servers]
    em = make_em()
    with Emulator(**trio_kw(tiny, rpc=eps, rpc_split=[1, 1, 2], rpc_output="remote")) as remote:
        place = {row["device"]: row for row in remote.placement}
        assert place["local"]["layers"] == "input+0-1"
        assert place[eps[0]]["layers"] == "2" and place[eps[1]]["layers"] == "output"
        # the reported placement is llama.cpp's own log, and our rule predicts it
        base = remote.group.models[Path(tiny.large_base).resolve()]
        named = {"CPU": -1} | {d.name: i for i, d in enumerate(remote.group.devices)}
        logged = [named[base.load_log.layers[il]] for il in range(4)]
        assert logged == remote.group.plan.layers() == [-1, -1, 0, 1]
        assert np.array_equal(em.logprobs("hello the cat"), remote.logprobs("hello the cat"))


def test_remote_weights_do_not_count_against_this_machines_memory(tiny, servers, monkeypatch):
    """The pre-load memory check counts what stays here: the small models, the large base's input
    embedding and local layers, their KV caches."""
    size = {
        r: Path(getattr(tiny, r)).stat().st_size for r in ("large_base", "small_ft", "small_base")
    }
    budget = sum(size.values()) - size["large_base"] // 2
    monkeypatch.setattr("localeft.ensemble.available_memory", lambda: budget)
    with pytest.raises(InsufficientMemoryError, match="RPC servers"):
        Emulator(**trio_kw(tiny, n_ctx=32))
    eps = [s.endpoint for s in servers]
    with Emulator(**trio_kw(tiny, n_ctx=32, rpc=eps, rpc_output="remote")) as em:
        assert em.placement[0]["layers"] == "input"
    with pytest.raises(InsufficientMemoryError):  # unless the split keeps most of it here
        Emulator(**trio_kw(tiny, n_ctx=32, rpc=[servers[0].endpoint], rpc_split=[1, 9]))


def test_check_and_verbose_say_where_the_layers_went(tiny, servers, tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)
    args = [*trio_args(tiny), "--rpc", servers[0].endpoint, "--rpc", servers[1].endpoint]
    args += ["--rpc-output", "remote"]
    r = CliRunner().invoke(cli, ["check", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "RPC: available" in r.stdout
    assert (
        f"large base: local input (0.1 MiB) | {servers[0].endpoint} layers 0-1 (0.3 MiB) | "
        f"{servers[1].endpoint} layers 2+output (0.3 MiB)"
    ) in r.stdout
    assert f"RPC links (round trip, to here): {servers[0].endpoint} " in r.stdout
    assert "\noutput layer: remote (rpc_output='remote')\n" in r.stdout
    r = CliRunner().invoke(
        cli, ["generate", "--json", "-v", "-n", "4", "--raw", *args, "hi"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    assert "large base: local input" in r.stderr
    assert json.loads(r.stdout)["stats"]["placement"][2]["layers"] == "2+output"


# --- faults ----------------------------------------------------------------------------------
def test_an_unreachable_server_is_a_one_line_error(tiny, tmp_path, monkeypatch):
    closed = f"127.0.0.1:{free_port()}"
    t = time.monotonic()
    with pytest.raises(RpcError, match=f"cannot reach RPC server {closed}: connection refused"):
        Emulator(**trio_kw(tiny, rpc=[closed]))
    assert time.monotonic() - t < 5
    # a listener that never answers (not an RPC server, or one busy with another client)
    silent = socket.create_server(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
    with silent, pytest.raises(RpcError, match=f"{endpoint} accepted .* did not answer"):
        rpc.probe(endpoint, timeout=0.5)
    isolate(tmp_path, monkeypatch)
    r = CliRunner().invoke(cli, ["generate", *trio_args(tiny), "--rpc", closed, "hi"])
    assert r.exit_code == 1 and r.stderr == (
        f"localeft: error: cannot reach RPC server {closed}: connection refused (is "
        "`localeft rpc-server` running there, on that port?)\n"
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(rpc="127.0.0.1:50052"), "list of 'HOST:PORT'"),
        (dict(rpc=["localhost"]), "not HOST:PORT"),
        (dict(rpc=["127.0.0.1:0"]), "port must be 1-65535"),
        (dict(rpc=["127.0.0.1:70000"]), "port must be 1-65535"),
        (dict(rpc=["[::1]:50052"]), "IPv4 only"),
        (dict(rpc=["a:1", "a:1"]), "given twice"),
        (dict(rpc=[]), "at least one"),
        (dict(rpc=["a:1"], rpc_split=[1, 1, 1]), "needs 1 weight .* or 2"),
        (dict(rpc=["a:1"], rpc_split=[0, 1]), "some RPC server"),
        (dict(rpc=["a:1"], rpc_split=[-1]), ">= 0"),
        (dict(rpc_split=[1]), "rpc_split needs rpc"),
        (dict(rpc=["a:1"], rpc_timeout=0), "rpc_timeout"),
    ],
)
def test_bad_rpc_settings_fail_before_anything_loads(tiny, kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        Emulator(**trio_kw(tiny, **kw))


def _read_until(stream, needle: bytes, seen: bytearray, deadline: float) -> None:
    while needle not in seen:
        assert time.monotonic() < deadline, bytes(seen)
        chunk = stream.read1(4096)
        assert chunk, bytes(seen)
        seen += chunk


def test_a_server_killed_mid_reply_ends_the_chat_with_every_finished_turn_saved(
    tiny, make_servers, tmp_path
):
    """llama.cpp aborts the process when a server's connection breaks (GGML_ABORT in
    ggml-rpc.cpp: "Remote RPC server crashed or returned malformed response"): localeft turns it
    into one line and exit status 1, and the chat history already holds every finished turn."""
    one, two = make_servers(2)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "localeft", "chat", *trio_args(tiny), "-c", "2048"]
    cmd += ["--rpc", one.endpoint, "--rpc", two.endpoint, "-n", "8", "--no-speculative"]
    p = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        seen = bytearray()
        p.stdin.write(b"hello\nthe cat is\n/set max_tokens 1500\ntell me a story\n")
        p.stdin.flush()
        _read_until(p.stdout, b"tell me a story\n", seen, deadline)
        start = len(seen)
        while len(seen) - start < 20:  # the third reply is streaming
            chunk = p.stdout.read1(4096)
            assert chunk, bytes(seen)
            seen += chunk
        two.proc.kill()
        killed = time.monotonic()
        _, err = p.communicate(timeout=BOUND)
        assert time.monotonic() - killed < BOUND
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    err = err.decode()
    assert p.returncode == 1, err
    assert f"localeft: error: lost the connection to RPC server {two.endpoint} (" in err, err
    assert "Traceback" not in err and "#0 " not in err  # no Python or gdb backtrace
    history = next((tmp_path / "localeft" / "chats").glob("*.json"))
    assert f"every finished turn is saved in {history}" in err
    saved = json.loads(history.read_text())
    roles = [m["role"] for m in saved["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in saved["messages"][::2]] == ["hello", "the cat is"]
    assert len(saved["replies"]) == 2
    assert one.proc.poll() is None  # the other server goes on serving


def test_a_server_that_stops_answering_ends_the_client_after_the_timeout(
    tiny, make_servers, tmp_path
):
    """A frozen server (or a network that drops packets) keeps the connection open: llama.cpp
    would wait forever; the watchdog ends the process after --rpc-timeout."""
    (server,) = make_servers(1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "localeft", "generate", *trio_args(tiny), "-c", "2048"]
    cmd += ["--rpc", server.endpoint, "--rpc-timeout", "2", "-n", "1500", "--raw", "tell me"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = bytearray()
        while len(seen) < 20:
            chunk = p.stdout.read1(4096)
            assert chunk, (bytes(seen), p.stderr.read())
            seen += chunk
        server.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        _, err = p.communicate(timeout=BOUND)
        took = time.monotonic() - frozen
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    err = err.decode()
    assert p.returncode == 1 and 2 <= took < BOUND, (took, err)
    assert f"localeft: error: no answer from RPC server {server.endpoint} in time" in err, err
    assert "(--rpc-timeout 2 s)" in err


# --- the server ------------------------------------------------------------------------------
def test_rpc_server_stops_cleanly_on_ctrl_c(make_servers):
    (server,) = make_servers(1)
    code, out, err = server.stop()
    assert code == 0, err
    assert out.startswith("localeft rpc-server: lending CPU")
    ours = [line for line in out.splitlines() if line.startswith("localeft rpc-server:")]
    assert f"on {server.endpoint}" in ours[0] and ours[-1] == "localeft rpc-server: stopped"
    assert "Traceback" not in err


def test_rpc_server_refuses_what_it_should(make_servers, tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)
    r = CliRunner().invoke(cli, ["rpc-server", "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code == 1 and "llama.cpp's RPC protocol has no authentication" in r.stderr
    assert "--trusted-network" in r.stderr and len(r.stderr.splitlines()) == 1
    (server,) = make_servers(1)
    r = CliRunner().invoke(cli, ["rpc-server", "--port", str(server.port)])
    assert r.exit_code == 1
    assert (
        r.stderr == f"localeft: error: cannot listen on {server.endpoint}: Address already in use\n"
    )
    r = CliRunner().invoke(cli, ["rpc-server", "--host", "::1"])
    assert r.exit_code == 1 and "not an IPv4 address" in r.stderr


# --- pieces --------------------------------------------------------------------------------------
def _dev(i: int, endpoint: str, free: int = 8 << 30) -> rpc.Device:
    return rpc.Device(i, endpoint, 0, f"RPC{i}", endpoint, free, free)


def test_plan_follows_llama_cpp_rule():
    a, b = _dev(0, "a:1"), _dev(1, "b:1")
    p = placement.plan(4, [a, b], None, layer_bytes=1 << 20)
    assert p.local_layers == 0 and p.n_gpu_layers == 5 and p.layers() == [0, 0, 0, 1, 1]
    p = placement.plan(4, [a, b], (1, 3), layer_bytes=1 << 20)
    assert p.layers() == [0, 0, 1, 1, 1]
    p = placement.plan(28, [a, b], (1, 1, 2), layer_bytes=1 << 20)
    assert p.local_layers == 14 and p.layers()[:14] == [-1] * 14
    assert p.layers()[14:] == [0] * 8 + [1] * 7
    # default: what does not fit on the servers stays here
    small = [_dev(0, "a:1", 3 << 20), _dev(1, "b:1", 3 << 20)]
    p = placement.plan(8, small, None, layer_bytes=1 << 20)
    assert p.local_layers == 5 and p.layers() == [-1] * 5 + [0, 0, 1, 1]
    with pytest.raises(RpcError, match="not enough for one layer"):
        placement.plan(8, [_dev(0, "a:1", 1 << 19)], None, layer_bytes=1 << 20)
    rows = placement.describe([-1, 0, 0, 1, 1], [a, b])
    assert [r["layers"] for r in rows] == ["input+0", "1-2", "3+output"]


def test_a_cpu_is_not_gpu_offload_in_an_rpc_build(tiny):
    """llama_supports_gpu_offload() is true in every RPC build; -ngl on a CPU must not switch
    localeft to its GPU settings (speculative on, no overlap, big passes)."""
    if rpc.local_gpu():
        pytest.skip("this machine has a GPU")
    assert not supports_gpu_offload()
    assert not Model(tiny.large_base, n_gpu_layers=99).offloaded
    with pytest.raises(LocaleftError):
        rpc.parse_endpoint("nothing")
