"""The command line under abuse: bad bytes, full disks, Ctrl-C anywhere, contexts that fill up,
resource limits. Every case ends in one line and an exit code, and the chat loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import ctrl_c_at_token, assert_one_line_error, invoke, trio
from hubcache import isolate

from localeft import backend, ensemble
from localeft import repl as repl_module
from localeft.context import Context

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    return isolate(tmp_path, monkeypatch)


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    """The real program in a child process (for bytes, closed streams and devices)."""
    env = {**os.environ, "LOCALEFT_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "localeft", *args], cwd=ROOT, env=env, timeout=120, **kw
    )


def assert_one_line(stderr: bytes, needle: str) -> None:
    text = stderr.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("localeft: error: "), text
    assert needle in text and "Traceback" not in text, text


# --- bytes and streams ------------------------------------------------------------------------
def test_invalid_utf8_on_stdin_in_the_prompt_and_in_a_config(tiny, tmp_path):
    r = run_cli("generate", *trio(tiny), input=b"caf\xe9 \xff\xfe", capture_output=True)
    assert r.returncode == 1
    assert_one_line(r.stderr, "not valid UTF-8")
    r = run_cli("generate", *trio(tiny), b"caf\xe9", capture_output=True)
    assert r.returncode == 1
    assert_one_line(r.stderr, "not valid UTF-8")
    config = tmp_path / "bad.toml"
    config.write_bytes(b'default = "caf\xe9"\n')
    assert_one_line_error(invoke("models", "--config", config), 1, "not valid UTF-8")


def test_a_full_disk_and_a_closed_stdout_are_errors(tiny):
    with open("/dev/full", "w") as full:
        r = run_cli(
            "generate", *trio(tiny), "-n", "4", "hello", stdout=full, stderr=subprocess.PIPE
        )
    assert r.returncode == 1
    assert_one_line(r.stderr, "cannot write the output: No space left on device")
    r = run_cli(
        "generate", *trio(tiny), "hello", stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1)
    )
    assert r.returncode == 1
    assert_one_line(r.stderr, "standard output is closed")


def test_ctrl_c_while_loading_exits_130_with_one_line(tiny, monkeypatch):
    import llama_cpp

    def loading(path, params):
        os.kill(os.getpid(), 2)  # Ctrl-C lands while llama.cpp reads the weights
        params.progress_callback(0.1, None)
        return None

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", loading)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        result = invoke("generate", *trio(tiny), "hello")
    finally:
        signal.signal(signal.SIGINT, before)
    assert result.exit_code == 130 and result.stderr.strip() == "localeft: interrupted"


def test_context_errors_name_the_cli_flag(tiny):
    long = invoke("generate", *trio(tiny), "-c", "16", "the cat is a dog " * 4)
    assert_one_line_error(long, 1, "the context holds 16", "-c/--ctx-size")
    assert "n_ctx" not in long.stderr


# --- checks before loading --------------------------------------------------------------------
@pytest.fixture
def full_loads(monkeypatch):
    """Counts model loads that read weights (vocab-only checks don't count)."""
    loads = []
    real = backend.Model.__init__

    def counting(self, path, *a, vocab_only=False, **k):
        if not vocab_only:
            loads.append(Path(path).name)
        real(self, path, *a, vocab_only=vocab_only, **k)

    monkeypatch.setattr(backend.Model, "__init__", counting)
    return loads


def test_missing_files_and_vocab_mismatches_fail_before_any_weights_load(tiny, full_loads):
    missing = invoke("generate", *trio(tiny, small_base=tiny.small_ft.parent / "nope.gguf"), "hi")
    assert_one_line_error(missing, 1, "nope.gguf")
    mismatch = invoke("generate", *trio(tiny, small_base=tiny.incompatible), "hi")
    assert_one_line_error(mismatch, 1, "do not share a tokenizer")
    assert full_loads == []


def test_resource_guards(tiny, monkeypatch, full_loads):
    r = invoke("generate", *trio(tiny), "-ngl", "-2", "hi")
    assert r.exit_code == 2 and "-2" in r.output
    r = invoke("generate", *trio(tiny), "-t", "64", "-n", "3", "hi")
    assert r.exit_code == 0 and "localeft: warning: 64 threads is more than" in r.stderr
    r = invoke("generate", *trio(tiny), "-c", "2048", "-n", "3", "hi")
    assert r.exit_code == 0 and "trained on (256)" in r.stderr, r.stderr
    full_loads.clear()
    monkeypatch.setattr(ensemble, "available_memory", lambda: 100_000)
    r = invoke("generate", *trio(tiny), "hi")
    assert_one_line_error(r, 1, "these models need about", "GiB of memory is available")
    assert full_loads == []


def test_check_lists_every_role_and_warns_about_a_zero_delta(tiny):
    r = invoke("check", *trio(tiny, small_base=tiny.large_base))
    assert r.exit_code == 0
    roles = [line.split()[0] for line in r.stdout.splitlines() if "n_vocab" in line]
    assert roles == ["large_base", "small_ft", "small_base"]
    r = invoke("check", *trio(tiny, small_base=tiny.small_ft))
    assert r.exit_code == 0 and "delta is zero" in r.stderr


def test_unknown_preset_keys_are_rejected(tiny, tmp_path):
    config = tmp_path / "m.toml"
    roles = "".join(
        f'[presets.mine.{role}]\npath = "{getattr(tiny, role)}"\n'
        for role in ("large_base", "small_ft", "small_base")
    )
    config.write_text('default = "mine"\n[presets.mine]\ntemprature = 0.7\n' + roles)
    assert_one_line_error(invoke("models", "--config", config), 1, "unknown key(s) temprature")


def test_sampled_runs_report_their_seed(tiny):
    r = invoke("generate", "--json", *trio(tiny), "--temp", "0.9", "-n", "8", "hi")
    data = json.loads(r.stdout)
    seed = data["settings"]["seed"]
    assert isinstance(seed, int)
    again = invoke(
        "generate", "--json", *trio(tiny), "--temp", "0.9", "-n", "8", "--seed", seed, "hi"
    )
    assert json.loads(again.stdout)["tokens"] == data["tokens"]
    verbose = invoke("generate", *trio(tiny), "--temp", "0.9", "-n", "3", "-v", "hi")
    assert "| seed " in verbose.stderr


# --- the chat never loses the conversation ----------------------------------------------------
def chat(tiny, script: str, *args):
    return invoke("chat", *trio(tiny), "-n", "8", "--no-speculative", *args, input=script)


def history(state: Path) -> dict:
    files = sorted((state / "localeft" / "chats").glob("*.json"))
    assert files, "no history file"
    return json.loads(files[-1].read_text())


def test_every_turn_is_in_the_history_and_resume_continues(tiny, tmp_path):
    state = tmp_path / "xdg-state"
    r = chat(tiny, "hello\nthe cat\n")
    assert r.exit_code == 0
    h = history(state)
    assert [m["role"] for m in h["messages"]] == ["user", "assistant"] * 2
    assert h["replies"][0]["mode"] == "eft" and h["replies"][0]["beta"] == 1.0
    assert "sampling" in h["replies"][0] and "seed" in h["replies"][0]
    saved = tmp_path / "later.json"
    r = chat(tiny, f"a dog is\n/save {saved}\n", "--resume")
    assert r.exit_code == 0 and "(loaded 4 messages" in r.stdout
    data = json.loads(saved.read_text())
    assert [m["content"] for m in data["messages"]][::2] == ["hello", "the cat", "a dog is"]
    assert len(history(state)["messages"]) == 6  # the same history file goes on
    r = chat(tiny, f"/load {saved}\n/retry\n/bye\n")
    assert "(loaded 6 messages" in r.stdout
    assert_one_line_error(
        invoke("chat", *trio(tiny), "--resume", tmp_path / "absent.json"), 1, "absent"
    )


def test_ctrl_c_in_a_multiline_message_cancels_it_and_keeps_the_chat(tiny, tmp_path, monkeypatch):
    lines = iter(["hello", '"""first line', "second line", None, "the cat", "/bye"])

    def fake_input(prompt=""):
        line = next(lines)
        if line is None:
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    r = chat(tiny, "")
    assert r.exit_code == 0 and "(message cancelled)" in r.stderr
    msgs = history(tmp_path / "xdg-state")["messages"]
    assert [m["content"] for m in msgs][::2] == ["hello", "the cat"]


def test_ctrl_c_at_the_prompt_asks_and_a_second_one_quits(tiny, monkeypatch):
    answers = iter(["hello", KeyboardInterrupt, "the cat", KeyboardInterrupt, KeyboardInterrupt])
    seen = []

    def fake_input(prompt=""):
        a = next(answers)
        seen.append(a)
        if a is KeyboardInterrupt:
            raise KeyboardInterrupt
        return a

    monkeypatch.setattr("builtins.input", fake_input)
    r = chat(tiny, "")
    assert r.exit_code == 0 and r.stderr.count("Ctrl-C again") == 2
    assert seen.count("the cat") == 1  # the chat went on after the first Ctrl-C


def test_a_second_ctrl_c_right_after_an_interrupted_reply_keeps_everything(
    tiny, tmp_path, monkeypatch
):
    ctrl_c_at_token(monkeypatch, 3)
    real_notes = repl_module.notes
    pressed = []

    def notes_then_ctrl_c(g, verbose, prefix=""):
        if not pressed:
            pressed.append(1)
            raise KeyboardInterrupt  # the second press, while the reply's notes are written
        return real_notes(g, verbose, prefix)

    monkeypatch.setattr(repl_module, "notes", notes_then_ctrl_c)
    r = chat(tiny, "hello\nthe cat\n")
    assert r.exit_code == 0, r.output
    msgs = history(tmp_path / "xdg-state")["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 2


def test_ctrl_c_during_the_prompt_keeps_what_was_evaluated(tiny, tmp_path, monkeypatch):
    decodes = []
    real = Context.bring

    def decode(self, calls, n, n_logits=1):
        decodes.append(n)
        if len(decodes) == 2:  # the second context's prompt: Ctrl-C
            raise KeyboardInterrupt
        return real(self, calls, n, n_logits)

    monkeypatch.setattr(Context, "bring", decode)
    saved = tmp_path / "c.json"
    r = chat(tiny, f"hello there\n/save {saved}\n")
    assert "interrupted before the reply began" in r.stderr
    assert json.loads(saved.read_text())["messages"] == []  # no empty assistant turn kept
    monkeypatch.setattr(Context, "bring", real)
    r = chat(tiny, f"hello there\n/save -f {saved}\n")  # a fresh session, for the full cost
    full = json.loads(saved.read_text())["replies"][0]["prompt_evaluated"]
    decodes.clear()
    monkeypatch.setattr(Context, "bring", decode)

    def retry_after_interrupt(*_):
        monkeypatch.setattr(Context, "bring", real)
        return "/retry"

    script = iter(["hello there", None, f"/save -f {saved}", "/bye"])

    def fake_input(prompt=""):
        line = next(script)
        return retry_after_interrupt() if line is None else line

    monkeypatch.setattr("builtins.input", fake_input)
    r = chat(tiny, "")
    replies = json.loads(saved.read_text())["replies"]
    assert len(replies) == 1 and 0 < replies[0]["prompt_evaluated"] < full


def test_a_full_context_drops_the_oldest_turns(tiny, tmp_path):
    saved = tmp_path / "c.json"
    script = "".join(f"the cat is a dog number {i}\n" for i in range(8)) + f"/save {saved}\n"
    r = invoke(
        "chat",
        *trio(tiny),
        "-c",
        "96",
        "-n",
        "8",
        "--no-speculative",
        "--system",
        "be",
        input=script,
    )
    assert r.exit_code == 0 and "localeft: error" not in r.stderr, r.stderr
    assert "oldest" in r.stderr and "-c/--ctx-size" in r.stderr
    data = json.loads(saved.read_text())
    assert data["messages"][0] == {"role": "system", "content": "be"}
    assert data["messages"][-2]["content"] == "the cat is a dog number 7"
    assert len(data["replies"]) == 8


def test_messages_that_start_with_a_slash(tiny, tmp_path):
    saved = tmp_path / "c.json"
    r = chat(tiny, f"/usr/bin is a directory\n//help me\n/frobnicate\n/save {saved}\n")
    assert "unknown command /frobnicate" in r.stderr
    msgs = [m["content"] for m in json.loads(saved.read_text())["messages"]][::2]
    assert msgs == ["/usr/bin is a directory", "/help me"]
