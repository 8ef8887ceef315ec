"""How a model family writes tool calls: which template family a chat template is, calls read
back from generated text, what of a growing text is safely content while streaming, and the
grammar that makes a required (or named) call always parse.

Two families, by what their templates write (and so what their models were trained to emit):

- "hermes" (Qwen2.5, Qwen3, Hermes): `<tool_call>` {"name": ..., "arguments": {...}}
  `</tool_call>` blocks (a newline inside each tag), several in a row for parallel calls,
  after optional text; a reply that is nothing but such a JSON object (in a ```json fence or
  not) is a call too: Qwen2.5-Coder often leaves the tags out (llama.cpp accepts it as well);
- "llama3" (Llama 3.1, 3.2): the whole reply is `{"name": ..., "parameters": {...}}` (after an
  optional <|python_tag|>, a control token that renders as nothing); one call per turn, as the
  template itself insists.

The grammar of a required call is built from each tool's parameter schema (localeft's JSON
schema converter, every keyword enforced or refused) and constrains the combined EFT row like
any grammar: the distribution over the allowed tokens is the masked formula, renormalised.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from .errors import InvalidParameterError
from .grammar import schema_grammar
from .tools import ToolCall

FAMILIES = ("hermes", "llama3")
_HERMES_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_PYTHON_TAG = "<|python_tag|>"
_FENCE = "```json"
OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"  # as the hermes templates write them


def family(template: str | None) -> str | None:
    """The tool-call family a chat template writes, or None (no tool support known)."""
    if not template or "tool" not in template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "<|start_header_id|>" in template and '"parameters": ' in template:
        return "llama3"
    return None


def new_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class Parsed:
    """Generated text split into what the user reads and the calls made."""

    content: str | None  # None when only calls were written
    calls: list[ToolCall]


def _call(obj, key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(new_id(), obj["name"], json.dumps(args, ensure_ascii=False))


def _loads(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def parse(fam: str, text: str) -> Parsed:
    """The calls written in `text` (a block that does not parse stays content)."""
    if fam == "hermes":
        calls, kept, at = [], [], 0
        for m in _HERMES_CALL.finditer(text):
            call = _call(_loads(m.group(1).strip()), "arguments")
            if call is None:
                continue
            calls.append(call)
            kept.append(text[at : m.start()])
            at = m.end()
        kept.append(text[at:])
        content = "".join(kept).strip()
        if calls:
            return Parsed(content or None, calls)
    body = text.strip()
    for head in (_PYTHON_TAG, _FENCE):
        if body.startswith(head):
            body = body[len(head) :].strip()
    if body.endswith("```") and fam == "hermes":
        body = body[:-3].strip()
    obj = _loads(body) if body.startswith("{") else None
    call = _call(obj, "arguments" if fam == "hermes" else "parameters")
    if call is None:
        return Parsed(text.strip() or None, [])
    return Parsed(None, [call])


def visible(fam: str, text: str) -> str:
    """What of a growing `text` is content whatever follows: always a prefix of
    `parse(fam, final_text).content` (text that may open a call is held back)."""
    head = text.lstrip()
    opening = _FENCE if fam == "hermes" else _PYTHON_TAG
    if not head or head[0] == "{" or opening.startswith(head[: len(opening)]):
        return ""  # the whole reply may be one call
    if fam == "llama3":
        return text.strip()
    cut = text.find("<tool_call>")
    if cut < 0:
        cut = len(text)
        for k in range(min(len("<tool_call>") - 1, len(text)), 0, -1):
            if "<tool_call>".startswith(text[-k:]):
                cut = len(text) - k
                break
    return text[:cut].strip()


# --- grammars ---------------------------------------------------------------------------------
def _literal(text: str) -> str:
    """A GBNF string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{out}"'


def prefixed(gbnf: str, prefix: str) -> str:
    """The grammar with every rule name prefixed (to sit beside other grammars' rules):
    names outside string literals, character classes and comments."""
    out, i, n = [], 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c in '"[{':
            close = {'"': '"', "[": "]", "{": "}"}[c]
            j = i + 1
            while j < n and gbnf[j] != close:
                j += 2 if gbnf[j] == "\\" else 1
            out.append(gbnf[i : j + 1])
            i = j + 1
        elif c == "#":
            j = gbnf.find("\n", i)
            j = n if j < 0 else j
            out.append(gbnf[i:j])
            i = j
        elif c.isalnum() or c == "-":
            j = i
            while j < n and (gbnf[j].isalnum() or gbnf[j] == "-"):
                j += 1
            out.append(prefix + gbnf[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def call_grammar(fam: str, tools: tuple[dict, ...], choice: str, parallel: bool) -> str:
    """GBNF for the output of a required call (`choice` "required": any tool; else that
    tool): the family's call markup around arguments that follow the tool's parameter
    schema; with `parallel`, several calls in a row (hermes)."""
    chosen = [
        t["function"] for t in tools if choice == "required" or t["function"]["name"] == choice
    ]
    rules, alternatives = [], []
    key = "arguments" if fam == "hermes" else "parameters"
    for i, fn in enumerate(chosen):
        try:
            args = schema_grammar(fn["parameters"])
        except InvalidParameterError as e:
            raise InvalidParameterError(
                f"tool {fn['name']!r}: its parameters cannot constrain a call: {e}", param="tools"
            ) from None
        rules.append(prefixed(args, f"t{i}-"))
        after_name = f'{fn["name"]}", "{key}": '
        alternatives.append(f"{_literal(after_name)} t{i}-root")
    head, tail = _literal('{"name": "'), _literal("}")
    body = f"{head} ( {' | '.join(alternatives)} ) {tail}"
    if fam == "hermes":
        call = f"{_literal(OPEN)} {body} {_literal(CLOSE)}"
        root = 'root ::= call ( "\\n" call )*' if parallel else "root ::= call"
    else:
        call, root = body, "root ::= call"
    return "\n".join([root, f"call ::= {call}", *rules]) + "\n"


class ContentStream:
    """Streamed text pieces -> the content deltas safe to send as they come (what may open a
    call is held back); `finish` gives the rest of the final content. The deltas joined equal
    `parse(...).content` of the whole text: streamed and not streamed agree."""

    def __init__(self, fam: str):
        self.fam, self.text, self.sent = fam, "", ""

    def feed(self, piece: str) -> str:
        self.text += piece
        return self._advance(visible(self.fam, self.text))

    def finish(self, content: str | None) -> str:
        return self._advance(content or "")

    def _advance(self, shown: str) -> str:
        if not shown.startswith(self.sent):  # cannot happen (visible is a prefix); never resend
            return ""
        delta, self.sent = shown[len(self.sent) :], shown
        return delta
