"""A request's prompt as each context of the group sees it: rendered for the context's kind of
role, tokenized by its model, checked against the context window.

Raw text is the same text for every context. Chat messages go through the fine-tuned model's
chat template (prompts.render_pieces) for fine-tuned contexts, and for pre-trained ones (base,
refs) through the same template or a plain transcript (`base_prompt`). Token ids are exactly
those ids in every context.
"""

from __future__ import annotations

from typing import Sequence

from .backend import common_prefix
from .errors import ContextOverflowError, InvalidParameterError
from .layout import Span
from .prompts import Rendered, render_pieces, reply_spans, tokenize_prompt, transcript_pieces
from .request import check_prompt, token_ids


class RolePrompts:
    """Renders and tokenizes prompts for the contexts of one group (ensemble.Ensemble)."""

    def __init__(self, group, base_prompt: str, n_ctx: int):
        self.group, self.base_prompt, self.n_ctx = group, base_prompt, n_ctx

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
        roles = self.group.roles
        return self.fitting(
            {i: tokenize_prompt(roles[i].model, rendered[roles[i].kind]) for i in indices}
        )

    def ids(self, name: str, ids) -> list[int]:
        """Token ids the models share."""
        return token_ids(name, ids, self.group.n_vocab)

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
