"""Scripting with the CLI: one weight layout for every door by default, `generate --jsonl` (many
prompts, one load) and `--server` (the CLI as a client of `localeft serve`). Every output that
goes another way is compared with the plain local command's, byte for byte."""

from __future__ import annotations

import inspect
import json

import httpx
import pytest
from click.testing import CliRunner
from clitools import FAST, assert_one_line_error, trio
from hubcache import isolate
from liveserver import running

from localeft import Emulator, LoRA, bench
from localeft.cli import cli
from localeft.client import Client, RemoteStream
from localeft.results import Generation, Score
from localeft.server.app import create_app


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALEFT_SERVER", raising=False)
    monkeypatch.delenv("LOCALEFT_API_KEY", raising=False)
    return isolate(tmp_path, monkeypatch)


def invoke(*args, input=None, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env)


def local(tiny, command, *args, input=None):
    return invoke(command, *trio(tiny), *args, input=input)


def paths(tiny, **override) -> list:
    """The tiny trio's model options alone (no -c, -t: a server's load is its own)."""
    return trio(tiny, **override)[len(FAST) :]


def without_stats(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "stats"}


@pytest.fixture(scope="module")
def served(make_em):
    """A `localeft serve` of the tiny trio (context 256, as the local commands' -c 256)."""
    em = make_em()
    with running(create_app(em, model="tiny")) as url:
        yield url


# --- one weight layout for every door ----------------------------------------------------------
class Recorder(Emulator):
    loads: list[bool] = []

    def __init__(self, *args, repack=False, **kw):
        Recorder.loads.append(repack)
        super().__init__(*args, repack=repack, **kw)


def test_every_command_loads_the_same_weight_layout_by_default(tiny, tmp_path, monkeypatch):
    """generate, compare, chat, score, eval and serve mmap the weights unless --repack says
    otherwise, as the Python API and `bench` do: their outputs agree by default."""
    monkeypatch.setattr("localeft.engine.Emulator", Recorder)
    monkeypatch.setattr("localeft.server.serve", lambda em, **kw: None)
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"prompt": "a", "choices": [" b", " c"], "answer": 0}) + "\n")
    commands = [
        ("generate", "-n", "2", "hi"),
        ("compare", "-n", "2", "hi"),
        ("score", "hi", " there"),
        ("eval", items),
        ("serve",),
    ]
    for flags, layout in (((), False), (("--repack",), True), (("--no-repack",), False)):
        Recorder.loads.clear()
        for command, *args in commands:
            r = local(tiny, command, *flags, *args)
            assert r.exit_code == 0, r.output
        r = local(tiny, "chat", *flags, "-n", "2", input="hi\n")
        assert r.exit_code == 0, r.output
        assert Recorder.loads == [layout] * (len(commands) + 1)
    assert inspect.signature(Emulator).parameters["repack"].default is False
    assert inspect.signature(bench.run).parameters["repack"].default is False


def test_the_weight_layout_is_reported(tiny, em, served):
    g = em.generate("hello", max_tokens=3)
    assert g.stats.weights == em.weights == "mmap"  # F32 models: nothing llama.cpp repacks
    r = local(tiny, "generate", "-n", "3", "-v", "hello")
    assert "weights: mmap" in r.stderr
    r = local(tiny, "generate", "-n", "3", "--json", "hello")
    assert json.loads(r.stdout)["stats"]["weights"] == "mmap"
    r = local(tiny, "check")
    assert r.exit_code == 0 and "weights: mmap (--repack:" in r.stdout, r.output
    info = httpx.get(served + "/v1/models").json()["data"][0]["localeft"]
    assert info["weights"] == "mmap" and info["repack"] is False


# --- generate --jsonl ----------------------------------------------------------------------------
INTEGER = '{"type": "integer"}'
LINES = [
    ({"prompt": "hello there"}, ["--json"]),
    ({"prompt": "hello", "max_tokens": 5, "mode": "large"}, ["--json", "-n5", "--mode", "large"]),
    (
        {"prompt": "once", "temperature": 0.9, "seed": 7, "top_k": 40, "beta": 1.5},
        ["--json", "--temp", "0.9", "--seed", "7", "--top-k", "40", "--beta", "1.5"],
    ),
    ({"prompt": "hi", "logprobs": 3, "stop": ["a"]}, ["--json", "--logprobs", "3", "--stop", "a"]),
    (
        {"messages": [{"role": "system", "content": "Brief."}, {"role": "user", "content": "hi"}]},
        ["--json", "--system", "Brief.", "hi"],
    ),
    (
        {"prompt": "x", "repeat_penalty": 1.3, "logit_bias": {"5": float("-inf")}, "mode": "small"},
        ["--json", "--repeat-penalty", "1.3", "-l", "5-inf", "--mode", "small"],
    ),
    ({"prompt": "n", "json_schema": {"type": "integer"}}, ["--json", "--json-schema", INTEGER]),
]  # fmt: skip


def test_jsonl_gives_what_generate_json_gives_line_by_line(tiny, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(d) for d, _ in LINES) + "\n")
    r = local(tiny, "generate", "-n", "8", "--jsonl", path)
    assert r.exit_code == 0, r.output
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["line"] for d in out] == list(range(1, len(LINES) + 1))
    for d, (line, flags) in zip(out, LINES):
        prompt = [] if "messages" in line else [line["prompt"]]
        one = local(tiny, "generate", "-n", "8", *flags, *prompt)
        assert one.exit_code == 0, one.output
        expected = without_stats(json.loads(one.stdout))
        assert without_stats({k: v for k, v in d.items() if k != "line"}) == expected
    assert out[1]["mode"] == "large" and len(out[1]["tokens"]) <= 5
    assert 5 not in out[5]["tokens"]  # -inf bias on the line


def test_jsonl_answers_bad_lines_and_goes_on(tiny, tmp_path):
    lines = [
        '{"prompt": "one", "id": "a"}',
        '{"prompt": "two", "temprature": 1}',
        "not json",
        '{"prompt": "three", "beta": -1, "id": 3}',
        "",
        '"four"',
        '{"prompt": "five", "logit_bias": {"99999": 1}}',
        '{"messages": []}',
        '{"prompt": "six", "mode": ["base"]}',
        b"\xff\xfe",
        b"[" * 100_000,
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    r = local(tiny, "generate", "-n", "3", "--jsonl", path)
    assert_one_line_error(r, 1, "8 of 10 lines", str(path))
    out = {d["line"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert list(out) == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]  # in order; the blank one skipped
    assert out[1]["id"] == "a" and out[1]["finish_reason"] in ("length", "eog")
    assert out[6]["text"] is not None and "error" not in out[6]
    assert "unknown field 'temprature'" in out[2]["error"]
    assert "not JSON" in out[3]["error"]
    assert out[4] == {"line": 4, "id": 3, "error": "beta must be between 0 and 1e+06, got -1"}
    assert "logit_bias token id" in out[7]["error"]  # found when the line runs: the vocabulary
    assert "messages" in out[8]["error"] and "mode" in out[9]["error"]
    assert "UTF-8" in out[10]["error"] and "nested too deep" in out[11]["error"]


def test_jsonl_reads_stdin_and_a_sampled_line_says_how_to_repeat_it(tiny):
    r = local(
        tiny, "generate", "-n", "6", "--jsonl", "-", input='{"prompt": "hi", "temperature": 1}\n'
    )
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    seed = first["settings"]["seed"]
    assert isinstance(seed, int)
    again = local(
        tiny,
        "generate",
        "-n",
        "6",
        "--jsonl",
        "-",
        input=json.dumps({"prompt": "hi", "temperature": 1, "seed": seed}),
    )
    assert without_stats(json.loads(again.stdout)) == without_stats(first)


def test_ctrl_c_keeps_the_lines_written(tiny, tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ("one", "two", "three")))
    runs = []
    from localeft.commands import batch

    real = batch.run

    def interrupted(em, prompt, **kw):
        runs.append(prompt)
        if len(runs) == 2:
            raise KeyboardInterrupt
        return real(em, prompt, **kw)

    monkeypatch.setattr(batch, "run", interrupted)
    r = local(tiny, "generate", "-n", "3", "--jsonl", path)
    assert r.exit_code == 130 and "1 of 3 lines written" in r.stderr, r.output
    [line] = r.stdout.splitlines()
    assert json.loads(line)["line"] == 1


def test_jsonl_usage_errors(tiny, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "x"}\n')
    for extra in (["PROMPT"], ["--explain"], ["--html", tmp_path / "x.html"]):
        r = local(tiny, "generate", "--jsonl", path, *extra)
        assert r.exit_code == 2 and "--jsonl" in r.output and "Traceback" not in r.output
    r = local(tiny, "generate", "--jsonl", tmp_path / "missing.jsonl")
    assert r.exit_code == 1 and "missing.jsonl" in r.output


# --- --server --------------------------------------------------------------------------------
GENERATE_CASES = [
    ["-n", "12", "hello there"],
    ["-n", "12", "--temp", "0.8", "--seed", "3", "--top-p", "0.9", "hello"],
    ["-n", "12", "--json", "--logprobs", "3", "--raw", "once upon"],
    ["-n", "12", "--explain", "hello"],
    ["-n", "8", "--mode", "large", "--beta", "0.5", "hi"],
    ["-n", "16", "--json-schema", '{"type": "integer"}', "a number"],
    ["-n", "16", "--repeat-penalty", "1.5", "-l", "5-inf", "--stop", "a", "--json", "x"],
    ["-n", "12", "--temp", "1", "--seed", "5", "--draft", "3", "--json", "hi"],
]


@pytest.mark.parametrize("args", GENERATE_CASES, ids=lambda a: " ".join(a[2:4]))
def test_generate_through_the_server_prints_the_local_bytes(tiny, served, args):
    here = local(tiny, "generate", *args)
    there = invoke("generate", "--server", served, *args)
    assert here.exit_code == there.exit_code == 0, there.output
    if "--json" in args:
        a, b = json.loads(here.stdout), json.loads(there.stdout)
        assert without_stats(a) == without_stats(b)  # text, token ids, log-probs: exactly
        assert a["stats"]["weights"] == b["stats"]["weights"]
    else:
        assert here.stdout == there.stdout


def test_score_and_jsonl_through_the_server_print_the_local_bytes(tiny, served, tmp_path):
    for args in (
        ["hello world", " and more", "--per-token"],
        ["--chat", "say hi", "hi!", "--json", "--beta", "0.5"],
    ):
        here, there = local(tiny, "score", *args), invoke("score", "--server", served, *args)
        assert here.exit_code == there.exit_code == 0, there.output
        assert here.stdout == there.stdout
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(d) for d, _ in LINES) + "\n")
    here = local(tiny, "generate", "-n", "8", "--jsonl", path)
    there = invoke("generate", "-n", "8", "--jsonl", path, env={"LOCALEFT_SERVER": served})
    assert here.exit_code == there.exit_code == 0, there.output
    a = [without_stats(json.loads(x)) for x in here.stdout.splitlines()]
    assert a == [without_stats(json.loads(x)) for x in there.stdout.splitlines()]


def test_chat_through_the_server_prints_the_local_bytes(tiny, served):
    script = "hello there\n/set beta 0.5\nhow are you\n/explain on\nmore\n/retry\n/mode large\nok\n"
    here = local(tiny, "chat", "-n", "8", input=script)
    there = invoke("chat", "--server", served, "-n", "8", input=script)
    assert here.exit_code == there.exit_code == 0, there.output
    assert here.stdout == there.stdout


def test_a_reply_stopped_on_the_client_keeps_its_text_and_frees_the_server(
    tiny, served, monkeypatch, tmp_path
):
    pieces = []
    real = RemoteStream.__next__

    def interrupted(self):
        if len(pieces) == 3:
            raise KeyboardInterrupt
        pieces.append(real(self))
        return pieces[-1]

    monkeypatch.setattr(RemoteStream, "__next__", interrupted)
    saved = tmp_path / "chat.json"
    r = invoke("chat", "--server", served, "-n", "40", input=f"hello\n/save {saved}\n")
    assert r.exit_code == 0 and "partial reply is kept" in r.stderr, r.output
    reply = json.loads(saved.read_text())["messages"][-1]
    assert reply == {"role": "assistant", "content": "".join(pieces)}
    monkeypatch.setattr(RemoteStream, "__next__", real)
    r = invoke("generate", "--server", served, "-n", "4", "hi")  # the server's line is free
    assert r.exit_code == 0, r.output


def test_the_server_must_serve_what_was_asked_for(tiny, served):
    here = ["generate", "--server", served, "-n", "2"]
    r = invoke(*here, *paths(tiny, large_base=tiny.padded), "hi")
    assert_one_line_error(r, 1, "serves", "padded.gguf")
    expert = f"{tiny.small_ft}:{tiny.small_base}:0.5"  # the same files, another weight
    r = invoke(*here, "--large-base", tiny.large_base, "--expert", expert, "hi")
    assert_one_line_error(r, 1, "at weight 1, not the 0.5 asked for")
    r = invoke(*here, "-c", "512", "hi")
    assert_one_line_error(r, 1, "context of 256 tokens")
    r = invoke(*here, "--repack", "hi")
    assert_one_line_error(r, 1, "--repack")
    r = invoke(*here, "--base-prompt", "transcript", "hi")
    assert_one_line_error(r, 1, "--base-prompt transcript")
    r = invoke(*here, "--preset", "qwen2.5-7b", "hi")
    assert_one_line_error(r, 1, "not downloaded here")
    r = invoke(*here, "-ngl", "1", "hi")
    assert r.exit_code == 2 and "changes their numbers" in r.output, r.output
    r = invoke(*here, "-t", "1", "--rpc", "127.0.0.1:1", "-c", "256", "hi")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert r.stderr.count("is ignored with --server") == 2
    r = invoke(*here, *paths(tiny), "--no-repack", "--base-prompt", "template", "hi")
    assert r.exit_code == 0, r.output  # what it serves, named explicitly


def test_a_server_that_cannot_answer_is_one_line(tiny, served, sem_key_url):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = invoke("generate", "--server", closed, "hi")
    assert_one_line_error(r, 1, "cannot reach a localeft server", closed)
    r = invoke("score", "--server", served + "/elsewhere", "a", "b")
    assert_one_line_error(r, 1, "not a localeft server")
    r = invoke("chat", "--server", "ftp://x", input="hi\n")
    assert_one_line_error(r, 1, "http://HOST:PORT")
    r = invoke("generate", "--server", sem_key_url, "hi")
    assert_one_line_error(r, 1, "LOCALEFT_API_KEY")
    r = invoke("generate", "--server", sem_key_url, "-n", "2", "hi", env={"LOCALEFT_API_KEY": "k"})
    assert r.exit_code == 0, r.output
    r = invoke(
        "generate", "--server", served, "--temp", "0.5", "--top-p", "1", "-l", "99999+1", "hi"
    )
    assert_one_line_error(r, 1, "logit_bias token id")  # refused by the server, said as locally


@pytest.fixture(scope="module")
def sem_key_url(make_em):
    with running(create_app(make_em(), model="tiny", api_key="k")) as url:
        yield url


# --- what crosses the wire ---------------------------------------------------------------------
def test_results_read_back_exactly(em, served):
    g = em.generate("hello", max_tokens=6, temperature=0.9, seed=1, logprobs=3)
    assert Generation.from_dict(json.loads(json.dumps(g.as_dict()))) == g
    s = em.score("hello", " world", betas=[0, 2], top=2)
    assert Score.from_dict(json.loads(json.dumps(s.as_dict()))) == s
    c = Client(served)
    assert c.score("hello", " world", betas=[0, 2], top=2) == s
    assert c.prompt_tokens("hello") == em.prompt_tokens("hello")


def test_the_client_endpoints_check_what_they_get(served, em):
    def post(path, body):
        return httpx.post(served + "/localeft/v1/" + path, json=body, timeout=30)

    r = post("generate", {"prompt": "hi", "settings": {"temprature": 1}})
    assert r.status_code == 400 and "unknown setting 'temprature'" in r.json()["error"]["message"]
    r = post("generate", {"prompt": "hi", "settings": {"max_tokens": 0}})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = post("tokenize", {"prompt": "hello " * 300})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert err["n_ctx"] == em.n_ctx and err["tokens"] > em.n_ctx
    r = post("score", {"prompt": "a", "continuation": ""})
    assert r.status_code == 400 and "continuation" in r.json()["error"]["message"]


# --- what a client process loads -----------------------------------------------------------------
def test_a_client_call_loads_neither_llama_cpp_nor_numpy(served):
    """`generate --server` starts as fast as Python and click allow: the models' libraries are
    the server's business."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from localeft.cli import main\n"
        f"sys.argv = ['localeft', 'generate', '--server', {served!r}, '-n', '2', 'hi']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('numpy', 'llama_cpp') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


def test_every_module_loads_llama_cpp_before_numpy():
    """CUDA builds crashed when NumPy was loaded before llama.cpp; with the package's names
    loaded lazily, each module that imports NumPy imports llama_cpp first itself."""
    import ast
    from pathlib import Path

    import localeft

    root = Path(localeft.__file__).parent
    for path in sorted(root.rglob("*.py")):
        order = []
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                order += [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                order.append(node.module.split(".")[0])
        if "numpy" in order:
            assert "llama_cpp" in order[: order.index("numpy")], path


def test_jsonl_knows_every_setting_a_request_takes():
    from localeft.commands import batch
    from localeft.request import build

    assert batch.SETTINGS | {"mode"} == set(build.__kwdefaults__)


def test_jsonl_shows_a_progress_bar_only_beside_redirected_results(monkeypatch):
    import io

    from localeft.commands import batch

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for err, out, bar in (
        (Tty(), io.StringIO(), True),
        (Tty(), Tty(), False),
        (io.StringIO(), io.StringIO(), False),
    ):
        monkeypatch.setattr("sys.stderr", err)
        monkeypatch.setattr("sys.stdout", out)
        with batch.progress(3) as b:
            assert (b is not None) == bar
            if b is not None:
                b.update(3)
        assert ("3/3" in err.getvalue()) == bar


def test_a_server_with_a_lora_is_checked_and_prints_the_local_bytes(tiny, adapters, make_em):
    """The adapters are part of what must match: the same adapter and scale prints the local
    bytes; none, another scale or another adapter is a one-line error before anything runs."""
    small = ["--large-base", tiny.large_base, "--small-base", tiny.small_base]
    lora = ["--small-ft-lora", f"{adapters.a}:0.5"]
    em = make_em(small_ft=LoRA(tiny.small_base, adapters.a, scale=0.5))
    with running(create_app(em, model="tiny")) as url:
        args = ["-n", "8", "--json", "hi"]
        here = invoke("generate", *FAST, *small, *lora, *args)
        there = invoke("generate", "--server", url, *small, *lora, *args)
        assert here.exit_code == there.exit_code == 0, there.output
        assert without_stats(json.loads(here.stdout)) == without_stats(json.loads(there.stdout))
        r = invoke("generate", "--server", url, *args)  # no model options: the server's
        assert r.exit_code == 0, r.output
        for other, shown in (
            (["--small-ft-lora", f"{adapters.a}:1"], "a.gguf x1"),
            (["--small-ft-lora", f"{adapters.b}:0.5"], "b.gguf x0.5"),
        ):
            r = invoke("generate", "--server", url, *small, *other, "hi")
            assert_one_line_error(r, 1, "LoRA a.gguf x0.5", shown)
        r = invoke("generate", "--server", url, *paths(tiny), "hi")
        assert_one_line_error(r, 1, "serves")
