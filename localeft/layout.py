"""Which tokens share a llama_decode call: the canonical decode layout.

llama.cpp's kernels round differently for different batch shapes (a position decoded in a call
of 5 tokens, of 128, or alone gets different KV values and logits, by up to 0.4 nats on a 1.5B),
and the logits rows of a call also depend on which of its rows are asked for. So localeft decides
the calls from the request's tokens alone, never from what a KV cache happens to hold, and reuses
a cache only as far as it was computed by the very same calls. Thread counts do not change the
results (checked); the call shapes are all that is left to fix.

A layout is a list of calls `(start, tokens)`, in order, covering a context's token list:

- generation (`plan`): each prompt stretch is decoded in chunks of `chunk` tokens from the
  stretch's own start (the last chunk partial); each reply stretch (an assistant message of the
  history) one token per call, as generation decodes tokens. A raw prompt is one prompt stretch;
  a chat's stretches come from its rendered messages. So a chat that grows turn by turn reuses
  its caches whole, and a cold request with the same history computes the same bytes (paying
  one call per token of its old replies). With GPU offload replies are decoded in chunks too
  (`reply_chunk`): there a batch costs about one step, and speculative decoding (on by default)
  verifies drafted blocks, so its replies are not single-token calls anyway.
- scoring (`scoring_plan`): the whole scored sequence in chunks of SCORE_CHUNK from position 0,
  every row of a chunk that holds a scored position asked for. The rows then do not depend on
  where the prompt ends and the continuation starts: `score`, `eval`, `logprobs(after=)` and
  the server's echo agree bit for bit on the same tokens.
"""

from __future__ import annotations

from typing import Sequence

Call = tuple[int, tuple[int, ...]]  # (first position, the tokens one llama_decode call decodes)
Span = tuple[int, int]  # [start, end) token positions
SCORE_CHUNK = 16  # = context.MAX_OUTPUTS: a chunk of scoring asks for all its rows


def stretches(n: int, replies: Sequence[Span]) -> list[tuple[int, int, bool]]:
    """[start, end, is_reply] covering [0, n): the reply spans (clipped to n) and the prompt
    stretches between them."""
    out, at = [], 0
    for a, b in sorted(replies):
        a, b = max(a, at), min(b, n)
        if a >= b:
            continue
        if a > at:
            out.append((at, a, False))
        out.append((a, b, True))
        at = b
    if at < n:
        out.append((at, n, False))
    return out


def plan(
    tokens: Sequence[int], replies: Sequence[Span] = (), chunk: int = 128, reply_chunk: int = 1
) -> list[Call]:
    """The generation layout of a token list whose reply stretches are `replies`: prompt
    stretches in chunks of `chunk`, replies in chunks of `reply_chunk` (1: one token per call,
    as plain generation decodes them), each from its stretch's start."""
    calls: list[Call] = []
    for a, b, reply in stretches(len(tokens), replies):
        step = reply_chunk if reply else chunk
        calls += [(s, tuple(tokens[s : min(s + step, b)])) for s in range(a, b, step)]
    return calls


def scoring_plan(tokens: Sequence[int], chunk: int = SCORE_CHUNK) -> list[Call]:
    """The scoring layout: chunks from position 0."""
    return [(s, tuple(tokens[s : s + chunk])) for s in range(0, len(tokens), chunk)]


def end(call: Call) -> int:
    return call[0] + len(call[1])


def matched(held: Sequence[Call], n_held: int, calls: Sequence[Call], n: int) -> int:
    """How many leading `calls` a cache holds as computed: its history `held` (calls in order,
    holding positions [0, n_held)) has them with the same start and tokens, and still holds
    every position of each that the target (positions [0, n)) keeps."""
    m = 0
    for i, c in enumerate(calls):
        if i >= len(held) or held[i] != c:
            break
        kept = held[i + 1][0] if i + 1 < len(held) else n_held
        if kept < min(end(c), n):
            break
        m = i + 1
    return m


def reply_span(start: int, n: int) -> Span:
    """Generated tokens continue as a reply stretch."""
    return (start, start + n)
