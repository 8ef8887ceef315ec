"""The same request, the same answer: a request's tokens, text and log-probs are a function of
the request alone, never of what ran before it (the decode layout, localeft/layout.py).

Every comparison here is exact (==), not approximate: llama.cpp rounds differently for
different batch shapes, so anything short of a canonical layout shows up in the last bits of
the log-probs long before it changes a token.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from liveserver import running

from localeft import LoRA, layout
from localeft.request import build
from localeft.server.app import create_app

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello, the cat is a dog"},
]
TEXT = "the cat is a dog and the sun is red, hello world"
GREEDY = dict(max_tokens=10, logprobs=3, temperature=0.0)
SAMPLED = dict(max_tokens=10, logprobs=3, temperature=1.3, top_p=0.9, seed=11)


def signature(g) -> tuple:
    """Everything a request returns that must repeat: tokens, text, log-probs and the
    alternatives' log-probs, and why it stopped."""
    records = [(r.id, r.logprob, tuple(r.models.items()), tuple(r.top)) for r in g.logprobs]
    return g.tokens, g.text, g.finish_reason, records


def run(em, prompt, **kw):
    is_chat = isinstance(prompt, list) and isinstance(prompt[0], dict)
    return em.chat(prompt, **kw) if is_chat else em.generate(prompt, **kw)


def longer(prompt):
    """A request that shares `prompt`'s beginning and goes on (a longer history)."""
    if isinstance(prompt, str):
        return prompt + " and the moon is blue"
    if isinstance(prompt[0], int):
        return list(prompt) + list(prompt)
    return prompt + [
        {"role": "assistant", "content": "the sun is red"},
        {"role": "user", "content": "and the moon?"},
    ]


def shorter(prompt):
    if isinstance(prompt, str):
        return prompt[: len(prompt) // 2]
    if isinstance(prompt[0], int):
        return list(prompt[: len(prompt) // 2])
    return prompt[:1] + [{"role": "user", "content": "hello"}]


HISTORIES = {
    "after an unrelated request": lambda em, p, kw: em.generate("a dog is a cat", max_tokens=6),
    "repeated at once": lambda em, p, kw: run(em, p, **kw),
    "after a longer request sharing its prefix": lambda em, p, kw: run(em, longer(p), **kw),
    "after a shorter prefix": lambda em, p, kw: run(em, shorter(p), max_tokens=4),
    "after another mode": lambda em, p, kw: run(em, p, **{**kw, "mode": "base"}),
    "after scoring its prompt": lambda em, p, kw: em.logprobs(p),
    "after the request ran speculatively": lambda em, p, kw: run(em, p, **kw, draft_tokens=3),
}


def prompts(em):
    return {"chat": CHAT, "text": TEXT, "ids": em.prompt_tokens(TEXT)["ft"]}


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("kind", ["chat", "text", "ids"])
@pytest.mark.parametrize("trio", ["files", "lora"])
def test_a_request_gives_the_same_bytes_in_every_history(
    make_em, tiny, adapters, trio, kind, settings
):
    # "lora": the fine-tuned model is the small base with an adapter (two contexts of one
    # model, one of them adapted): its layout holds the same way
    overrides = {"small_ft": LoRA(tiny.small_base, adapters.a)} if trio == "lora" else {}
    fresh = make_em(**overrides)
    prompt = prompts(fresh)[kind]
    want = signature(run(fresh, prompt, **settings))
    em = make_em(**overrides)
    for name, before in HISTORIES.items():
        before(em, prompt, settings)
        assert signature(run(em, prompt, **settings)) == want, name
    if trio == "lora":  # and the adapter is in effect
        assert signature(run(make_em(), prompt, **settings)) != want


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_abandoned_and_interleaved_streams_change_nothing(make_em, kind):
    fresh = make_em()
    prompt = prompts(fresh)[kind]
    want = signature(run(fresh, prompt, **GREEDY))
    em = make_em()
    abandoned = em.stream(longer(prompt), max_tokens=30)
    next(abandoned), next(abandoned)  # left suspended, its contexts half way
    assert signature(run(em, prompt, **GREEDY)) == want
    # a stream suspended while other requests run continues with the same bytes
    for spec in (False, True):
        s = em.stream(prompt, **GREEDY, speculative=spec, draft_tokens=2 if spec else None)
        next(s)
        run(em, shorter(prompt), max_tokens=3)
        em.logprobs("hello world")
        for _ in s:
            pass
        mine = signature(s.generation)
        alone = run(make_em(), prompt, **GREEDY, speculative=spec, draft_tokens=2 if spec else None)
        assert mine == signature(alone)


def test_a_chat_that_grows_reuses_its_caches_and_equals_a_cold_request(make_em):
    """Turn by turn, each request evaluates only its new tokens (the reply was decoded as it was
    generated), and a fresh Emulator given the whole history computes the same bytes."""
    em = make_em()
    messages = list(CHAT)
    for turn in range(3):
        g = em.chat(messages, **GREEDY)
        cold = make_em().chat(messages, **GREEDY)
        assert signature(g) == signature(cold)
        if turn:  # every context evaluates only what follows the last reply
            per_context = g.stats.prompt_evaluated / 3
            assert per_context < len(em.prompt_tokens(messages)["ft"]) / 2
        messages += [
            {"role": "assistant", "content": g.text},
            {"role": "user", "content": f"and then {turn}?"},
        ]


def test_logprobs_repeat_after_any_other_request(make_em):
    fresh = make_em()
    want = {k: fresh.logprobs(p) for k, p in prompts(fresh).items()}
    em = make_em()
    for k, p in prompts(em).items():
        for before in (
            lambda p: em.logprobs(shorter(p)),
            lambda p: run(em, longer(p), max_tokens=5),
            lambda p: em.generate("the sun", max_tokens=3),
            lambda p: em.logprobs(p),
        ):
            before(p)
            assert np.array_equal(em.logprobs(p), want[k]), k


def test_score_eval_echo_and_logprobs_after_agree_bit_for_bit(make_em):
    em = make_em()
    prompt, choice = "the cat is a dog and", " the sun is red"
    ids = em.prompt_tokens(prompt + choice)["ft"]
    s = em.score(prompt, choice)
    n = len(s.tokens)
    echo = em.score(ids[:1], ids[1:])  # the server's echo of the whole text
    assert [t.logprob for t in echo.tokens[-n:]] == [t.logprob for t in s.tokens]
    for j, t in enumerate(s.tokens):  # logprobs(after=) at every position
        lp = em.logprobs(ids[:1], after=ids[1 : len(ids) - n + j])
        assert lp[t.id] == t.logprob
    assert sum(t.logprob for t in s.tokens) == s.totals["eft"].logprob
    # eval scores each choice the same way, whatever was scored before
    from localeft.scoring import Item, evaluate

    rows = list(evaluate(em.score, [Item(1, prompt, [choice, " the moon"], 0)], [1.0], {}))
    again = make_em().score(prompt, choice)
    assert [t.logprob for t in again.tokens] == [t.logprob for t in s.tokens]
    assert rows[-1][1][0].total == 1


def test_the_server_gives_the_same_bytes_in_any_order(make_em):
    """The same requests in shuffled orders, and lm-evaluation-harness's shapes (a batch of
    token-id prompts with echo) equal to one request at a time."""
    em = make_em()
    chat = dict(messages=CHAT, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
    ids = em.prompt_tokens(TEXT)["ft"]
    other = em.prompt_tokens("the moon is blue and hello")["ft"]
    echo = dict(prompt=[ids, other], echo=True, max_tokens=0, logprobs=1)
    completion = dict(prompt=TEXT, temperature=0, max_tokens=8, logprobs=2)
    requests = {
        "chat": ("/v1/chat/completions", chat),
        "echo": ("/v1/completions", echo),
        "completion": ("/v1/completions", completion),
        "seeded": ("/v1/completions", dict(completion, temperature=1.0, seed=5)),
    }

    def answer(url, name):
        path, body = requests[name]
        r = httpx.post(url + path, json=body, timeout=60).json()
        for k in ("id", "created", "usage"):
            r.pop(k, None)
        for c in r["choices"]:
            c.get("localeft", {}).pop("stats", None)
        r.pop("localeft", None)
        return json.dumps(r, sort_keys=True)

    with running(create_app(em, model="tiny")) as url:
        first = {name: answer(url, name) for name in requests}
        rng = np.random.default_rng(0)
        for _ in range(3):
            for name in rng.permutation(list(requests)):
                assert answer(url, name) == first[name], name
        one = httpx.post(url + "/v1/completions", json=dict(echo, prompt=other), timeout=60).json()
        batch = json.loads(first["echo"])
        assert batch["choices"][1]["logprobs"] == one["choices"][0]["logprobs"]
    with running(create_app(make_em(), model="tiny")) as url:  # a fresh server
        assert {name: answer(url, name) for name in requests} == first


def test_the_chat_repl_retry_gives_the_same_reply(make_em, monkeypatch, capsys):
    from localeft import repl

    generations = []
    real = repl.run

    def spy(*args, **kw):
        g = real(*args, **kw)
        generations.append(g)
        return g

    monkeypatch.setattr(repl, "run", spy)
    em = make_em()
    session = repl.ChatSession(em, dict(GREEDY), "eft", "be brief", False)
    session.save_history = lambda: None
    session.reply("hello, the cat is a dog")
    session.retry()
    session.retry()
    want = signature(make_em().chat(CHAT, **GREEDY))
    assert [signature(g) for g in generations] == [want] * 3


def test_the_layout_is_a_function_of_the_tokens():
    toks = list(range(300))
    calls = layout.plan(toks, [(100, 110)], chunk=64)
    assert calls[0] == (0, tuple(range(64)))
    assert calls[1] == (64, tuple(range(64, 100)))  # the prompt stretch ends where the reply starts
    assert calls[2:12] == [(p, (p,)) for p in range(100, 110)]  # the reply: one token per call
    assert calls[12] == (110, tuple(range(110, 174)))  # the next stretch chunks from its start
    # what a cache holds is reused only as far as it was computed by the same calls
    assert layout.matched(calls, 300, calls, 300) == len(calls)
    other = layout.plan(toks[:120], [], chunk=64)
    assert layout.matched(other, 120, calls, 300) == 1
    assert layout.scoring_plan(toks)[1] == (16, tuple(range(16, 32)))


def test_a_request_is_its_whole_recipe():
    """A sampled request without a seed gets one when it is built: the Request repeats."""
    r = build("hi", temperature=0.7)
    assert r.sampling.seed is not None and build("hi", temperature=0.0).sampling.seed is None


def test_with_gpu_offload_a_speculative_chat_repeats_and_reuses_its_prompts(make_em):
    """With GPU offload (speculative by default) a history's replies are decoded in chunks: a
    turn re-decodes only the previous reply, and equals a cold request. (The layout rule is
    tested here on the CPU by marking the group as offloaded.)"""

    def offloaded():
        em = make_em()
        em.group.gpu_offload = True
        return em

    em = offloaded()
    messages = list(CHAT)
    kw = dict(GREEDY, speculative=True, draft_tokens=3)
    for turn in range(3):
        g = em.chat(messages, **kw)
        assert signature(g) == signature(offloaded().chat(messages, **kw))
        if turn:  # the history before the last reply comes from the caches
            whole = len(em.prompt_tokens(messages)["ft"])
            assert g.stats.prompt_evaluated / 3 < whole / 2
        messages += [
            {"role": "assistant", "content": g.text},
            {"role": "user", "content": f"and then {turn}?"},
        ]
