"""`localeft serve`: the real server on a loopback port, driven by the official `openai` client
and raw HTTP. Every reply is checked against the Emulator called directly."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from liveserver import post, running

from localeft import InvalidParameterError
from localeft.server import is_loopback
from localeft.server.app import create_app

HI = [{"role": "user", "content": "hi"}]
GREEDY = dict(temperature=0, max_tokens=12)
# The same request gives the same bytes whatever ran before it (the decode layout, layout.py):
# the server's log-probs equal the Emulator's own exactly.


@pytest.fixture(scope="module")
def sem(make_em):
    """The Emulator the servers of this module share."""
    return make_em()


@pytest.fixture(scope="module")
def url(sem):
    with running(create_app(sem, model="tiny")) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def wait_for(url: str, cond, timeout: float = 10.0) -> dict:
    """Poll /health until cond(queue state) holds."""
    deadline = time.monotonic() + timeout
    while True:
        q = httpx.get(url + "/health").json()["queue"]
        if cond(q):
            return q
        assert time.monotonic() < deadline, f"queue never reached the state wanted: {q}"
        time.sleep(0.01)


def first_event(lines) -> dict:
    """The first event of a stream's lines (keep the iterator: closing it closes the
    connection)."""
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[6:])
    raise AssertionError("no event")


# --- the endpoints -----------------------------------------------------------------------------
def test_models_and_health(url, client, sem):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["n_ctx"] == sem.n_ctx and health["auth"] is False
    assert health["queue"]["running"] == 0 and health["queue"]["limit"] == 16


def test_chat_equals_the_emulator(client, sem):
    r = client.chat.completions.create(model="tiny", messages=HI, **GREEDY)
    g = sem.chat(HI, **GREEDY)
    assert r.choices[0].message.content == g.text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == {"length": "length", "eog": "stop"}[g.finish_reason]
    assert r.usage.prompt_tokens == g.stats.prompt_tokens == len(sem.prompt_tokens(HI)["ft"])
    assert r.usage.completion_tokens == len(g.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.localeft["stats"]["generated_tokens"] == len(g.tokens)


def test_chat_streamed_equals_not_streamed_with_usage_last(client, sem):
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=HI, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    g = sem.chat(HI, **GREEDY)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == g.text
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]  # 12 tokens, no end of generation on this prompt
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(g.tokens)
    assert chunks[-1].usage.prompt_tokens == g.stats.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # without stream_options, no usage chunk
    plain = list(client.chat.completions.create(model="tiny", messages=HI, stream=True, **GREEDY))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_sse_ends_with_done(url):
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={"messages": HI, "stream": True, **GREEDY}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    assert all(x.startswith("data: ") for x in lines)


def test_chat_logprobs_equal_the_emulator_records(client, sem):
    r = client.chat.completions.create(
        model="tiny", messages=HI, logprobs=True, top_logprobs=3, **GREEDY
    )
    g = sem.chat(HI, logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == [t.logprob for t in g.logprobs]
    assert [c.token for c in content] == [t.text for t in g.logprobs]
    for c, t in zip(content, g.logprobs):
        assert [a.logprob for a in c.top_logprobs] == [x[2] for x in t.top]
        assert len(c.top_logprobs) == 3
    records = r.localeft["tokens"]
    assert [x["id"] for x in records] == g.tokens
    assert {"differs_from_base", "shift", "models", "top"} <= set(records[0])
    # streamed: the same records, spread over the chunks
    chunks = client.chat.completions.create(
        model="tiny", messages=HI, logprobs=True, top_logprobs=3, stream=True, **GREEDY
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [c.logprob for c in streamed] == [t.logprob for t in g.logprobs]


def test_completion_echo_equals_score(client, sem):
    prompt = "the cat is a dog and hello world"
    r = client.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=0, logprobs=2)
    ids = sem.prompt_tokens(prompt)["ft"]
    s = sem.score(ids[:1], ids[1:])
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == [t.logprob for t in s.tokens]
    assert len(lp.tokens) == len(ids)
    text = r.choices[0].text
    assert "".join(lp.tokens) == text and text.strip() == prompt
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]
    for top, t in zip(lp.top_logprobs[1:], s.tokens):
        assert len(top) <= 2 and max(top.values()) >= t.logprob - 1e-12
        assert (max(top.values()) == t.logprob) == (t.rank == 1)  # how harnesses test greediness
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    assert r.choices[0].finish_reason == "length"


def test_completion_echo_of_token_ids_and_batches(client, sem):
    """lm-evaluation-harness's request: token ids (a batch), echo, max_tokens 1, logprobs 1;
    it sums token_logprobs[ctxlen:-1]."""
    ids = sem.prompt_tokens("hello world the sun is red")["ft"]
    other = sem.prompt_tokens("the moon is blue")["ft"]
    r = client.completions.create(
        model="tiny", prompt=[ids, other], echo=True, max_tokens=1, logprobs=1, temperature=0
    )
    assert [c.index for c in r.choices] == [0, 1]
    for choice, toks in zip(r.choices, (ids, other)):
        s = sem.score(toks[:1], toks[1:])
        lp = choice.logprobs.token_logprobs
        assert len(lp) == len(toks) + 1  # the prompt's tokens, then the generated one
        assert lp[1:-1] == [t.logprob for t in s.tokens]
        g = sem.generate(toks, max_tokens=1, temperature=0)
        assert choice.text.endswith(g.text)
    assert r.usage.completion_tokens == 2
    # beta is honoured in the scores too
    r0 = client.completions.create(
        model="tiny", prompt=ids, echo=True, max_tokens=0, logprobs=0, extra_body={"beta": 0}
    )
    s0 = sem.score(ids[:1], ids[1:], beta=0)
    assert r0.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        [t.logprob for t in s0.tokens]
    )


def test_completion_logprobs_of_generated_tokens(client, sem):
    prompt = "the cat"
    r = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=8, logprobs=3, temperature=0
    )
    g = sem.generate(prompt, max_tokens=8, logprobs=3, temperature=0)
    assert r.choices[0].text == g.text
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == [t.logprob for t in g.logprobs]
    assert lp.text_offset[0] == len(prompt)
    assert all(len(t) <= 3 for t in lp.top_logprobs)
    # streamed completions: the same text
    chunks = list(
        client.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == g.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_beta_and_mode_are_honoured(client, sem):
    def ask(**extra):
        r = client.chat.completions.create(model="tiny", messages=HI, extra_body=extra, **GREEDY)
        return r.choices[0].message.content, r.localeft

    for beta in (0, 2.5):
        text, ext = ask(beta=beta)
        assert text == sem.chat(HI, beta=beta, **GREEDY).text and ext["beta"] == beta
    assert ask(beta=0)[0] != ask(beta=2.5)[0]
    assert ask(mode="large")[0] == sem.chat(HI, mode="base", **GREEDY).text
    assert ask(mode="small")[0] == sem.chat(HI, mode="ft", **GREEDY).text
    text, ext = ask(top_k=3, min_p=0.1, speculative=True, draft_tokens=2)
    assert text == sem.chat(HI, **GREEDY).text  # speculative decoding: the same greedy tokens
    assert ext["stats"]["speculative"] is True and ext["stats"]["drafted"] > 0


def test_structured_output_and_penalties(client, sem):
    """response_format, llama-server's grammar field, penalties and logit_bias reach the
    engine: the same text as the Emulator called with them directly."""
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
        "required": ["ok", "n"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    r = client.chat.completions.create(
        model="tiny", messages=HI, temperature=1.0, seed=3, max_tokens=60, response_format=fmt
    )
    text = r.choices[0].message.content
    assert json.loads(text)["n"] in (1, 2, 3) and r.choices[0].finish_reason == "stop"
    assert text == sem.chat(HI, temperature=1.0, seed=3, max_tokens=60, json_schema=schema).text
    r = client.chat.completions.create(
        model="tiny",
        messages=HI,
        max_tokens=60,
        response_format={"type": "json_object"},
        temperature=0,
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    bias = {"5": -100.0}
    pen = dict(presence_penalty=0.5, frequency_penalty=0.4)
    r = client.chat.completions.create(model="tiny", messages=HI, logit_bias=bias, **pen, **GREEDY)
    want = sem.chat(HI, logit_bias={5: -100.0}, **pen, **GREEDY)
    assert r.choices[0].message.content == want.text
    g = client.completions.create(
        model="tiny",
        prompt="the cat",
        max_tokens=8,
        temperature=0,
        extra_body={"grammar": 'root ::= "yes" | "no"', "repeat_penalty": 1.3},
    )
    assert g.choices[0].text in ("yes", "no")


def test_seeds_reproduce(client, sem):
    kw = dict(model="tiny", messages=HI, temperature=0.9, max_tokens=16)
    a = client.chat.completions.create(seed=7, **kw)
    b = client.chat.completions.create(seed=7, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content == sem.chat(HI, temperature=0.9, max_tokens=16, seed=7).text
    free = client.chat.completions.create(**kw)  # no seed: the server picks one and says which
    seed = free.localeft["seed"]
    again = client.chat.completions.create(seed=seed, **kw)
    assert again.choices[0].message.content == free.choices[0].message.content


def test_stop_and_finish_reasons(client, sem):
    g = sem.chat(HI, **GREEDY)
    stop = g.text[3:6]
    r = client.chat.completions.create(model="tiny", messages=HI, stop=[stop], **GREEDY)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == g.text[: g.text.index(stop)]
    r = client.chat.completions.create(
        model="tiny", messages=HI, temperature=0, max_completion_tokens=3
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_a_continued_conversation_reuses_the_kv_cache(client):
    turn1 = [{"role": "user", "content": "the cat is a dog and hello world " * 4}]
    r1 = client.chat.completions.create(model="tiny", messages=turn1, **GREEDY)
    # (a reply of this random tiny model does not survive re-tokenization: write our own)
    turn2 = turn1 + [
        {"role": "assistant", "content": "the sun is red"},
        {"role": "user", "content": "and the moon?"},
    ]
    r2 = client.chat.completions.create(model="tiny", messages=turn2, **GREEDY)
    s1, s2 = r1.localeft["stats"], r2.localeft["stats"]
    new = s2["prompt_tokens"] - s1["prompt_tokens"]
    assert s1["prompt_evaluated"] > 0 and new > 0
    # three contexts: only the new tokens are evaluated (a fresh prompt would be 3 * all)
    assert s2["prompt_evaluated"] <= 3 * (new + 1) < 3 * s2["prompt_tokens"] // 2
    assert r2.usage.prompt_tokens == s2["prompt_tokens"]


# --- concurrency --------------------------------------------------------------------------------
def test_four_clients_at_once_get_their_own_replies(url, client, sem):
    prompts = [
        [{"role": "user", "content": f"tell me about {w}"}] for w in ("cats", "dogs", "sun", "moon")
    ]
    expected = [sem.chat(p, **GREEDY).text for p in prompts]
    got = [None] * 4

    def ask(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        if i % 2:
            chunks = c.chat.completions.create(
                model="tiny", messages=prompts[i], stream=True, **GREEDY
            )
            got[i] = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
        else:
            got[i] = (
                c.chat.completions.create(model="tiny", messages=prompts[i], **GREEDY)
                .choices[0]
                .message.content
            )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == expected


def test_a_client_that_drops_mid_stream_frees_the_worker(url, client, sem):
    before = httpx.get(url + "/health").json()["queue"]
    with sem.group.lock:  # the worker blocks at its first token: the drop lands mid-generation
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json={"messages": HI, "stream": True, "temperature": 0, "max_tokens": 200},
        ) as r:
            lines = r.iter_lines()
            assert first_event(lines)["choices"][0]["delta"]["role"] == "assistant"
            q = wait_for(url, lambda q: q["running"] == 1)
            assert q["cancelled"] == before["cancelled"]
        # the client has gone; the worker is still blocked, the cancellation is waiting for it
    q = wait_for(url, lambda q: q["running"] == 0)
    assert q["cancelled"] == before["cancelled"] + 1  # stopped, not run to its end
    r = client.chat.completions.create(model="tiny", messages=HI, **GREEDY)
    assert r.choices[0].message.content == sem.chat(HI, **GREEDY).text


def test_a_waiting_client_that_leaves_is_dropped_from_the_line(url, sem):
    before = httpx.get(url + "/health").json()["queue"]
    body = {"messages": HI, "temperature": 0, "max_tokens": 4}
    with sem.group.lock:
        first = threading.Thread(target=post, args=(url, "/v1/chat/completions", body))
        first.start()
        wait_for(url, lambda q: q["running"] == 1)
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            first_event(lines)
            wait_for(url, lambda q: q["waiting"] == 1)
        q = wait_for(url, lambda q: q["waiting"] == 0)
    first.join(30)
    q = wait_for(url, lambda q: q["running"] == 0)
    assert q["cancelled"] == before["cancelled"] + 1


def test_the_queue_bound_answers_503_with_retry_after(sem):
    with running(create_app(sem, queue=1)) as base:
        body = {"messages": HI, "temperature": 0, "max_tokens": 4}
        results = []
        with sem.group.lock:
            threads = [
                threading.Thread(
                    target=lambda: results.append(post(base, "/v1/chat/completions", body))
                )
                for _ in range(2)
            ]
            threads[0].start()
            wait_for(base, lambda q: q["running"] == 1)
            threads[1].start()
            wait_for(base, lambda q: q["waiting"] == 1)
            r = post(base, "/v1/chat/completions", body)
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["code"] == "queue_full" and err["type"] == "server_error"
            assert "busy" in err["message"]
        for t in threads:
            t.join(30)
        assert [x.status_code for x in results] == [200, 200]
        assert httpx.get(base + "/health").json()["queue"]["rejected"] == 1


# --- errors -------------------------------------------------------------------------------------
def engine_message(sem, **settings) -> str:
    with pytest.raises(InvalidParameterError) as e:
        sem.stream(HI, **settings)
    return str(e.value)


@pytest.mark.parametrize(
    "field, value, engine",
    [
        ("beta", -1, dict(beta=-1)),
        ("temperature", "hot", dict(temperature="hot")),
        ("top_p", 0, dict(top_p=0)),
        ("top_k", 1.5, dict(top_k=1.5)),
        ("max_tokens", 0, dict(max_tokens=0)),
        ("seed", -3, dict(seed=-3)),
        ("stop", 5, dict(stop=5)),
        ("draft_tokens", 99, dict(draft_tokens=99)),
        ("speculative", "yes", dict(speculative="yes")),
    ],
)
def test_invalid_fields_answer_400_with_the_api_message(url, sem, field, value, engine):
    r = post(url, "/v1/chat/completions", {"messages": HI, field: value})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] == engine_message(sem, **engine)
    assert err["type"] == "invalid_request_error" and err["param"] == field


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("/v1/chat/completions", {"messages": HI, "n": 2}, "n must be 1"),
        (
            "/v1/chat/completions",
            {"messages": HI, "mode": "base"},
            "mode must be one of eft, large",
        ),
        ("/v1/chat/completions", {"messages": HI, "top_logprobs": 2}, "needs logprobs"),
        ("/v1/chat/completions", {"messages": HI, "logprobs": True, "top_logprobs": 21}, "<= 20"),
        ("/v1/chat/completions", {"messages": []}, "messages must be"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
        ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "xml"}}, "type"),
        (
            "/v1/chat/completions",
            {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {}}},
            "needs a schema",
        ),
        ("/v1/chat/completions", {"messages": HI, "grammar": "root ::= foo"}, "Undefined rule"),
        ("/v1/chat/completions", {"messages": HI, "logit_bias": {"x": 1}}, "logit_bias key"),
        ("/v1/chat/completions", {"messages": HI, "repeat_penalty": 0}, "repeat_penalty"),
        ("/v1/completions", {"prompt": ["hi", "yo"], "stream": True}, "stream takes one prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "0 only with echo"),
        ("/v1/completions", {"prompt": [1.5]}, "prompt must be"),
        ("/v1/completions", {"prompt": [10**9]}, "prompt token id"),
        ("/v1/completions", {"prompt": "", "max_tokens": 1}, "empty"),
        ("/v1/completions", {"prompt": "hi", "logprobs": True}, "logprobs must be an integer"),
        ("/v1/completions", {"prompt": "hi", "echo": 1}, "echo must be true or false"),
        (
            "/v1/completions",
            {"prompt": "hi", "echo": True, "max_tokens": 0, "logprobs": 1, "mode": "small"},
            "mode must be eft",
        ),
    ],
)
def test_invalid_requests_answer_400(url, path, body, needle):
    r = post(url, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_a_prompt_over_the_context_answers_400(url, sem):
    long = "the cat is a dog " * 200
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": long}]}),
        ("/v1/completions", {"prompt": long}),
        ("/v1/completions", {"prompt": long, "echo": True, "max_tokens": 0, "logprobs": 1}),
    ):
        r = post(url, path, body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded"
        assert f"the context holds {sem.n_ctx}" in err["message"]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"[" * 100000, "not valid JSON"),
        (b'{"messages": NaN}', "messages must be"),
    ],
)
def test_malformed_bodies_answer_400_and_the_server_lives_on(url, client, body, needle):
    r = post(url, "/v1/chat/completions", body)
    assert r.status_code == 400
    assert needle in r.json()["error"]["message"]
    assert client.models.list().data  # still serving


def test_unknown_routes_and_methods(url):
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_an_oversized_body_answers_413(sem):
    with running(create_app(sem, max_body=2000)) as base:
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        r = post(base, "/v1/chat/completions", big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: counted while reading
            for _ in range(10):
                yield b" " * 500

        r = httpx.post(base + "/v1/completions", content=chunked(), timeout=30)
        assert r.status_code == 413
        assert (
            post(base, "/v1/chat/completions", {"messages": HI, "max_tokens": 2}).status_code == 200
        )


def test_the_api_key(sem):
    with running(create_app(sem, model="tiny", api_key="s3cret")) as base:
        r = post(base, "/v1/chat/completions", {"messages": HI})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "API key" in r.json()["error"]["message"]
        r = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "incorrect API key"
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        r = good.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
        assert r.usage.completion_tokens <= 2
        assert httpx.get(base + "/health").json()["auth"] is True  # health and the page stay open
        assert httpx.get(base + "/").status_code == 200


def test_the_page_and_its_files_are_served(url):
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("app.js", "style.css"):
        assert f"/static/{name}" in page.text
        assert httpx.get(f"{url}/static/{name}").status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    assert httpx.get(url + "/static/nothing.js").status_code == 404


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")
