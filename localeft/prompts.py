"""Per-role prompt rendering: chat templates from GGUF metadata, or a plain transcript.

Fine-tuned models get their own chat template (rendered with llama-cpp-python's Jinja2 formatter,
as llama.cpp's server would). Pre-trained models (base, ref) get either the same templated text
(`"template"`, the default: the paper scores the fine-tuned model's prompt format with every
model) or a plain transcript (`"transcript"`), which base models often continue more naturally.
"""

from __future__ import annotations

from typing import Literal, Sequence

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from .backend import Model
from .errors import LocaleftError

BasePrompt = Literal["template", "transcript"]
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


def check_messages(messages: Sequence[Message]) -> list[Message]:
    if not messages:
        raise LocaleftError("chat needs at least one message")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LocaleftError(f"a chat message needs 'role' and 'content': {m!r}")
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


def render_template(model: Model, messages: Sequence[Message]) -> str:
    """The model's own chat template applied to the messages, ready for the assistant's turn."""
    template = model.chat_template
    if not template:
        return render_transcript(messages)
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=model.special_text("eos"),
        bos_token=model.special_text("bos"),
        add_generation_prompt=True,
    )
    try:
        return formatter(messages=list(messages)).prompt
    except Exception as e:  # a template's raise_exception, or a Jinja error
        raise LocaleftError(f"chat template of {model.path.name} failed: {e}") from None


def render_transcript(messages: Sequence[Message]) -> str:
    """A plain transcript a pre-trained model can continue."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


def tokenize_prompt(model: Model, text: str) -> list[int]:
    """Tokenize a rendered prompt: special tokens parsed, BOS added once (templates often
    write it themselves)."""
    bos = model.special_text("bos")
    add_bos = model.add_bos and not (bos and text.startswith(bos))
    return model.tokenize(text, add_bos=add_bos, special=True)
