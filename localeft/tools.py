"""Tools, as OpenAI's chat API has them: function definitions a model may call, the choice of
whether it must (`tool_choice`), and the calls in a conversation's history, checked once.

A tool is `{"type": "function", "function": {"name", "description", "parameters"}}` (name as
OpenAI allows it: letters, digits, `_` and `-`, at most 64; parameters a JSON schema object).
`tool_choice` is "auto" (the model decides), "none" (no calls are parsed), "required" (at least
one call, the output constrained by a grammar) or a function's name (that call, constrained);
`{"type": "function", "function": {"name": ...}}` names one the OpenAI way.

What a template writes and how calls are read back and constrained is toolformat.py's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from .errors import InvalidParameterError
from .schema.limits import MAX_NESTING

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CHOICES = ("auto", "none", "required")
NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: `arguments` is JSON text (OpenAI's form)."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @property
    def args(self) -> dict:
        return json.loads(self.arguments)


def _error(message: str, param: str) -> InvalidParameterError:
    return InvalidParameterError(message, param=param)


def check_tools(tools) -> tuple[dict, ...]:
    """Tool definitions, each as {"type": "function", "function": {name, description?,
    parameters}} (parameters: the schema given, or an object with no properties)."""
    if tools is None:
        return ()
    if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, Sequence):
        raise _error("tools must be a list of {type: function, function: {...}}", "tools")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _error(f"{where} must be {{type: function, function: {{name, ...}}}}", "tools")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _error(f"{where}.function must be an object with a name", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise _error(
                f"{where}.function.name must be 1-64 letters, digits, _ or -, got {name!r}",
                "tools",
            )
        if name in seen:
            raise _error(f"{where}: two tools are named {name!r}", "tools")
        seen.add(name)
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise _error(f"{where}.function.description must be a string", "tools")
        params = fn.get("parameters")
        if params is None:
            params = dict(NO_PARAMETERS)
        if not isinstance(params, dict):
            raise _error(f"{where}.function.parameters must be a JSON schema object", "tools")
        checked = {"name": name}
        if desc is not None:
            checked["description"] = desc
        checked["parameters"] = params
        out.append({"type": "function", "function": checked})
    return tuple(out)


def check_choice(choice, tools: tuple[dict, ...]) -> str:
    """ "auto" | "none" | "required" | a tool's name. Default: "auto" with tools, else "none"."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type", "function") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise _error(
                "tool_choice must be auto, none, required or "
                "{type: function, function: {name: ...}}",
                "tool_choice",
            )
        choice = name
        named = True
    else:
        if not isinstance(choice, str):
            raise _error(
                f"tool_choice must be auto, none, required or a function, got {choice!r}",
                "tool_choice",
            )
        named = choice not in CHOICES
    if choice == "none":
        return choice
    if not tools:
        raise _error(f"tool_choice {choice!r} needs tools", "tool_choice")
    if named and choice not in {t["function"]["name"] for t in tools}:
        raise _error(f"tool_choice names {choice!r}, which is not one of the tools", "tool_choice")
    return choice


def check_calls(calls, i: int) -> list[dict]:
    """An assistant message's tool_calls, with arguments as objects (what templates print
    with tojson): [{"id", "type": "function", "function": {"name", "arguments": {...}}}]."""
    if isinstance(calls, (str, bytes, dict)) or not isinstance(calls, Sequence) or not calls:
        raise _error(f"message {i}: tool_calls must be a non-empty list", "messages")
    out = []
    for j, call in enumerate(calls):
        where = f"message {i}: tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _error(f"{where} needs a function with a name", "messages")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (json.JSONDecodeError, RecursionError):
                raise _error(
                    f"{where}.function.arguments is not JSON: {args!r}", "messages"
                ) from None
        if not isinstance(args, dict):
            raise _error(f"{where}.function.arguments must be a JSON object", "messages")
        cid = call.get("id")
        if cid is not None and not isinstance(cid, str):
            raise _error(f"{where}.id must be a string", "messages")
        out.append(
            {
                "id": cid or f"call_{i}_{j}",
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def strings(value, what: str = "tools") -> list[str]:
    """Every string in a JSON-like value, keys included (to check they are text). Without
    recursion, and refusing a value that nests deeper than a JSON schema may (MAX_NESTING):
    the chat templates and the renderer that take it next recurse once per level."""
    found, todo = [], [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            found.append(item)
            continue
        if isinstance(item, dict):
            items = [x for pair in item.items() for x in pair]
        elif isinstance(item, (list, tuple)):
            items = list(item)
        else:
            continue
        if depth >= MAX_NESTING:
            raise _error(f"{what} nest deeper than {MAX_NESTING} levels", what)
        todo.extend((x, depth + 1) for x in items)
    return found
