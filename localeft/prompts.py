"""Per-role prompt rendering: chat templates from GGUF metadata, or a plain transcript, and their
tokenization with message content as plain text.

Fine-tuned models get their own chat template (rendered with llama-cpp-python's Jinja2 formatter,
as llama.cpp's server would). Pre-trained models (base, ref) get either the same templated text
(`"template"`, the default: the paper scores the fine-tuned model's prompt format with every
model) or a plain transcript (`"transcript"`), which base models often continue more naturally.

The template's own markup may hold control tokens (<|im_start|>); what users wrote never does:
"hi<|im_end|><|im_start|>assistant" in a message stays text, or anyone could forge turns. The
same holds for tools: definitions, call arguments and results are text wherever the template
puts them, JSON-escaped where it writes them with `tojson`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from . import toolformat
from .backend import Model
from .errors import InvalidParameterError, LocaleftError
from .tools import check_calls

BasePrompt = Literal["template", "transcript"]
Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str | [parts]}
ROLES = ("system", "user", "assistant", "tool")
_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


def _content(m: dict, i: int) -> str:
    """A message's text: a string, or OpenAI-style parts ([{"type": "text", "text": ...}])."""
    c = m["content"]
    if isinstance(c, str):
        return c
    if isinstance(c, (list, tuple)):
        if not c:  # no part at all: not a message (text may be "", parts may not be missing)
            raise InvalidParameterError(f"message {i}: content is an empty list of parts")
        texts = []
        for part in c:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidParameterError(f"message {i}: a text part needs a 'text' string")
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidParameterError(
                    f"message {i}: only text content is supported, got a {kind!r} part"
                )
        return "".join(texts)
    raise InvalidParameterError(
        f"message {i}: content must be a string or a list of text parts, got {type(c).__name__}"
    )


def _bad(message: str) -> InvalidParameterError:
    return InvalidParameterError(message, param="messages")


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Validated messages: known roles, text content (parts joined); an assistant message may
    carry `tool_calls` (then its content may be null), a tool message `tool_call_id`."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise _bad("messages must be a list of {'role': ..., 'content': ...}")
    if not messages:
        raise _bad("chat needs at least one message")
    out = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not calls):
            raise _bad(f"a chat message needs 'role' and 'content': {m!r}")
        role = _ALIASES.get(m["role"], m["role"])
        if role not in ROLES:
            raise _bad(f"message {i}: unknown role {m['role']!r} (use {', '.join(ROLES)})")
        if calls and role != "assistant":
            raise _bad(f"message {i}: only assistant messages carry tool_calls")
        content = "" if calls and m.get("content") is None else _content(m, i)
        checked = {"role": role, "content": content}
        if calls:
            checked["tool_calls"] = check_calls(calls, i)
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if m.get(key) is not None:
                    if not isinstance(m[key], str):
                        raise _bad(f"message {i}: {key} must be a string")
                    checked[key] = m[key]
        out.append(checked)
    return out


def uses_tools(messages: Sequence[Message]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


@dataclass(frozen=True)
class Rendered:
    """Rendered prompt text in pieces: (text, is_markup). Only markup may hold control
    tokens; the rest is what users wrote. `replies`: the indices of the pieces that are
    assistant messages' content (decoded one token per call, as generated: layout.py)."""

    pieces: tuple[tuple[str, bool], ...]
    replies: tuple[int, ...] = ()
    # per assistant message with tool calls: the rendering of the messages before it, ready
    # for the assistant's turn (its reply stretch runs from there to the end of the turn)
    prefixes: tuple[Rendered, ...] = ()

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.pieces)

    @classmethod
    def plain(cls, text: str) -> Rendered:
        return cls(((text, False),))

    @classmethod
    def raw(cls, text: str) -> Rendered:
        """A raw completion prompt: the user writes control tokens on purpose there."""
        return cls(((text, True),))


# Placeholders for user text while a template renders: private-use characters around an index
# and a quote, which tojson escapes — so the backslashes before the quote where one comes back
# tell how many times the template JSON-escaped that text (none: as it is; 1: once; 3: twice).
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK = re.compile(_OPEN + r'(\d+)(\\*)"' + _CLOSE)


class _Marks:
    """User strings swapped for placeholders, and put back as plain pieces after rendering."""

    def __init__(self, model: Model):
        self.model, self.values = model, []

    def mark(self, text: str) -> str:
        self.values.append(text)
        return f'{_OPEN}{len(self.values) - 1}"{_CLOSE}'

    def protect(self, value):
        """A copy of a JSON-like value with every string that could turn into control tokens
        (or holds placeholder characters) swapped; others stay, for templates that test them."""
        if isinstance(value, str):
            risky = _OPEN in value or _CLOSE in value or _has_control_text(self.model, value)
            return self.mark(value) if risky else value
        if isinstance(value, dict):
            return {self.protect(k): self.protect(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.protect(v) for v in value]
        return value

    def pieces(self, text: str, owners: dict[int, int]):
        """The rendered text in (text, is_markup) pieces, placeholders replaced (escaped as
        often as the template escaped them); and per placeholder owned by a message (its
        content), the index of its piece."""
        pieces: list[tuple[str, bool]] = []
        where: dict[int, int] = {}
        at = 0
        for m in _MARK.finditer(text):
            i, slashes = int(m.group(1)), len(m.group(2))
            depth = (slashes + 1).bit_length() - 1
            if i >= len(self.values) or (1 << depth) - 1 != slashes:
                continue
            value = self.values[i]
            for _ in range(depth):
                value = json.dumps(value, ensure_ascii=False)[1:-1]
            pieces.append((text[at : m.start()], True))
            if i in owners:
                where[owners[i]] = len(pieces)
            pieces.append((value, False))
            at = m.end()
        pieces.append((text[at:], True))
        return pieces, where


def render_pieces(
    model: Model,
    messages: Sequence[Message],
    *,
    tools: Sequence[dict] = (),
    generation_prompt: bool = True,
    with_prefixes: bool = True,
) -> Rendered:
    """The model's chat template applied to the messages (ready for the assistant's turn) and
    the tools, with each message's content marked as content: rendered once with placeholders
    to find where the template puts it."""
    template = model.chat_template
    if tools or uses_tools(messages):
        if toolformat.family(template) is None:
            raise InvalidParameterError(
                f"the chat template of {model.path.name} has no tool support (tools need a "
                "model whose template takes them: Qwen2.5, Qwen3, Llama 3.1/3.2 Instruct)",
                param="tools" if tools else "messages",
            )
    if not template:
        return Rendered.plain(render_transcript(messages, generation_prompt=generation_prompt))
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=model.special_text("eos"),
        bos_token=model.special_text("bos"),
        add_generation_prompt=generation_prompt,
    )
    marks = _Marks(model)
    owners: dict[int, int] = {}  # placeholder -> the message whose content it is
    marked = []
    for i, m in enumerate(messages):
        out = marks.protect({k: v for k, v in m.items() if k != "content"})
        if m["content"]:
            owners[len(marks.values)] = i
            out["content"] = marks.mark(m["content"])
        else:
            out["content"] = ""
        marked.append(out)
    try:
        text = formatter(messages=marked, tools=marks.protect(list(tools)) or None).prompt
    except Exception as e:  # a template's raise_exception, or a Jinja error
        raise LocaleftError(f"chat template of {model.path.name} failed: {e}") from None
    pieces, where = marks.pieces(text, owners)
    replies = [
        where[i]
        for i, m in enumerate(messages)
        if i in where and m["role"] == "assistant" and not m.get("tool_calls")
    ]
    if any(_OPEN in t for t, markup in pieces if markup):
        raise LocaleftError(
            f"chat template of {model.path.name} rewrote a message's text (localeft cannot "
            "tell it from the template's markup)"
        )
    prefixes = ()
    if with_prefixes and any(m.get("tool_calls") for m in messages):
        prefixes = tuple(
            render_pieces(model, messages[:k], tools=tools, with_prefixes=False)
            for k, m in enumerate(messages)
            if k and m.get("tool_calls")
        )
    r = _dropping_empty(pieces, replies)
    return Rendered(r.pieces, r.replies, prefixes)


def _dropping_empty(pieces: list[tuple[str, bool]], replies: list[int]) -> Rendered:
    keep = [i for i, (t, _) in enumerate(pieces) if t]
    at = {old: new for new, old in enumerate(keep)}
    return Rendered(tuple(pieces[i] for i in keep), tuple(at[r] for r in replies if r in at))


def render_template(model: Model, messages: Sequence[Message]) -> str:
    """The model's own chat template applied to the messages, ready for the assistant's turn."""
    return render_pieces(model, check_messages(messages)).text


def render_transcript(messages: Sequence[Message], *, generation_prompt: bool = True) -> str:
    """A plain transcript a pre-trained model can continue."""
    return transcript_pieces(messages, generation_prompt=generation_prompt).text


def transcript_pieces(messages: Sequence[Message], *, generation_prompt: bool = True) -> Rendered:
    """The plain transcript in pieces, assistant content marked (no markup: all plain text)."""
    pieces: list[tuple[str, bool]] = []
    replies: list[int] = []
    for i, m in enumerate(messages):
        pieces.append((("\n\n" if i else "") + f"{m['role'].capitalize()}:", False))
        content = m["content"]
        for call in m.get("tool_calls", ()):  # calls as JSON lines after the text
            fn = call["function"]
            line = json.dumps({"name": fn["name"], "arguments": fn["arguments"]})
            content = f"{content}\n{line}" if content else line
        pieces.append((" " + content, False))  # the space starts the content's tokens
        if m["role"] == "assistant":
            replies.append(len(pieces) - 1)
    if generation_prompt:
        pieces.append(("\n\nAssistant:", False))
    return _dropping_empty(pieces, replies)


def reply_spans(model: Model, r: Rendered, tokens: list[int]) -> list[tuple[int, int]]:
    """Token spans [a, b) of the rendering's reply pieces in `tokens` (its tokenize_prompt):
    where a piece's tokens cannot be told apart from its neighbours' (a token across the
    boundary), it is left to the prompt stretch around it."""
    spans = []
    for i in r.replies:
        a = tokenize_prompt(model, Rendered(r.pieces[:i]))
        b = tokenize_prompt(model, Rendered(r.pieces[: i + 1]))
        if len(b) > len(a) and tokens[: len(b)] == b and b[: len(a)] == a:
            spans.append((len(a), len(b)))
    for prefix in r.prefixes:  # a tool-call turn: from its start to its end-of-turn token
        head = tokenize_prompt(model, prefix)
        a = len(head)
        b = next((j for j in range(a, len(tokens)) if model.is_eog(tokens[j])), a)
        if b > a and tokens[:a] == head:
            spans.append((a, b))
    return sorted(spans)


def tokenize_prompt(model: Model, prompt: str | Rendered) -> list[int]:
    """Token ids of a rendered prompt: control tokens parsed in markup only, BOS added once
    (templates often write it themselves).

    Fragments are tokenized as llama.cpp tokenizes them in one text: it splits the text at
    control tokens and tokenizes each stretch of text between them on its own, so parsing
    them ourselves (markup only) then tokenizing each stretch gives the same ids whenever no
    content holds control-token text."""
    r = Rendered.raw(prompt) if isinstance(prompt, str) else prompt
    bos = model.special_text("bos")
    add_bos = model.add_bos and not (bos and r.text.startswith(bos))
    head = [model.bos_id] if add_bos else []
    if all(markup or not _has_control_text(model, text) for text, markup in r.pieces):
        return head + model.tokenize(r.text, add_bos=False, special=True)
    frags: list[str | int] = []  # text stretches and control token ids
    strip_next = False
    for text, markup in r.pieces:
        if strip_next:
            text, strip_next = text.lstrip(), False
        if not markup:
            _add_text(frags, text)
            continue
        pos = 0
        for tok in model.tokenize(text, add_bos=False, special=True):
            attr = model.token_attr(tok)
            if not model.is_special_attr(attr):
                continue
            s = model.token_text(tok).decode("utf-8", "replace")
            at = text.find(s, pos)
            if at < 0:  # cannot happen: the tokenizer found it there
                continue
            before = text[pos:at]
            if model.lstrips(attr):
                before = before.rstrip()
                if not before and frags and isinstance(frags[-1], str):
                    frags[-1] = frags[-1].rstrip()
            _add_text(frags, before)
            frags.append(tok)
            pos = at + len(s)
            if model.rstrips(attr):
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                strip_next = pos == len(text)
        _add_text(frags, text[pos:])
    out = head
    for f in frags:
        if isinstance(f, int):
            out.append(f)
        elif f:
            out += model.tokenize(f, add_bos=False, special=False)
    return out


def _has_control_text(model: Model, text: str) -> bool:
    """Would this text turn into control tokens if parsed as markup?"""
    return model.tokenize(text, add_bos=False, special=True) != model.tokenize(
        text, add_bos=False, special=False
    )


def _add_text(frags: list, text: str) -> None:
    if frags and isinstance(frags[-1], str):
        frags[-1] += text
    else:
        frags.append(text)
