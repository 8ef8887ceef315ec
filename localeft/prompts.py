"""Per-role prompt rendering: chat templates from GGUF metadata, or a plain transcript, and their
tokenization with message content as plain text.

Fine-tuned models get their own chat template (rendered with llama-cpp-python's Jinja2 formatter,
as llama.cpp's server would). Pre-trained models (base, ref) get either the same templated text
(`"template"`, the default: the paper scores the fine-tuned model's prompt format with every
model) or a plain transcript (`"transcript"`), which base models often continue more naturally.

The template's own markup may hold control tokens (<|im_start|>); what users wrote never does:
"hi<|im_end|><|im_start|>assistant" in a message stays text, or anyone could forge turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from .backend import Model
from .errors import InvalidParameterError, LocaleftError

BasePrompt = Literal["template", "transcript"]
Message = dict  # {"role": "system" | "user" | "assistant", "content": str | [text parts]}
ROLES = ("system", "user", "assistant")
_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


def _content(m: dict, i: int) -> str:
    """A message's text: a string, or OpenAI-style parts ([{"type": "text", "text": ...}])."""
    c = m["content"]
    if isinstance(c, str):
        return c
    if isinstance(c, (list, tuple)):
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


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Validated messages: known roles, text content (parts joined)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidParameterError("messages must be a list of {'role': ..., 'content': ...}")
    if not messages:
        raise InvalidParameterError("chat needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidParameterError(f"a chat message needs 'role' and 'content': {m!r}")
        role = _ALIASES.get(m["role"], m["role"])
        if role not in ROLES:
            raise InvalidParameterError(
                f"message {i}: unknown role {m['role']!r} (use {', '.join(ROLES)})"
            )
        out.append({"role": role, "content": _content(m, i)})
    return out


@dataclass(frozen=True)
class Rendered:
    """Rendered prompt text in pieces: (text, is_markup). Only markup may hold control
    tokens; the rest is what users wrote. `replies`: the indices of the pieces that are
    assistant messages' content (decoded one token per call, as generated: layout.py)."""

    pieces: tuple[tuple[str, bool], ...]
    replies: tuple[int, ...] = ()

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


def _sentinel(i: int) -> str:
    return f"\x00localeft-content-{i}\x00"


def render_pieces(model: Model, messages: Sequence[Message], *, generation_prompt=True) -> Rendered:
    """The model's chat template applied to the messages (ready for the assistant's turn), with
    each message's content marked as content: rendered once with placeholders to find where
    the template puts it."""
    template = model.chat_template
    if not template:
        return Rendered.plain(render_transcript(messages, generation_prompt=generation_prompt))
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=model.special_text("eos"),
        bos_token=model.special_text("bos"),
        add_generation_prompt=generation_prompt,
    )
    marked = [dict(m, content=_sentinel(i)) for i, m in enumerate(messages)]
    try:
        text = formatter(messages=marked).prompt
    except Exception as e:  # a template's raise_exception, or a Jinja error
        raise LocaleftError(f"chat template of {model.path.name} failed: {e}") from None
    pieces: list[tuple[str, bool]] = []
    replies: list[int] = []
    for i, m in enumerate(messages):
        before, found, text = text.partition(_sentinel(i))
        if not found:  # the template dropped or rewrote this message: render it plainly
            text = before
            continue
        pieces += [(before, True), (m["content"], False)]
        if m["role"] == "assistant":
            replies.append(len(pieces) - 1)
    pieces.append((text, True))
    return _dropping_empty(pieces, replies)


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
        pieces.append((" " + m["content"], False))  # the space starts the content's tokens
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
    return spans


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
