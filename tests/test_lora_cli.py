"""LoRA adapters on the command line (--small-ft-lora, --expert-lora), in presets (local and Hub
adapters, pulled like models), and what check, -v, models, JSON and saved chats show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clitools import FAST, assert_one_line_error, invoke
from hubcache import isolate, put_in_cache

from localeft import Emulator, Expert, LoRA

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    return isolate(tmp_path, monkeypatch)


def small_pair(tiny, *args):
    return [*FAST, "--large-base", tiny.large_base, "--small-base", tiny.small_base, *args]


def test_small_ft_lora_is_the_python_lora(tiny, adapters, make_em):
    result = invoke(
        "score",
        *small_pair(tiny, "--small-ft-lora", f"{adapters.a}:0.5", "--json"),
        "the cat",
        " is a dog",
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    em = make_em(small_ft=LoRA(tiny.small_base, adapters.a, scale=0.5))
    want = em.score("the cat", " is a dog")
    assert got["totals"]["eft"]["logprob"] == pytest.approx(want.totals["eft"].logprob, abs=1e-9)


def test_stacked_small_ft_loras_and_generate_json_show_them(tiny, adapters, make_em):
    args = ["--small-ft-lora", str(adapters.a), "--small-ft-lora", f"{adapters.b}:-0.5"]
    result = invoke("generate", *small_pair(tiny, *args, "--json", "-n", "6", "--raw"), "hello")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["adapters"] == {"ft": [[str(adapters.a), 1.0], [str(adapters.b), -0.5]]}
    assert out["models"]["ft"] == out["models"]["ref"] == str(tiny.small_base)
    em = make_em(small_ft=LoRA(tiny.small_base, [(adapters.a, 1.0), (adapters.b, -0.5)]))
    assert out["tokens"] == em.generate("hello", max_tokens=6).tokens


def test_expert_lora_makes_one_expert_per_adapter(tiny, adapters):
    args = ["--expert-lora", f"{adapters.a}:0.7", "--expert-lora", f"{adapters.b}:-0.4"]
    result = invoke("score", *small_pair(tiny, *args, "--json"), "the cat", " is a dog")
    assert result.exit_code == 0, result.output
    experts = [
        Expert(LoRA(tiny.small_base, adapters.a), tiny.small_base, 0.7),
        Expert(LoRA(tiny.small_base, adapters.b), tiny.small_base, -0.4),
    ]
    with Emulator(base=tiny.large_base, experts=experts, n_ctx=256, n_threads=1) as em:
        want = em.score("the cat", " is a dog").totals["eft"].logprob
    assert json.loads(result.stdout)["totals"]["eft"]["logprob"] == pytest.approx(want, abs=1e-9)


def test_check_and_verbose_show_the_adapters_and_one_load(tiny, adapters):
    result = invoke("check", *small_pair(tiny, "--small-ft-lora", f"{adapters.a}:0.5"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    ft = next(line for line in lines if line.startswith("small_ft"))
    assert f"{tiny.small_base} + LoRA {adapters.a} (scale 0.5)" in ft
    assert any("rank 4, alpha 8" in line for line in lines), result.stdout
    assert "weights: 2 model file(s) loaded once each for 3 roles" in result.stdout
    verbose = invoke(
        "generate",
        *small_pair(tiny, "--small-ft-lora", str(adapters.a), "-v", "-n", "2", "--raw"),
        "hi",
    )
    assert verbose.exit_code == 0, verbose.output
    assert f"small_ft: small_base.gguf + LoRA {adapters.a.name} x1 (rank 4, alpha 8" in (
        verbose.stderr
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--small-ft", "F.gguf"], "give no --small-ft, --expert or --expert-lora with it"),
        (["--expert-lora", "A.gguf"], "give no --small-ft, --expert or --expert-lora with it"),
    ],
)
def test_contradicting_options_are_usage_errors(tiny, adapters, args, message):
    result = invoke("generate", *small_pair(tiny, "--small-ft-lora", adapters.a, *args), "hi")
    assert result.exit_code == 2 and message in result.output, result.output


def test_expert_lora_with_small_ft_is_a_usage_error(tiny, adapters):
    args = small_pair(tiny, "--expert-lora", adapters.a, "--small-ft", tiny.small_ft)
    result = invoke("generate", *args, "hi")
    assert result.exit_code == 2 and "give no --small-ft with it" in result.output


def test_bad_adapter_files_are_one_line_errors(tiny, adapters, tmp_path):
    cases = [
        (tiny.small_ft, "is a model, not a LoRA adapter"),
        (adapters.large, "does not fit"),
        (tmp_path / "missing.gguf", "LoRA adapter file not found"),
    ]
    for path, message in cases:
        result = invoke("generate", *small_pair(tiny, "--small-ft-lora", path), "hi")
        assert_one_line_error(result, 1, message, str(path))
    # an adapter given as a model names the options that take adapters
    result = invoke(
        "generate", *FAST, "--large-base", tiny.large_base, "--small-ft", adapters.a,
        "--small-base", tiny.small_base, "hi",
    )  # fmt: skip
    assert_one_line_error(result, 1, "is a LoRA adapter, not a model", "--small-ft-lora")


def test_an_adapter_path_with_a_colon_and_a_bad_scale(tiny, adapters, tmp_path):
    odd = tmp_path / "a:b.gguf"
    odd.write_bytes(adapters.a.read_bytes())
    ok = invoke("generate", *small_pair(tiny, "--small-ft-lora", odd, "-n", "1", "--raw"), "hi")
    assert ok.exit_code == 0, ok.output
    bad = invoke("generate", *small_pair(tiny, "--small-ft-lora", f"{adapters.a}:nan"), "hi")
    assert bad.exit_code == 2 and "is not ADAPTER or ADAPTER:NUMBER" in bad.output


def adapter_preset(tiny, adapter_table: str) -> str:
    return (
        'default = "pirate"\n[presets.pirate]\ndescription = "adapted"\n'
        f'[presets.pirate.large_base]\npath = "{tiny.large_base}"\n'
        f'[presets.pirate.small_base]\npath = "{tiny.small_base}"\n'
        f"[presets.pirate.small_ft]\nadapters = [{adapter_table}]\n"
    )


def test_a_preset_with_a_local_adapter(tiny, adapters, tmp_path, make_em):
    config = tmp_path / "models.toml"
    config.write_text(adapter_preset(tiny, f'{{ path = "{adapters.a}", scale = 0.5 }}'))
    models = invoke("models", "--config", config)
    assert models.exit_code == 0, models.output
    row = next(line for line in models.stdout.splitlines() if "small_ft adapter" in line)
    assert "local" in row and str(adapters.a) in row
    result = invoke("score", "--config", config, *FAST, "--json", "the cat", " is a dog")
    assert result.exit_code == 0, result.output
    want = make_em(small_ft=LoRA(tiny.small_base, adapters.a, scale=0.5))
    got = json.loads(result.stdout)["totals"]["eft"]["logprob"]
    assert got == pytest.approx(want.score("the cat", " is a dog").totals["eft"].logprob, abs=1e-9)


def test_a_preset_with_a_hub_adapter_is_pulled_like_a_model(
    tiny, adapters, tmp_path, isolated, monkeypatch
):
    config = tmp_path / "models.toml"
    table = '{ repo = "org/pirate-lora-GGUF", file = "pirate.gguf", size_gb = 0.001 }'
    config.write_text(adapter_preset(tiny, table))
    models = invoke("models", "--config", config)
    row = next(line for line in models.stdout.splitlines() if "small_ft adapter" in line)
    assert "not downloaded" in row and "org/pirate-lora-GGUF/pirate.gguf" in row
    offline = invoke("pull", "--config", config, "--offline")
    assert offline.exit_code == 1 and "MISSING org/pirate-lora-GGUF/pirate.gguf" in offline.stdout
    assert_one_line_error(
        invoke("generate", "--config", config, *FAST, "hi"), 1, "localeft pull", "pirate"
    )
    put_in_cache(isolated, "org/pirate-lora-GGUF", "pirate.gguf", adapters.a.read_bytes())
    pulled = invoke("pull", "--config", config, "--offline")
    assert pulled.exit_code == 0 and "pirate.gguf" in pulled.stdout, pulled.output
    result = invoke("generate", "--config", config, *FAST, "--json", "-n", "2", "--raw", "hi")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["adapters"]["ft"][0][0].endswith("pirate.gguf")


@pytest.mark.parametrize(
    "table, message",
    [
        ("adapters = []\n", "adapters must be a list"),
        ('adapters = [{ path = "a.gguf", scale = "x" }]\n', "scale must be a number"),
        ('adapters = [{ path = "a.gguf" }]\npath = "f.gguf"\n', "not both"),
        ('adapters = [{ path = "a.gguf", rank = 3 }]\n', "unknown key(s) rank"),
    ],
)
def test_bad_adapter_presets_are_one_line_errors(tiny, tmp_path, table, message):
    config = tmp_path / "models.toml"
    text = adapter_preset(tiny, '{ path = "a.gguf" }').split("[presets.pirate.small_ft]")[0]
    config.write_text(text + "[presets.pirate.small_ft]\n" + table)
    assert_one_line_error(invoke("models", "--config", config), 1, message)


def test_a_saved_chat_records_the_adapters(tiny, adapters, tmp_path, isolated):
    saved = tmp_path / "chat.json"
    result = invoke(
        "chat",
        *small_pair(tiny, "--small-ft-lora", adapters.a, "-n", "3"),
        input=f"hello\n/save {saved}\n/bye\n",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(saved.read_text())
    assert data["adapters"] == {"ft": [[str(adapters.a), 1.0]]}
    assert np.isfinite(len(data["replies"]))


@pytest.mark.parametrize(
    "command",
    [
        ["compare", "-n", "2", "--raw", "hello"],
        ["eval", str(EXAMPLES / "eval-sample.jsonl"), "--beta", "0,1", "--json"],
        ["bench", "-n", "2", "--reps", "1", "--json", "--no-baselines"],
    ],
    ids=["compare", "eval", "bench"],
)
def test_other_commands_take_an_adapted_small_ft(tiny, adapters, command):
    name, *rest = command
    result = invoke(name, *small_pair(tiny, "--small-ft-lora", adapters.a), *rest)
    assert result.exit_code == 0, result.output
    if name == "bench":
        ft = json.loads(result.stdout)["models"]["small_ft"]
        assert ft["path"] == str(tiny.small_base)
        assert ft["adapters"][0]["path"] == str(adapters.a)


def test_a_grammar_with_an_adapted_small_ft(tiny, adapters):
    args = small_pair(tiny, "--small-ft-lora", adapters.a, "--json-output", "-n", "12")
    result = invoke("generate", *args, "hi")
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().startswith("{")
