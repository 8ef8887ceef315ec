"""JSON as deep as the server's parser takes it, in the places a request may nest freely: a
tool's parameters and a tool call's arguments. The answer is a one-line 400, never a 500
(before: a RecursionError in the check that every string is text, or in the chat template's
rendering)."""

from __future__ import annotations

import json

import httpx
import pytest
from liveserver import running
from test_tools import N_CTX, QWEN25, trio

from localeft import Emulator, request
from localeft.errors import InvalidParameterError
from localeft.server.app import create_app

LEVELS = 300  # objects within objects: under the parser's limit, over the recursion's


def deep(levels: int, leaf) -> dict:
    for _ in range(levels):
        leaf = {"type": "object", "properties": {"a": leaf}, "required": ["a"]}
    return leaf


def tools(levels: int) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": deep(levels, {})}}]


ASK = [{"role": "user", "content": "hi"}]
CALLED = ASK + [
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}],
    },
    {"role": "tool", "tool_call_id": "c", "content": "x"},
]


def with_arguments(arguments) -> list[dict]:
    messages = json.loads(json.dumps(CALLED))
    messages[1]["tool_calls"][0]["function"]["arguments"] = arguments
    return messages


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_deep_tool_parameters_and_arguments_are_refused_in_one_line(choice):
    with pytest.raises(InvalidParameterError, match="tools nest deeper than 128 levels"):
        request.build(ASK, tools=tools(LEVELS), tool_choice=choice)
    with pytest.raises(InvalidParameterError, match="messages nest deeper than 128 levels"):
        request.build(with_arguments(deep(LEVELS, 1)))
    request.build(ASK, tools=tools(50), tool_choice=choice)  # 100 levels and more: fine
    request.build(with_arguments(deep(50, 1)))


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with Emulator(**trio(tmp_path_factory.mktemp("qwen25"), QWEN25), n_ctx=N_CTX) as em:
        with running(create_app(em, model="tiny")) as base:
            yield base


@pytest.mark.parametrize(
    "body",
    [
        {"messages": ASK, "tools": tools(LEVELS), "tool_choice": "auto"},
        {"messages": ASK, "tools": tools(LEVELS), "tool_choice": "required"},
        {"messages": with_arguments(json.dumps(deep(LEVELS, 1)))},
        {"messages": with_arguments(deep(LEVELS, 1))},
    ],
    ids=["tools auto", "tools required", "arguments as text", "arguments as JSON"],
)
def test_the_server_answers_deep_json_without_a_500(url, body):
    r = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=60)
    assert r.status_code == 400, r.text
    assert "nest deeper than 128 levels" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
    assert r.status_code == 200, r.text
