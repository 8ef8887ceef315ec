"""The `localeft` command line, driven through click's CliRunner (and a few real subprocesses).

No test reaches the network: HF_HUB_OFFLINE is on, the Hugging Face cache is a per-test tmp dir,
the XDG config dir is empty, and huggingface_hub.hf_hub_download fails the test unless replaced.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

from clitools import ctrl_c_at_token, FAST, assert_one_line_error, invoke, trio
from hubcache import isolate, put_in_cache

from localeft import Emulator
from localeft.commands import options as cli_module

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """Offline, empty HF cache and XDG config; returns the HF cache dir."""
    return isolate(tmp_path, monkeypatch)


def gen_json(tiny, *args, **override) -> dict:
    result = invoke("generate", "--json", *trio(tiny, **override), *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cache_copy(cache: Path, repo: str, file: str, source: Path) -> Path:
    """Put a copy of the model file `source` into the HF cache as `repo`/`file`."""
    return put_in_cache(cache, repo, file, Path(source).read_bytes())


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def local_preset(tiny, name="mine", **settings) -> str:
    head = "".join(f"{k} = {v}\n" for k, v in settings.items())
    roles = "".join(
        f'[presets.{name}.{role}]\npath = "{getattr(tiny, role)}"\n'
        for role in ("large_base", "small_ft", "small_base")
    )
    return f'default = "{name}"\n[presets.{name}]\ndescription = "tiny trio"\n{head}{roles}'


HUB = {
    "large_base": ("org/large-GGUF", "large.gguf"),
    "small_ft": ("org/ft-GGUF", "ft.gguf"),
    "small_base": ("org/base-GGUF", "base.gguf"),
}


def hub_preset() -> str:
    roles = "".join(
        f'[presets.hubby.{role}]\nrepo = "{repo}"\nfile = "{file}"\nsize_gb = 0.01\n'
        for role, (repo, file) in HUB.items()
    )
    return f'default = "hubby"\n[presets.hubby]\ndescription = "tiny trio on the Hub"\n{roles}'


# ------------------------------------------------------------------ basics


def test_version_and_help_with_examples():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == "localeft 0.1.0"
    for command in (
        [],
        ["generate"],
        ["chat"],
        ["compare"],
        ["pull"],
        ["models"],
        ["check"],
        ["rpc-server"],
    ):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.stdout, command
    assert "bench" in invoke("--help").stdout


def test_subprocess_entry_points():
    for cmd in (
        [sys.executable, "-m", "localeft", "--version"],
        [sys.executable, "cli.py", "--version"],
    ):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "localeft 0.1.0", out.stderr


def test_local_paths_never_import_the_hub_client(tiny):
    """huggingface_hub costs ~0.2 s of start-up and ~10 MiB: only Hub presets may load it."""
    code = (
        "import sys; from localeft.cli import cli; "
        "cli(sys.argv[1:], standalone_mode=False); "
        "sys.stderr.write(str('huggingface_hub' in sys.modules))"
    )
    cmd = [sys.executable, "-c", code, "generate", *trio(tiny), "-n", "2", "--raw", "hi"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr.endswith("False"), out.stderr


def test_broken_pipe_is_quiet(tiny):
    cmd = [sys.executable, "-m", "localeft", "generate", *trio(tiny), "-n", "200", "--raw", "hi"]
    # the reader is gone before the first write: a deterministic EPIPE
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 1 and err == b"", err
    shell = " ".join(cmd) + " | head -c 5"
    out = subprocess.run(shell, shell=True, cwd=ROOT, capture_output=True, timeout=120)
    assert len(out.stdout) == 5 and out.stderr == b"", out.stderr


# ------------------------------------------------------------------ generate


def test_prompt_from_argument_stdin_and_dash(tiny):
    base = ["generate", *trio(tiny), "--raw", "-n", "8"]
    from_arg = invoke(*base, "hello world")
    piped = invoke(*base, input="hello world\n")
    dash = invoke(*base, "-", input="hello world\n")
    assert from_arg.exit_code == piped.exit_code == dash.exit_code == 0
    assert from_arg.stdout == piped.stdout == dash.stdout and from_arg.stdout.strip()


def test_json_schema(tiny):
    out = gen_json(tiny, "-n", "5", "hello")
    assert isinstance(out["text"], str) and out["finish_reason"] == "length"
    assert len(out["tokens"]) == 5 and all(isinstance(t, int) for t in out["tokens"])
    assert out["mode"] == "eft" and set(out["models"]) == {"base", "ft", "ref"}
    settings = out["settings"]
    assert settings["max_tokens"] == 5 and settings["n_ctx"] == 256 and settings["beta"] == 1.0
    stats = out["stats"]
    for key in (
        "prompt_tokens",
        "prompt_evaluated",
        "generated_tokens",
        "seconds",
        "model_seconds",
        "ms_per_token",
        "tokens_per_second",
        "acceptance_rate",
        "speculative",
    ):
        assert key in stats, key
    assert stats["generated_tokens"] == 5
    assert stats["prompt_evaluated"] == 3 * stats["prompt_tokens"]  # three fresh contexts


def test_every_sampling_flag_reaches_the_engine(tiny, monkeypatch):
    seen = {}
    original = Emulator.stream

    def spy(self, prompt, **kw):
        seen.update(kw, beta_now=self.beta, n_ctx=self.n_ctx, prompt=prompt)
        return original(self, prompt, **kw)

    monkeypatch.setattr(Emulator, "stream", spy)
    result = invoke(
        "generate",
        *trio(tiny),
        "--beta",
        "0.5",
        "--temp",
        "0.7",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--min-p",
        "0.05",
        "--seed",
        "7",
        "--stop",
        "xyz",
        "--stop",
        "abc",
        "-n",
        "9",
        "--draft",
        "3",
        "--mode",
        "small",
        "hi",
    )
    assert result.exit_code == 0, result.output
    assert seen["beta_now"] == 0.5 and seen["n_ctx"] == 256
    expected = dict(
        max_tokens=9,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        seed=7,
        stop=["xyz", "abc"],
        speculative=True,
        draft_tokens=3,
        mode="ft",
    )
    assert {k: seen[k] for k in expected} == expected
    assert invoke("generate", *trio(tiny), "--no-speculative", "hi").exit_code == 0
    assert seen["speculative"] is False and seen["draft_tokens"] is None
    assert seen["temperature"] == 0.0 and seen["seed"] is None  # defaults without a preset


def test_greedy_and_seeded_sampling_repeat(tiny):
    def text(*args):
        return gen_json(tiny, "-n", "20", *args, "tell me")["text"]

    assert text("--temp", "0") == text("--temp", "0")
    assert text("--temp", "1", "--seed", "5") == text("--temp", "1", "--seed", "5")
    assert text("--temp", "1", "--seed", "5") != text("--temp", "1", "--seed", "6")


def test_modes_run_one_model(tiny):
    timed = {
        mode: set(gen_json(tiny, "--mode", mode, "-n", "3", "hi")["stats"]["model_seconds"])
        for mode in ("large", "small", "eft")
    }
    assert timed == {"large": {"base"}, "small": {"ft"}, "eft": {"base", "ft", "ref"}}


def test_raw_chat_and_system_prompts(tiny):
    def prompt_tokens(*args):
        return gen_json(tiny, "-n", "2", *args, "hello")["stats"]["prompt_tokens"]

    raw, chat = prompt_tokens("--raw"), prompt_tokens()
    assert raw < 5 < chat  # the ChatML template wraps the message
    assert prompt_tokens("--system", "be brief") > chat
    assert prompt_tokens("--chat") == chat
    assert invoke("generate", *trio(tiny), "--raw", "--system", "x", "hi").exit_code == 2


def test_stop_string_and_verbose_stats(tiny):
    full = gen_json(tiny, "-n", "30", "--raw", "the cat")["text"]
    stop = full[12:15]
    out = gen_json(tiny, "-n", "30", "--raw", "--stop", stop, "the cat")
    assert out["finish_reason"] == "stop" and out["text"] == full[: full.index(stop)]
    result = invoke("generate", *trio(tiny), "-n", "4", "-v", "hi")
    assert result.exit_code == 0 and "evaluated" in result.stderr and "tok/s" in result.stderr


def test_expert_option(tiny):
    args = [*FAST, "--large-base", tiny.large_base]
    out = json.loads(
        invoke(
            "generate",
            "--json",
            *args,
            "-n",
            "3",
            "--expert",
            f"{tiny.small_ft}:{tiny.small_base}:0.5",
            "hi",
        ).stdout
    )
    assert set(out["models"]) == {"base", "ft", "ref"}
    two = invoke(
        "generate",
        *args,
        "-n",
        "3",
        "--expert",
        f"{tiny.small_ft}:{tiny.small_base}",
        "--expert",
        f"{tiny.padded}:{tiny.small_base}:-0.5",
        "hi",
    )
    assert two.exit_code == 0, two.output
    for bad in ("only-one-path", "a:b:c:d", "a::1", f"{tiny.small_ft}:{tiny.small_base}:much"):
        result = invoke("generate", *args, "--expert", bad, "hi")
        assert result.exit_code == 2 and "--expert" in result.stderr, bad
    mixed = invoke("generate", *trio(tiny), "--expert", f"{tiny.small_ft}:{tiny.small_base}", "hi")
    assert mixed.exit_code == 2 and "--expert replaces" in mixed.stderr


def test_ctrl_c_during_generate_exits_130(tiny, monkeypatch):
    ctrl_c_at_token(monkeypatch, 3)
    result = invoke("generate", *trio(tiny), "-n", "20", "hi")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "override, needles",
    [
        ({"small_ft": "missing.gguf"}, ["model file not found", "missing.gguf"]),
        ({"small_ft": "not_gguf"}, ["not a GGUF file"]),
        ({"small_ft": "truncated"}, ["truncated.gguf"]),
        (
            {"small_ft": "incompatible"},
            ["do not share a tokenizer", "large_base.gguf", "incompatible.gguf"],
        ),
    ],
)
def test_bad_model_files(tiny, tmp_path, override, needles):
    role, name = next(iter(override.items()))
    path = getattr(tiny, name, tmp_path / name)
    assert_one_line_error(invoke("generate", *trio(tiny, **{role: path}), "hi"), 1, *needles)


@pytest.mark.parametrize(
    "args",
    [
        ["--temp", "-1"],
        ["--top-p", "0"],
        ["--top-p", "1.5"],
        ["--min-p", "1"],
        ["-n", "0"],
        ["--top-k", "-2"],
        ["--seed", "-1"],
        ["--beta", "-0.5"],
        ["-c", "4"],
        ["-t", "0"],
        ["--draft", "0"],
        ["--draft", "16"],
        ["--temp", "warm"],
        ["--mode", "huge"],
        ["--draft", "2", "--no-speculative"],
    ],
)
def test_bad_numbers_are_usage_errors(tiny, args):
    result = invoke("generate", *trio(tiny), *args, "hi")
    assert result.exit_code == 2 and "Error:" in result.stderr and "Traceback" not in result.output


def test_non_finite_numbers_fail_cleanly(tiny):
    assert_one_line_error(invoke("generate", *trio(tiny), "--temp", "inf", "hi"), 1, "temperature")
    assert_one_line_error(invoke("generate", *trio(tiny), "--beta", "nan", "hi"), 1, "beta")


def test_prompt_too_long_and_empty_prompts(tiny):
    long = invoke(
        "generate",
        *trio(tiny),
        "-c",
        "16",
        "a prompt much longer than sixteen tokens for this tiny context window",
    )
    assert_one_line_error(long, 1, "the context holds 16")
    assert_one_line_error(invoke("generate", *trio(tiny), ""), 1, "the prompt is empty")
    assert_one_line_error(invoke("generate", *trio(tiny), input="  \n\n"), 1, "the prompt is empty")


def test_unknown_preset_and_missing_config(tiny, tmp_path):
    config = write_config(tmp_path, local_preset(tiny))
    result = invoke("generate", "--config", config, "--preset", "mien", "hi")
    assert_one_line_error(result, 1, "unknown preset 'mien'", "did you mean: mine")
    result = invoke("models", "--config", tmp_path / "absent.toml")
    assert_one_line_error(result, 1, "configuration file not found")


# ------------------------------------------------------------------ presets, pull, models


def test_local_preset_settings_and_overrides(tiny, tmp_path):
    config = write_config(tmp_path, local_preset(tiny, beta=0.5, temperature=0, n_ctx=128))
    result = invoke("generate", "--json", "--config", config, "-t", "1", "-n", "3", "hi")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    assert (settings["beta"], settings["n_ctx"], settings["temperature"]) == (0.5, 128, 0.0)
    result = invoke(
        "generate",
        "--json",
        "--config",
        config,
        "-t",
        "1",
        "-n",
        "3",
        "--beta",
        "2",
        "-c",
        "64",
        "hi",
    )
    settings = json.loads(result.stdout)["settings"]
    assert (settings["beta"], settings["n_ctx"]) == (2.0, 64)
    # an explicit path replaces the preset's role
    result = invoke(
        "generate", "--config", config, "-t", "1", "--small-ft", tiny.incompatible, "hi"
    )
    assert_one_line_error(result, 1, "incompatible.gguf")


def test_models_and_pull_with_local_preset(tiny, tmp_path):
    config = write_config(tmp_path, local_preset(tiny))
    result = invoke("models", "--config", config)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("* mine - tiny trio") for line in lines)
    assert any(line.startswith("  qwen2.5-7b") for line in lines)
    assert "not downloaded" in result.stdout and "4.68 GB (est.)" in result.stdout
    assert sum("local" in line and "small_ft.gguf" in line for line in lines) == 1
    for extra in ([], ["--offline"]):
        result = invoke("pull", "--config", config, *extra)
        assert result.exit_code == 0 and str(tiny.small_base) in result.stdout, result.output


def test_hub_preset_from_a_prepared_cache(tiny, tmp_path, isolated):
    config = write_config(tmp_path, hub_preset())
    for role, (repo, file) in HUB.items():
        cache_copy(isolated, repo, file, getattr(tiny, role))
    models = invoke("models", "--config", config)
    hub_lines = [line for line in models.stdout.splitlines() if "  org/" in line]
    assert len(hub_lines) == 3 and all(" cached " in line for line in hub_lines), models.stdout
    for extra in ([], ["--offline"]):
        pulled = invoke("pull", "--config", config, *extra)
        assert pulled.exit_code == 0 and str(isolated) in pulled.stdout, pulled.output
    result = invoke("generate", "--config", config, *FAST, "-n", "3", "hi")
    assert result.exit_code == 0, result.output


def test_hub_preset_not_cached(tiny, tmp_path, isolated, monkeypatch):
    config = write_config(tmp_path, hub_preset())
    cache_copy(isolated, *HUB["small_ft"], tiny.small_ft)
    models = invoke("models", "--config", config)
    assert models.stdout.count("not downloaded") >= 2
    offline = invoke("pull", "--config", config, "--offline")
    assert offline.exit_code == 1 and offline.stdout.count("MISSING") == 2
    # the suggested command names the --config that defines the preset
    pull_hubby = f"localeft pull --config {config} hubby"
    assert pull_hubby in offline.stderr
    for args in (["hubby"], ["hubby", "--offline"]):  # HF_HUB_OFFLINE=1 is set
        assert_one_line_error(invoke("pull", "--config", config, *args), 1, pull_hubby)
    assert_one_line_error(
        invoke("generate", "--config", config, *FAST, "hi"),
        1,
        pull_hubby,
        "HF_HUB_OFFLINE",
    )
    # online, not a terminal, no --yes: no download, but a hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert_one_line_error(
        invoke("generate", "--config", config, *FAST, "hi"),
        1,
        f"run `{pull_hubby}` to download it",
    )


def test_download_with_yes_or_confirmation(tiny, tmp_path, isolated, monkeypatch):
    config = write_config(tmp_path, hub_preset())
    fetched = []
    sources = {file: getattr(tiny, role) for role, (repo, file) in HUB.items()}

    def fake_download(repo_id, filename, *, cache_dir=None, **kwargs):
        fetched.append(filename)
        return str(cache_copy(isolated, repo_id, filename, sources[filename]))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cache_copy(isolated, *HUB["small_ft"], tiny.small_ft)
    assert invoke("generate", "--config", config, *FAST, "--offline", "hi").exit_code == 1
    monkeypatch.setattr(cli_module, "stdin_is_tty", lambda: True)
    declined = invoke("generate", "--config", config, *FAST, "hi", input="n\n")
    assert declined.exit_code == 1 and "Download now?" in declined.output and not fetched
    result = invoke("generate", "--config", config, *FAST, "-n", "2", "hi", input="y\n")
    assert result.exit_code == 0 and sorted(fetched) == ["base.gguf", "large.gguf"], result.output
    fetched.clear()
    shutil.rmtree(isolated / "models--org--large-GGUF")
    monkeypatch.setattr(cli_module, "stdin_is_tty", lambda: False)
    result = invoke("generate", "--config", config, *FAST, "-n", "2", "--yes", "hi")
    assert result.exit_code == 0 and fetched == ["large.gguf"], result.output


def test_pull_downloads(tiny, tmp_path, isolated, monkeypatch):
    config = write_config(tmp_path, hub_preset())
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda repo_id, filename, **kw: str(cache_copy(isolated, repo_id, filename, tiny.small_ft)),
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    result = invoke("pull", "--config", config)
    assert result.exit_code == 0 and "ready" in result.stdout, result.output
    assert invoke("pull", "--config", config, "--offline").exit_code == 0


# ------------------------------------------------------------------ check


def test_check_compatible_padded_and_without_template(tiny):
    result = invoke("check", *trio(tiny))
    assert result.exit_code == 0, result.output
    assert "compatible, 576 shared token ids" in result.stdout and "padding: none" in result.stdout
    assert "chat template: yes" in result.stdout
    result = invoke("check", *trio(tiny, large_base=tiny.padded, small_ft=tiny.no_template))
    assert result.exit_code == 0, result.output
    assert "padding: yes, sizes [576, 592]" in result.stdout
    assert "chat template: none" in result.stdout


def test_check_mismatch_fails(tiny):
    result = invoke("check", *trio(tiny, small_base=tiny.incompatible))
    assert_one_line_error(result, 1, "do not share a tokenizer", "incompatible.gguf")


# ------------------------------------------------------------------ compare


def test_compare_json_and_layouts(tiny):
    result = invoke("compare", "--json", *trio(tiny), "-n", "6", "--seed", "1", "hi")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["results"]
    assert list(out) == ["small", "large", "eft"]
    assert {name: set(r["stats"]["model_seconds"]) for name, r in out.items()} == {
        "small": {"ft"},
        "large": {"base"},
        "eft": {"base", "ft", "ref"},
    }
    assert out["eft"]["text"] == gen_json(tiny, "-n", "6", "--seed", "1", "hi")["text"]
    wide = invoke("compare", *trio(tiny), "-n", "6", "hi", env={"COLUMNS": "150"})
    header = wide.stdout.splitlines()[0]
    assert wide.exit_code == 0 and header.count(" │ ") == 2 and "EFT" in header
    narrow = invoke("compare", *trio(tiny), "-n", "6", "hi", env={"COLUMNS": "80"})
    assert narrow.stdout.startswith("── small fine-tuned alone")
    assert "── EFT" in narrow.stdout and " │ " not in narrow.stdout


# ------------------------------------------------------------------ chat


def chat(tiny, script: str, *args):
    return invoke("chat", *trio(tiny), "-n", "12", *args, input=script)


def test_chat_commands(tiny, tmp_path):
    saved = tmp_path / "chat.json"
    script = (
        "\n".join(
            [
                "/help",
                "hello there",
                "/set temp 0.5",
                "/set top_p 2",
                "/set seed lots",
                "/set top_k 3",
                "/set colour red",
                "/set system You are terse.",
                "/mode small",
                "/mode tiny",
                '"""',
                "line one",
                "",
                "line two",
                '"""',
                "/stats",
                f"/save {saved}",
                "/frobnicate",
                "/clear",
                f"/save {saved}.2",
                "/bye",
                "never read",
            ]
        )
        + "\n"
    )
    result = chat(tiny, script)
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    assert "/set KEY VALUE" in out and "(temp = 0.5)" in out and "(top_k = 3)" in out
    assert "bad value for top_p" in err and "bad value for seed" in err
    assert "cannot set 'colour'" in err and "usage: /mode eft|large|small" in err
    assert "unknown command /frobnicate" in err and "evaluated" in out
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert data["messages"][0]["content"] == "You are terse."
    assert data["messages"][3]["content"] == "line one\n\nline two"
    settings = data["settings"]
    assert (settings["temperature"], settings["top_p"], settings["top_k"]) == (0.5, 1.0, 3)
    assert settings["mode"] == "small" and len(data["replies"]) == 2
    assert set(data["replies"][1]["model_seconds"]) == {"ft"}
    cleared = json.loads(Path(f"{saved}.2").read_text())
    assert [m["role"] for m in cleared["messages"]] == ["system"]


def test_chat_reuses_the_kv_cache(tiny, tmp_path):
    saved = tmp_path / "chat.json"
    result = chat(
        tiny,
        f"hello there\nhow are you?\ntell me more\n/stats\n/save {saved}\n",
        "--no-speculative",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(saved.read_text())
    replies = data["replies"]
    assert replies[0]["prompt_evaluated"] == 3 * replies[0]["prompt_tokens"]  # 3 fresh contexts
    for before, r in itertools.pairwise(replies):
        # each context evaluates at most what was added since the last prompt (the reply, which
        # the random tiny models often write as invalid UTF-8 that re-tokenizes differently,
        # and the new message): the whole previous prompt is reused
        assert r["prompt_evaluated"] <= 3 * (r["prompt_tokens"] - before["prompt_tokens"])
    assert replies[2]["prompt_evaluated"] < 1.5 * replies[2]["prompt_tokens"]
    assert f"{replies[2]['prompt_evaluated']} evaluated" in result.stdout
    # a fresh Emulator evaluates the whole third prompt in each of its three contexts
    with Emulator(tiny.large_base, tiny.small_ft, tiny.small_base, n_ctx=256, n_threads=1) as em:
        s = em.stream(data["messages"][:5], max_tokens=1, speculative=False)
        list(s)
    assert s.generation.stats.prompt_tokens == replies[2]["prompt_tokens"]
    assert s.generation.stats.prompt_evaluated == 3 * replies[2]["prompt_tokens"]


def test_chat_ctrl_c_keeps_the_partial_reply(tiny, tmp_path, monkeypatch):
    saved = tmp_path / "chat.json"
    ctrl_c_at_token(monkeypatch, 5)
    result = chat(tiny, f"hello\nagain\n/save {saved}\n")
    assert result.exit_code == 0 and "interrupted" in result.stderr, result.output
    data = json.loads(saved.read_text())
    assert data["replies"][0]["generated_tokens"] == 5 and len(data["replies"]) == 2
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2


def test_chat_exits_cleanly_on_eof_and_ctrl_c_at_the_prompt(tiny, monkeypatch):
    result = chat(tiny, "hello\n")
    assert result.exit_code == 0 and result.stdout.count(">>> ") == 2
    lines = iter(["hello"])

    def fake_input(prompt=""):
        line = next(lines, None)
        if line is None:
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    result = chat(tiny, "")
    assert result.exit_code == 0 and "Traceback" not in result.output


def test_real_ctrl_c_at_the_chat_prompt(tiny):
    cmd = [sys.executable, "-m", "localeft", "chat", *trio(tiny), "-n", "4"]
    p = subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    seen = b""
    while seen.count(b">>> ") < 2:  # the second prompt: the REPL now waits in input()
        chunk = p.stdout.read1(4096)
        assert chunk, (seen, p.stderr.read())
        seen += chunk
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and b"Traceback" not in err, err


def test_chat_errors_keep_the_session(tiny):
    result = invoke(
        "chat",
        *trio(tiny),
        "-c",
        "24",
        "-n",
        "4",
        "--no-speculative",
        input="hi\n" + "a long message " * 10 + "\n/save /nonexistent/dir/x.json\n",
    )
    assert result.exit_code == 0, result.output
    assert "the context holds 24" in result.stderr and "cannot save" in result.stderr
