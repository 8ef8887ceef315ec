"""A request's prompt as each context of the group sees it: rendered for the context's kind of
role, tokenized by its model, checked against the context window.

Raw text is the same text for every context. Chat messages go through the fine-tuned model's
chat template (prompts.render_pieces) for fine-tuned contexts, and for pre-trained ones (base,
refs) through the same template or a plain transcript (`base_prompt`). Token ids are exactly
those ids in every context.
"""

from __future__ import annotations

from typing import Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from .backend import Model
from .context import common_prefix
from .errors import ContextOverflowError, InvalidParameterError
from .layout import Span
from .prompts import Rendered, render_pieces, reply_spans, tokenize_prompt, transcript_pieces
from .request import check_prompt, token_ids


class RolePrompts:
    """Renders and tokenizes prompts for the contexts of one group (ensemble.Ensemble)."""

    def __init__(self, group, base_prompt: str, n_ctx: int):
        self.group, self.base_prompt, self.n_ctx = group, base_prompt, n_ctx
        self._longest: dict[int, int] = {}  # id(model): bytes of its longest token

    def check_length(self, text_bytes: int, indices: Sequence[int], room: int = 1) -> None:
        """Refuse, before any rendering or tokenizing, text that cannot fit the context: no
        token is longer than its model's longest, so `text_bytes` of text are at least
        text_bytes / longest tokens (markup adds more), and must leave `room` tokens free. A
        huge prompt is refused at once instead of after seconds of tokenizing."""
        if text_bytes < self.n_ctx:  # fewer tokens than bytes: nothing to learn here
            return
        models = {id(self.group.roles[i].model): self.group.roles[i].model for i in indices}
        longest = max(self.longest_token(m) for m in models.values())
        at_least = -(-text_bytes // longest)
        if at_least > self.n_ctx - room:
            raise ContextOverflowError(
                f"the prompt is at least {at_least} tokens ({text_bytes} bytes of text) but the "
                f"context holds {self.n_ctx}; shorten it or raise n_ctx",
                tokens=at_least,
                n_ctx=self.n_ctx,
                at_least=True,
            )

    def measure_tokens(self) -> None:
        """Find every model's longest token now (a server does it before its first request)."""
        for role in self.group.roles:
            self.longest_token(role.model)

    def longest_token(self, model: Model) -> int:
        """The byte length of the model's longest token (control tokens' text included),
        computed once per model (0.7 s for a 152k vocabulary)."""
        n = self._longest.get(id(model))
        if n is None:
            n = max(len(model.piece(t, special=True)) for t in range(model.n_vocab))
            n = self._longest[id(model)] = max(n, 1)
        return n

    def rendered(self, kind: str, prompt, tools=()) -> dict[str, Rendered]:
        """The prompt for each kind of role ("ft", "base"): raw text as it is, chat (and its
        tools) through the template."""
        if kind == "text":
            raw = Rendered.raw(prompt)
            return {"ft": raw, "base": raw}
        templated = render_pieces(self.group.ft_model, prompt, tools=tools)
        return {
            "ft": templated,
            "base": templated if self.base_prompt == "template" else transcript_pieces(prompt),
        }

    def tokens(self, kind: str, prompt, indices: Sequence[int], tools=()) -> dict[int, list[int]]:
        """Token lists per context index (`kind` and `prompt` as request.check_prompt gives
        them), each leaving room for one more token in the context."""
        return self.with_replies(kind, prompt, indices, tools, spans=False)[0]

    def with_replies(self, kind: str, prompt, indices: Sequence[int], tools=(), spans=True):
        """`tokens`, and per context the token spans of the assistant messages in it (reply
        stretches of the decode layout, layout.py): ({index: tokens}, {index: [spans]})."""
        if kind == "ids":
            ids = self.ids("prompt", prompt)
            return self.fitting({i: list(ids) for i in indices}), {i: [] for i in indices}
        self.check_length(text_bytes(kind, prompt), indices)
        rendered = self.rendered(kind, prompt, tools)
        if not spans:
            return self.tokenized(rendered, indices), {}
        prompts = self.tokenized(rendered, indices)
        roles = self.group.roles
        found: dict[tuple, list[Span]] = {}  # one computation per (model, rendering)
        replies = {}
        for i in indices:
            r = rendered[roles[i].kind]
            key = (id(roles[i].model), id(r))
            if key not in found:
                found[key] = (
                    reply_spans(roles[i].model, r, prompts[i]) if r.replies or r.prefixes else []
                )
            replies[i] = found[key]
        return prompts, replies

    def tokenized(self, rendered: dict[str, Rendered], indices) -> dict[int, list[int]]:
        """Per context, its rendering tokenized by its model (once per model and rendering:
        one file in several roles tokenizes a long prompt once)."""
        roles = self.group.roles
        done: dict[tuple[int, int], list[int]] = {}
        out = {}
        for i in indices:
            model, r = roles[i].model, rendered[roles[i].kind]
            key = (id(model), id(r))
            if key not in done:
                done[key] = tokenize_prompt(model, r)
            out[i] = list(done[key])
        return self.fitting(out)

    def ids(self, name: str, ids) -> list[int]:
        """Token ids the models share, none of them unused (padding: no text has it, and its
        log-probability is -inf)."""
        checked = token_ids(name, ids, self.group.n_vocab)
        unused = self.group.vocab.unused
        if unused.size:
            bad = np.intersect1d(np.asarray(checked, dtype=np.int64), unused)
            if bad.size:
                raise InvalidParameterError(
                    f"{name} token id {int(bad[0])} is unused in the vocabulary (padding, never "
                    "produced by the tokenizer)"
                )
        return checked

    def fitting(self, prompts: dict[int, list[int]]) -> dict[int, list[int]]:
        """The prompts, if each leaves room for a token in the context."""
        for toks in prompts.values():
            if len(toks) >= self.n_ctx:
                raise ContextOverflowError(
                    f"the prompt is {len(toks)} tokens but the context holds {self.n_ctx}; "
                    "shorten it or raise n_ctx",
                    tokens=len(toks),
                    n_ctx=self.n_ctx,
                )
        return prompts

    def check_fits(self, tokens: int) -> None:
        if tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt and continuation are {tokens} tokens but the context holds "
                f"{self.n_ctx}; raise n_ctx",
                tokens=tokens,
                n_ctx=self.n_ctx,
            )

    def scoring(self, prompt, continuation: str | list[int]):
        """Per-context prompt tokens and the continuation's ids for `Emulator.score` (the
        fine-tuned rendering's, appended to every context as generated tokens are). Where the
        prompt's last tokens merge with the continuation's first, they count as continuation."""
        group = self.group
        indices = group.indices("eft")
        kind, prompt = check_prompt(prompt)
        if isinstance(continuation, str):
            extra = len(continuation.encode("utf-8"))
            prompt_bytes = 0 if kind == "ids" else text_bytes(kind, prompt)
            self.check_length(extra + prompt_bytes, indices, room=0)
        if kind == "ids" or not isinstance(continuation, str):
            prompts = self.tokens(kind, prompt, indices)
            if isinstance(continuation, str):  # after token ids: the text tokenized alone
                continuation = group.ft_model.tokenize(continuation, add_bos=False, special=False)
            return prompts, list(continuation)
        rendered = self.rendered(kind, prompt)
        prompts = self.tokenized(rendered, indices)
        whole = Rendered(rendered["ft"].pieces + ((continuation, False),))
        ft_prompt = prompts[group.drafter]
        ft_whole = tokenize_prompt(group.ft_model, whole)
        keep = common_prefix(ft_prompt, ft_whole)
        cont = ft_whole[keep:]
        drop = len(ft_prompt) - keep
        same = {i for i, p in prompts.items() if p == ft_prompt}
        cut = {i: (p[: len(p) - drop] if i in same and drop else p) for i, p in prompts.items()}
        if not cont:
            raise InvalidParameterError("the continuation adds no tokens to the prompt")
        if any(not p for p in cut.values()):
            raise InvalidParameterError("the prompt is empty once its tokens are split")
        return cut, cont


def text_bytes(kind: str, prompt) -> int:
    """UTF-8 bytes of what a user wrote in a prompt (raw text, or every message's content)."""
    if kind == "text":
        return len(prompt.encode("utf-8"))
    return sum(len(m["content"].encode("utf-8")) for m in prompt)
