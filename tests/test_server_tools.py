"""`localeft serve` with tools, driven by the official `openai` client (an agent's loop: a
required call, the tool's result, the answer), and the smaller parts of OpenAI's API real
clients rely on: the model name, `param` in errors, `usage: null` in streamed chunks, stats on
echo-only completions, stream with echo, and the tokenizer endpoints (llama-server's and
vLLM's shapes, what lm-evaluation-harness's remote tokenizer asks)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from liveserver import post, running
from test_tools import ASK, N_CTX, QWEN25, TOOLS, WEATHER, trio

from localeft import Emulator
from localeft.server.app import create_app

NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def tem(tmp_path_factory):
    with Emulator(**trio(tmp_path_factory.mktemp("qwen25"), QWEN25), n_ctx=N_CTX) as em:
        yield em


@pytest.fixture(scope="module")
def url(tem):
    with running(create_app(tem, model="tiny")) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_an_agent_loop_required_call_then_the_tools_result_then_the_answer(client, tem):
    r = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    g = tem.chat(
        ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=150
    )
    assert (call.function.name, json.loads(call.function.arguments)) == (
        g.tool_calls[0].name,
        g.tool_calls[0].args,
    )
    messages = ASK + [
        choice.message.model_dump(exclude_none=True),  # as an agent sends it back
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    final = client.chat.completions.create(
        model="tiny",
        messages=messages,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=12,
        temperature=0,
    )
    want = tem.chat(messages, tools=TOOLS, tool_choice="none", max_tokens=12)
    assert final.choices[0].message.content == want.text
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].finish_reason in ("stop", "length")


def test_streamed_calls_equal_not_streamed(client):
    kw = dict(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=150,
        temperature=0.8,
        seed=5,
    )
    whole = client.chat.completions.create(**kw).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls: dict[int, dict] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
    assert content == (whole.message.content or "")
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (t.function.name, t.function.arguments) for t in whole.message.tool_calls
    ]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"] == [whole.finish_reason]


def test_tool_choice_none_gives_text(client, tem):
    r = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=10, temperature=0
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == tem.chat(ASK, tools=TOOLS, max_tokens=10).text


def test_a_template_without_tools_answers_400(sem_url):
    r = post(sem_url, "/v1/chat/completions", {"messages": ASK, "tools": TOOLS})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "has no tool support" in err["message"] and err["param"] == "tools"
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "noon"},
    ]
    r = post(sem_url, "/v1/chat/completions", {"messages": history})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


@pytest.fixture(scope="module")
def sem_url(make_em):
    with running(create_app(make_em(), model="tiny")) as base:
        yield base


# --- the smaller parts -------------------------------------------------------------------------
def test_an_unknown_model_answers_404_and_the_served_one_or_none_is_accepted(url):
    for path, body in (
        ("/v1/chat/completions", {"messages": ASK}),
        ("/v1/completions", {"prompt": "hi"}),
    ):
        r = post(url, path, {**body, "model": "gpt-4o", "max_tokens": 1})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert "'tiny'" in err["message"]
        assert post(url, path, {**body, "model": "tiny", "max_tokens": 1}).status_code == 200
        assert post(url, path, {**body, "max_tokens": 1}).status_code == 200


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": ASK, "logit_bias": {"x": 1}}, "logit_bias"),
        ({"messages": ASK, "logit_bias": {"5": "high"}}, "logit_bias"),
        ({"messages": ASK, "repeat_penalty": 0}, "repeat_penalty"),
        ({"messages": ASK, "grammar": "root ::= foo"}, "grammar"),
        ({"messages": ASK, "n": 2}, "n"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"messages": ASK, "response_format": {"type": "xml"}}, "response_format"),
        ({"messages": ASK, "tools": [{"function": {"name": "a b"}}]}, "tools"),
        ({"messages": ASK, "tools": TOOLS, "tool_choice": "fly"}, "tool_choice"),
        ({"messages": ASK, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": ASK, "stream": "yes"}, "stream"),
    ],
)
def test_400s_name_the_field_at_fault(url, body, param):
    r = post(url, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_streamed_chunks_carry_usage_null_until_the_last(url):
    for path, body in (
        ("/v1/chat/completions", {"messages": ASK}),
        ("/v1/completions", {"prompt": "the cat"}),
    ):
        with httpx.stream(
            "POST",
            url + path,
            json={
                **body,
                "stream": True,
                "max_tokens": 4,
                "temperature": 0,
                "stream_options": {"include_usage": True},
            },
            timeout=60,
        ) as r:
            events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        assert all("usage" in e and e["usage"] is None for e in events[:-1])
        assert events[-1]["usage"]["completion_tokens"] == 4 and events[-1]["choices"] == []


def test_echo_only_completions_have_stats_and_stream_with_echo(client, tem):
    prompt = "the cat is a dog"
    r = client.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    stats = r.choices[0].localeft["stats"]
    ids = tem.prompt_tokens(prompt)["ft"]
    assert stats["prompt_tokens"] == len(ids) and stats["generated_tokens"] == 0
    assert stats["seconds"] > 0
    whole = client.completions.create(
        model="tiny", prompt=prompt, echo=True, max_tokens=5, logprobs=1, temperature=0
    )
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=prompt,
            echo=True,
            max_tokens=5,
            logprobs=1,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    streamed = [
        x
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for x in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == whole.choices[0].logprobs.token_logprobs
    offsets = [
        x
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for x in c.choices[0].logprobs.text_offset
    ]
    assert offsets == whole.choices[0].logprobs.text_offset
    only = list(
        client.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=0, stream=True)
    )
    assert only[0].choices[0].text.strip() == prompt
    assert only[-1].localeft["stats"]["prompt_tokens"] == len(ids)


def test_tokenizer_endpoints(url, tem):
    model = tem.models["ft"]
    text = "the cat<|im_end|>"
    r = post(url, "/tokenize", {"content": text}).json()
    assert r["tokens"] == model.tokenize(text, add_bos=False, special=True)
    plain = post(url, "/tokenize", {"content": text, "parse_special": False}).json()["tokens"]
    assert plain == model.tokenize(text, add_bos=False, special=False)
    pieces = post(url, "/tokenize", {"content": "the cat", "with_pieces": True}).json()["tokens"]
    ids = [p["id"] for p in pieces]
    assert ids == model.tokenize("the cat", add_bos=False)
    assert "".join(p["piece"] for p in pieces) == model.detokenize(ids)  # " the cat": SPM's space
    assert post(url, "/detokenize", {"tokens": ids}).json()["content"] == model.detokenize(ids)
    assert post(url, "/detokenize", {"tokens": [10**9]}).status_code == 400
    # lm-evaluation-harness's remote tokenizer: vLLM's field names, eos found by encoding it
    info = httpx.get(url + "/tokenizer_info").json()
    assert info["chat_template"] == model.chat_template and info["model_max_length"] == N_CTX
    eos = post(url, "/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False})
    assert eos.json()["tokens"] == [2] or model.is_eog(eos.json()["tokens"][0])
    assert post(url, "/detokenize", {"tokens": ids}).json()["prompt"] == model.detokenize(ids)
