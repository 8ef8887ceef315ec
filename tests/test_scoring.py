"""Scoring, per-token log-probs in generation, the token view and multiple-choice eval: every
number equals an independent reference, across chunk boundaries and vocabularies."""

from __future__ import annotations

import json
import re

import llama_cpp
import numpy as np
import pytest

from localeft import InvalidParameterError
from localeft import terminal as terminal_module
from localeft.prompts import render_template


def log_softmax64(rows: np.ndarray) -> np.ndarray:
    """Row-wise float64 log-softmax."""
    x = np.asarray(rows, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


TEXT = b"the cat is a dog and hello world the sun is red the moon is blue " * 12


@pytest.fixture(scope="module")
def rows_of(tiny):
    """Reference rows: llama-cpp-python's own Llama, every position's logits in one call, in
    compute passes of 16 rows like localeft's scoring chunks (at 64 rows in one pass llama.cpp
    switches to a tiled attention kernel, which rounds differently: up to 1e-2 here)."""
    cache = {}

    def rows(path, tokens) -> np.ndarray:
        key = (str(path), tuple(tokens))
        if key not in cache:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=256,
                logits_all=True,
                n_threads=1,
                verbose=False,
                flash_attn=True,
                n_ubatch=16,
            )
            llm.eval(list(tokens))
            cache[key] = np.array(llm.scores[: len(tokens)], dtype=np.float64)
            llm.close()
        return cache[key]

    return rows


# Where a value comes from llama.cpp's single-token kernels on one side and its batched ones on
# the other (generation vs scoring, KV caches written by earlier calls), the two round apart:
# up to ~1.5e-3 in log-prob on these F32 models (F16 KV cache, F16 attention accumulation).
KERNELS = 3e-3


def continuation_ids(em, n: int) -> list[int]:
    ids = em.models["ft"].tokenize(TEXT.decode(), add_bos=False)
    assert len(ids) >= n
    return ids[:n]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
def test_score_equals_the_reference_and_step_by_step_logprobs(make_em, tiny, rows_of, n):
    em = make_em()  # fresh caches: KV entries written by earlier calls round apart (F16)
    cont = continuation_ids(em, n)
    s = em.score("Hello", cont)
    prompt = em.prompt_tokens("Hello")["ft"]
    whole = prompt + cont
    ref = {
        label: log_softmax64(rows_of(path, whole)[len(prompt) - 1 : len(whole) - 1])
        for label, path in (
            ("base", tiny.large_base),
            ("ft", tiny.small_ft),
            ("ref", tiny.small_base),
        )
    }
    at = np.arange(n)
    eft_ref = ref["base"] + ref["ft"] - ref["ref"]
    eft_ref = eft_ref - np.log(np.exp(eft_ref).sum(axis=1, keepdims=True))
    assert [t.id for t in s.tokens] == cont and len(s.tokens) == n
    for label in ("base", "ft", "ref"):
        got = np.array([t.models[label] for t in s.tokens])
        assert np.abs(got - ref[label][at, cont]).max() <= 1e-5, label
        assert s.totals[label].logprob == pytest.approx(got.sum())
    eft = np.array([t.logprob for t in s.tokens])
    assert np.abs(eft - eft_ref[at, cont]).max() <= 1e-5
    ranks = [int((eft_ref[j] > eft_ref[j, t]).sum()) + 1 for j, t in enumerate(cont)]
    assert [t.rank for t in s.tokens] == ranks
    assert [t.base_top for t in s.tokens] == list(np.argmax(ref["base"], axis=1))
    assert s.totals["eft"].tokens == n and s.totals["eft"].perplexity == pytest.approx(
        np.exp(-eft.mean())
    )
    for j in sorted({0, n // 2, n - 1}):  # the public one-row API, fresh prefix each time
        em.logprobs("zzz")
        lp = em.logprobs("Hello", after=cont[:j])
        # one pass of 64+ rows takes llama.cpp's tiled attention kernel, rounding apart
        tolerance = 1e-5 if len(prompt) + j < 64 else KERNELS
        assert abs(lp[cont[j]] - s.tokens[j].logprob) <= tolerance
    # step by step with the KV cache reused: llama.cpp's single-token kernels round apart
    # from its batched ones, and K/V stored in F16 keep that rounding: up to ~1.5e-3 here
    em.logprobs("zzz")
    steps = [em.logprobs("Hello", after=cont[:j])[cont[j]] for j in range(min(n, 20))]
    assert np.abs(np.array(steps) - eft[: len(steps)]).max() <= KERNELS


def test_score_at_several_betas_in_one_pass(em):
    cont = continuation_ids(em, 20)
    s = em.score("Hello", cont, betas=[0, 0.5, 2])
    for b in (0, 0.5, 2):
        assert s.by_beta[b].logprob == pytest.approx(
            em.score("Hello", cont, beta=b).totals["eft"].logprob, abs=KERNELS
        )
    assert s.by_beta[0].logprob == pytest.approx(s.totals["base"].logprob, abs=1e-4)


def test_chat_scoring_is_the_reply_under_the_template(em):
    msgs = [{"role": "user", "content": "hello world"}]
    chat = em.score(msgs, "the cat is a dog")
    raw = em.score(render_template(em.models["ft"], msgs), "the cat is a dog")
    assert [t.id for t in chat.tokens] == [t.id for t in raw.tokens]
    assert chat.text == "the cat is a dog"
    assert chat.totals["eft"].logprob == pytest.approx(raw.totals["eft"].logprob, abs=KERNELS)


def test_text_continuations_split_at_the_prompt(em):
    s = em.score("the cat", " is a dog")
    assert s.text == " is a dog"
    whole = em.prompt_tokens("the cat is a dog")["ft"]
    assert [t.id for t in s.tokens] == whole[len(em.prompt_tokens("the cat")["ft"]) :]


def test_padded_vocabularies(tiny, make_em):
    padded = make_em(large_base=tiny.padded)
    plain = make_em()
    cont = continuation_ids(plain, 30)
    a, b = padded.score("Hello", cont), plain.score("Hello", cont)
    assert np.allclose([t.logprob for t in a.tokens], [t.logprob for t in b.tokens], atol=1e-5)
    # the base alone is normalised over its own (padded) vocabulary
    assert all(t.models["base"] <= u.models["base"] + 1e-6 for t, u in zip(a.tokens, b.tokens))


@pytest.mark.parametrize(
    "cont,match",
    [("", "empty"), ([], "empty"), ([10**9], "token id"), (5, "token ids|empty|must")],
)
def test_bad_continuations(em, cont, match):
    with pytest.raises((InvalidParameterError, TypeError), match=match):
        em.score("Hello", cont)


# --- logprobs in generation ---------------------------------------------------------------------
@pytest.mark.parametrize("speculative", [False, True])
def test_generation_logprobs_equal_score_of_the_generated_tokens(em, speculative):
    kw = dict(max_tokens=30, logprobs=4, speculative=speculative)
    g = em.generate("the cat", **kw)
    assert len(g.logprobs) == len(g.tokens) == 30
    s = em.score("the cat", g.tokens)
    for rec, ref in zip(g.logprobs, s.tokens):
        assert rec.id == ref.id and rec.base_top == ref.base_top
        assert abs(rec.logprob - ref.logprob) <= KERNELS  # single-token vs batched kernels
        for label in ("base", "ft", "ref"):
            assert abs(rec.models[label] - ref.models[label]) <= KERNELS
        assert len(rec.top) == 4 and [lp for _, _, lp in rec.top] == sorted(
            [lp for _, _, lp in rec.top], reverse=True
        )
        assert rec.rank == 1 and rec.top[0][0] == rec.id  # greedy: the top token
    off = em.generate("the cat", max_tokens=30)
    assert off.logprobs is None and off.tokens == g.tokens


def test_sampled_generation_records_follow_the_chosen_tokens(em):
    g = em.generate("hello", max_tokens=25, temperature=1.2, seed=5, logprobs=2, draft_tokens=3)
    assert [r.id for r in g.logprobs] == g.tokens
    assert all(r.rank >= 1 and r.logprob <= 0 for r in g.logprobs)
    assert "".join(r.text for r in g.logprobs) == g.text


# --- command line ---------------------------------------------------------------------------------


def test_explain_uses_escape_codes_only_on_a_terminal(run, monkeypatch):
    piped = run("generate", "--raw", "-n", "20", "--explain", "the cat")
    assert piped.exit_code == 0 and "\x1b[" not in piped.output and "[" in piped.stdout
    monkeypatch.setattr(terminal_module, "stdout_is_tty", lambda: True)
    tty = run("generate", "--raw", "-n", "20", "--explain", "the cat")
    assert "\x1b[48;5;" in tty.stdout
    strip = re.sub(r"\x1b\[[0-9;]*m", "", tty.stdout.splitlines()[0])
    assert strip == re.sub(r"[\[\]]", "", piped.stdout.splitlines()[0]) or "[" in strip


def test_html_page_holds_the_same_records_as_json(run, tmp_path):
    page = tmp_path / "view.html"
    j = run("generate", "--raw", "-n", "15", "--json", "--html", page, "the cat")
    assert j.exit_code == 0, j.output
    records = json.loads(j.stdout)["logprobs"]
    html = page.read_text()
    embedded = json.loads(
        re.search(r'id="records" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert embedded == records and len(records) == 15
    assert html.count('class="tok') == 15 and "http" not in html.split("<body>")[1]


def test_score_command(run, tmp_path):
    r = run("score", "the cat", " is a dog", "--per-token")
    assert r.exit_code == 0 and "EFT (beta 1)" in r.stdout and "' dog'" in r.stdout
    lines = tmp_path / "pairs.jsonl"
    lines.write_text(
        '{"prompt": "the cat", "completion": " is a dog"}\n'
        "not json\n"
        '{"messages": [{"role": "user", "content": "hi"}], "completion": "hello"}\n'
        '{"prompt": "x"}\n'
    )
    r = run("score", "--jsonl", lines, "--json")
    assert r.exit_code == 1
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 3]
    assert "line 2: not JSON" in r.stderr and 'line 4: needs a non-empty "completion"' in r.stderr


# --- eval -----------------------------------------------------------------------------------------
def reference_loglik(tiny, rows_of, em, prompt: str, choice: str) -> dict[str, float]:
    s = em.score(prompt, choice)  # only for the token split; values come from the reference
    ptoks = em.prompt_tokens(prompt)["ft"]
    cut = len(ptoks) - (len(ptoks) + len(s.tokens) - len(em.prompt_tokens(prompt + choice)["ft"]))
    whole = ptoks[:cut] + [t.id for t in s.tokens]
    at = np.arange(len(s.tokens))
    ids = [t.id for t in s.tokens]
    ls = {
        label: log_softmax64(rows_of(path, whole)[cut - 1 : len(whole) - 1])
        for label, path in (
            ("base", tiny.large_base),
            ("ft", tiny.small_ft),
            ("ref", tiny.small_base),
        )
    }
    eft = ls["base"] + ls["ft"] - ls["ref"]
    eft = eft - np.log(np.exp(eft).sum(axis=1, keepdims=True))
    return {
        "eft": float(eft[at, ids].sum()),
        "base": float(ls["base"][at, ids].sum()),
        "ft": float(ls["ft"][at, ids].sum()),
    }


def test_eval_picks_the_reference_answer(tiny, rows_of, em, run, tmp_path):
    questions = ["the cat is", "hello", "the sun is", "a dog and", "the moon"]
    choices = [" red", " blue", " a dog", " good"]
    lines, expect = [], {"eft": 0, "base": 0, "ft": 0}
    for q in questions:
        ll = [reference_loglik(tiny, rows_of, em, q, c) for c in choices]
        eft = [x["eft"] for x in ll]
        answer = int(np.argmax(eft))
        assert sorted(eft)[-1] - sorted(eft)[-2] > 1e-3  # no near-tie to flip on rounding
        for k in expect:
            expect[k] += int(np.argmax([x[k] for x in ll])) == answer
        lines.append(json.dumps({"prompt": q, "choices": choices, "answer": answer}))
    path = tmp_path / "mc.jsonl"
    path.write_text(
        "\n".join(lines[:2] + ['{"prompt": "x", "choices": ["a"], "answer": 0}'] + lines[2:]) + "\n"
    )
    r = run("eval", path, "--beta", "1,0", "--json")
    assert r.exit_code == 1 and "line 3:" in r.stderr and "choices" in r.stderr
    report = json.loads(r.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert report["items"] == 5 and report["skipped_lines"] == 1
    assert rows["EFT beta=1"]["accuracy"] == 1.0
    assert rows["large base alone"]["accuracy"] == expect["base"] / 5
    assert rows["small fine-tuned alone"]["accuracy"] == expect["ft"] / 5
    assert rows["EFT beta=0"]["accuracy"] == rows["large base alone"]["accuracy"]


def test_eval_table_and_plot(run, tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(
        '{"prompt": "the cat is", "choices": [" red", " blue"], "answer": 0}\n'
        '{"messages": [{"role": "user", "content": "hi"}], "choices": ["hello", "no"], '
        '"answer": 1}\n'
    )
    png = tmp_path / "acc.png"
    r = run("eval", path, "--beta", "0,1,2", "--plot", png)
    assert r.exit_code == 0, r.output
    assert "EFT beta=2" in r.stdout and "small fine-tuned alone" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run("eval", path, "--beta", "one")
    assert bad.exit_code == 2 and "--beta" in bad.output


def test_scoring_a_prompts_own_tokens(em):
    """What evaluation harnesses ask of a server (echo, max_tokens 0): every token of a text
    after the first, given the ones before it."""
    ids = em.prompt_tokens("the cat is a dog and hello world")["ft"]
    s = em.score(ids[:1], ids[1:])
    assert [t.id for t in s.tokens] == ids[1:]
    ref = em.score("the cat", ids[len(em.prompt_tokens("the cat")["ft"]) :])
    # bit for bit: scores are read in one layout over the whole text, wherever the split is
    assert [t.logprob for t in s.tokens][-len(ref.tokens) :] == [t.logprob for t in ref.tokens]
    with pytest.raises(InvalidParameterError):
        em.score([10**9], ids[1:])


def test_score_top_gives_the_eft_alternatives(em):
    ids = em.prompt_tokens("the cat is a dog and hello world")["ft"]
    s = em.score(ids[:1], ids[1:], top=4)
    for t in s.tokens:
        assert len(t.top) == 4 and t.top[0][0] == t.eft_top
        lps = [lp for _, _, lp in t.top]
        assert lps == sorted(lps, reverse=True)
        assert (t.top[0][2] == t.logprob) == (t.rank == 1)  # the same float when it is the top
        assert all(lp <= t.top[0][2] for lp in lps)
    assert all(not t.top for t in em.score(ids[:1], ids[1:]).tokens)
    with pytest.raises(InvalidParameterError, match="top must be an integer <= 20"):
        em.score(ids[:1], ids[1:], top=21)


def test_generation_from_token_ids(em):
    text = "the cat is a"
    ids = em.prompt_tokens(text)["ft"]
    assert em.generate(ids, max_tokens=6).tokens == em.generate(text, max_tokens=6).tokens
    assert em.generate(ids[1:], max_tokens=6).tokens != []  # no BOS added to ids
    with pytest.raises(InvalidParameterError, match="prompt token id"):
        em.generate([10**9], max_tokens=2)
    with pytest.raises(InvalidParameterError, match="prompt string or token ids"):
        em.generate(None)
