"""What a hostile user still broke, second pass (the library, the CLI, the chat): absurd
temperatures, prompts far over the context, padding ids and empty content, speculative stats
past the end of a reply, eval's inputs and plots, /save over what is not the user's file,
--resume of a bad file or one with bad settings. Each ends in a clear one-line error or the
right output, never a traceback, a hang or a replaced file."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error, invoke, trio
from hubcache import isolate
from tinymodels import BASE_VOCAB_SIZE, write_model

from localeft import ContextOverflowError, Emulator, InvalidParameterError

HI = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """An Emulator over three models whose vocabularies end in 16 unused (padding) ids."""
    d = tmp_path_factory.mktemp("padded_trio")
    pad = BASE_VOCAB_SIZE + 16
    with Emulator(
        large_base=write_model(d / "l.gguf", seed=101, n_embd=64, n_layer=3, pad_to=pad),
        small_ft=write_model(d / "f.gguf", seed=202, pad_to=pad),
        small_base=write_model(d / "b.gguf", seed=303, pad_to=pad),
        n_ctx=256,
    ) as em:
        yield em


# --- numbers and ids --------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1e50, 1e100, 1e300, 1.7976931348623157e308])
def test_absurd_temperatures_never_draw_padding_nor_give_non_finite_numbers(padded, temperature):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy invalid-value or overflow warnings either
        for kw in ({}, {"top_p": 0.9}, {"min_p": 0.01}, {"top_k": 50}, {"draft_tokens": 3}):
            g = padded.generate(
                "hello", max_tokens=12, seed=1, temperature=temperature, logprobs=3, **kw
            )
            assert len(g.tokens) > 0 and max(g.tokens) < BASE_VOCAB_SIZE, kw
            numbers = [r.logprob for r in g.logprobs] + [x[2] for r in g.logprobs for x in r.top]
            assert np.isfinite(numbers).all(), kw


def test_unused_ids_and_empty_content_are_refused(padded):
    pad = BASE_VOCAB_SIZE + 3
    for call in (
        lambda: padded.generate([5, pad], max_tokens=1),
        lambda: padded.score([5], [pad]),
        lambda: padded.logprobs("hello", after=[pad]),
        lambda: padded.chat([{"role": "user", "content": []}], max_tokens=1),
    ):
        with pytest.raises(InvalidParameterError, match="unused|empty"):
            call()
    assert padded.chat([{"role": "user", "content": ""}], max_tokens=1).tokens  # "" is text


def test_a_prompt_far_over_the_context_is_refused_before_it_is_tokenized(em, tokenized):
    huge = "the cat is a dog " * 50_000
    for call in (
        lambda: em.stream(huge),
        lambda: em.chat([{"role": "user", "content": huge}]),
        lambda: em.score(huge, " and"),
        lambda: em.score("the cat", huge),
        lambda: em.logprobs(huge),
        lambda: em.prompt_tokens(huge),
    ):
        with pytest.raises(ContextOverflowError, match="at least"):
            call()
    assert max(tokenized, default=0) < 10_000
    longest = em.prompts.longest_token(em.models["ft"])
    fits = "a" * (em.n_ctx - 10)  # as many bytes as tokens at most: never refused by the bound
    assert longest >= len("<|im_start|>") and em.generate(fits[:100], max_tokens=1)


def test_the_cli_and_the_chat_say_a_refused_prompt_is_at_least_so_long(tiny):
    huge = "the cat is a dog " * 20_000
    r = invoke("generate", *trio(tiny), "--raw", huge)
    assert_one_line_error(r, 1, "the prompt is at least", "-c/--ctx-size")
    r = chat(tiny, huge + "\nhello\n")
    assert "this message is at least" in r.stderr and r.exit_code == 0


def test_speculative_stats_count_only_the_tokens_taken(em):
    """A grammar that ends after one token: drafting stops at the end of the reply, and the
    stats count what the reply used, never tokens past its end (were: 4 drafted, 4 accepted
    for a one-token reply)."""
    [word] = em.models["ft"].tokenize("the", add_bos=False, special=False)
    text = em.models["ft"].piece(word).decode()
    one_token = dict(grammar=f'root ::= "{text}"', logit_bias={word: 50.0}, max_tokens=20)
    for temperature in (0.0, 1.0):
        g = em.generate("hello", draft_tokens=4, seed=2, temperature=temperature, **one_token)
        s = g.stats
        assert g.tokens == [word] and g.finish_reason == "eog"
        assert s.accepted <= s.drafted <= 2  # the token and the end of generation
        plain = em.generate(
            "hello", speculative=False, seed=2, temperature=temperature, **one_token
        )
        assert plain.tokens == g.tokens


# --- eval's inputs and plots ------------------------------------------------------------------
MC = '{"prompt": "the cat is", "choices": [" red", " blue"], "answer": 0}\n'


def test_eval_refuses_a_string_of_messages_and_bad_beta_lists(tiny, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text(MC + '{"messages": "hi there", "choices": ["a", "b"], "answer": 0}\n')
    r = invoke("eval", *trio(tiny), data, "--beta", "1")
    assert r.exit_code == 1 and "line 2:" in r.stderr and "messages" in r.stderr, r.stderr
    assert "1 line(s)" in r.stderr
    missing = trio(tiny, large_base=tmp_path / "absent.gguf")  # errors come before any load
    for betas, needle in (("1,,2", "item 2"), ("0,1e7", "between 0 and 1e+06"), ("0,nan", "nan")):
        r = invoke("eval", *missing, data, "--beta", betas)
        assert r.exit_code == 2 and needle in r.output and "absent" not in r.output, r.output
    r = invoke("generate", *missing, "--beta", "1e7", "hi")
    assert r.exit_code == 2 and "absent" not in r.output, r.output


def test_eval_of_an_endless_file_stops_with_one_line(tiny):
    r = invoke("eval", *trio(tiny), "/dev/zero")
    assert_one_line_error(r, 1, "/dev/zero", "over 16 MiB")


def test_eval_plot_formats_and_failed_writes(tiny, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text(MC * 2)
    missing = trio(tiny, large_base=tmp_path / "absent.gguf")
    r = invoke("eval", *missing, data, "--plot", tmp_path / "plot.xyz")
    assert_one_line_error(r, 1, "cannot write .xyz files")  # before the models load
    bare = tmp_path / "plotfile"  # no extension: PNG, written exactly there
    r = invoke("eval", *trio(tiny), data, "--beta", "0,1", "--plot", bare)
    assert r.exit_code == 0, r.output
    assert bare.read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "plotfile.png").exists()
    # a write that fails (here: a 2000-byte file size limit) is an error, never "plot written"
    limited = tmp_path / "limited.png"
    r = run_cli(
        "eval",
        *trio(tiny),
        data,
        "--beta",
        "0,1",
        "--plot",
        limited,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2000, -1)),
    )
    assert r.returncode == 1 and b"plot written" not in r.stderr, r.stderr
    assert (
        r.stderr.decode()
        .strip()
        .splitlines()[-1]
        .startswith(f"localeft: error: cannot write {limited}")
    )


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    """The real program in a child process."""
    env = {**os.environ, "LOCALEFT_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "localeft", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        **kw,
    )


# --- /save writes only where the user said, and never over what is not a file ------------------
def names(d: Path) -> list[str]:
    """What is in d, beside the isolated caches and state."""
    return sorted(p.name for p in d.iterdir() if p.name not in ("hf", "xdg", "xdg-state"))


def chat(tiny, script: str, *args):
    return invoke("chat", *trio(tiny), "-n", "4", "--no-speculative", *args, input=script)


def test_save_never_replaces_a_device_a_fifo_a_symlink_or_a_directory(tiny, tmp_path):
    fifo = tmp_path / "fifo"  # stands in for /dev/full: a special file
    os.mkfifo(fifo)
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = chat(tiny, f"hello\n/save {fifo}\n/save {link}\n/save -f {link}\n/save {tmp_path}\n")
    assert r.exit_code == 0 and "Traceback" not in r.output
    assert r.stderr.count("not a regular file") == 4, r.stderr
    assert fifo.is_fifo() and link.is_symlink() and target.read_text() == "precious"
    assert names(tmp_path) == ["fifo", "link.json", "target.txt"]


def test_save_asks_before_replacing_a_file_and_leaves_nothing_beside_it(tiny, tmp_path):
    saved = tmp_path / "chat.json"
    beside = tmp_path / "chat.json.tmp"  # someone's file where the old code put its temporary
    beside.write_text("mine")
    r = chat(tiny, f"hello\n/save {saved}\n")
    assert json.loads(saved.read_text())["messages"][0]["content"] == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file (not 0600)
    saved.chmod(0o640)
    r = chat(tiny, f"the cat\n/save {saved}\n")  # not a terminal: refused, with the way out
    assert "exists" in r.stderr and f"/save -f {saved}" in r.stderr
    assert json.loads(saved.read_text())["messages"][0]["content"] == "hello"
    r = chat(tiny, f"the cat\n/save -f {saved}\n")
    assert r.exit_code == 0 and json.loads(saved.read_text())["messages"][0]["content"] == "the cat"
    assert saved.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    assert beside.read_text() == "mine"
    assert names(tmp_path) == ["chat.json", "chat.json.tmp"]


def test_save_on_a_terminal_asks(tiny, tmp_path, monkeypatch):
    from localeft import repl

    saved = tmp_path / "chat.json"
    saved.write_text("{}")
    answers = iter(["hello", f"/save {saved}", "n", f"/save {saved}", "y", "/bye"])
    monkeypatch.setattr(repl, "stdin_is_tty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    r = chat(tiny, "")
    assert r.exit_code == 0, r.output
    assert json.loads(saved.read_text())["messages"][0]["content"] == "hello"
    assert "(not saved" in r.stderr


# --- --resume -----------------------------------------------------------------------------------
def test_resume_errors_are_one_line_before_the_models_load(tiny, tmp_path):
    missing = trio(tiny, large_base=tmp_path / "absent.gguf")
    bad = tmp_path / "bad.json"
    for content, needle in (
        ("{not json", "not JSON"),
        (json.dumps({"settings": {}}), 'no "messages" list'),
        (json.dumps({"messages": [{"role": "user"}]}), "message 1 is not"),
        (b"\xff\xfe", "not UTF-8"),
    ):
        (bad.write_bytes if isinstance(content, bytes) else bad.write_text)(content)
        r = invoke("chat", *missing, "--resume", bad, input="")
        assert_one_line_error(r, 1, f"cannot resume from {bad}", needle)


def test_resume_restores_the_settings_and_names_those_it_drops(tiny, tmp_path):
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi"},
                ],
                "settings": {
                    "temperature": "hot",
                    "top_k": 7,
                    "beta": 1.5,
                    "mode": "large",
                    "min_p": 2,
                    "max_tokens": 99,
                    "seed": 11,
                },
            }
        )
    )
    out = tmp_path / "out.json"
    r = chat(tiny, f"/save {out}\n", "--resume", old, "--seed", "3")
    assert r.exit_code == 0, r.output
    dropped = [line for line in r.stderr.splitlines() if "not restored" in line]
    assert len(dropped) == 1 and "temperature 'hot'" in dropped[0]
    assert "min_p 2" in dropped[0] and "top_k" not in dropped[0]
    settings = json.loads(out.read_text())["settings"]
    assert settings["top_k"] == 7 and settings["beta"] == 1.5 and settings["mode"] == "large"
    assert settings["seed"] == 3 and settings["max_tokens"] == 4  # given as flags: kept
    assert settings["temperature"] == 0.0 and settings["min_p"] == 0.0
