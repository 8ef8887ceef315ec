"""The token view: where did fine-tuning change the large model's choice, and by how much.

A token is highlighted when it is not what the large base alone would have picked greedily at
that position; its shade says how far the fine-tuning delta moved it (EFT log-prob − base
log-prob, in nats). Three renderings of the same records: ANSI colours for a terminal, plain
text with [brackets] for pipes (no escape codes), and a standalone HTML page (no scripts
fetched from anywhere; hover a token for its log-probs and the alternatives).
"""

from __future__ import annotations

import html
import json
from typing import Sequence

from .results import TokenInfo

BINS = (1.0, 3.0, 6.0)  # nats: the shade steps
_ANSI_BG = (194, 150, 71, 28)  # light to dark green (256-colour backgrounds)
_ANSI_FG = (16, 16, 16, 231)
_HTML_BG = ("#d7f5d7", "#a8e6a8", "#5cbf5c", "#1f7a1f")
_HTML_FG = ("#111", "#111", "#111", "#fff")


def shade(record: TokenInfo) -> int | None:
    """0-3 by how far fine-tuning moved a highlighted token; None if not highlighted."""
    if not record.differs_from_base:
        return None
    moved = abs(record.shift or 0.0)
    return sum(moved >= b for b in BINS)


def legend(color: bool) -> str:
    mark = "coloured" if color else "[bracketed]"
    return f"{mark}: tokens the large base alone would not have picked (greedy); " + (
        "darker = moved more by fine-tuning (< 1, 1-3, 3-6, > 6 nats)"
        if color
        else "with --explain on a terminal, shades show by how much"
    )


def ansi(records: Sequence[TokenInfo]) -> str:
    out = []
    for r in records:
        s = shade(r)
        if s is None or not r.text:
            out.append(r.text)
        else:
            out.append(f"\x1b[48;5;{_ANSI_BG[s]}m\x1b[38;5;{_ANSI_FG[s]}m{r.text}\x1b[0m")
    return "".join(out)


def plain(records: Sequence[TokenInfo]) -> str:
    return "".join(f"[{r.text}]" if shade(r) is not None and r.text else r.text for r in records)


def _tooltip(r: TokenInfo) -> str:
    lines = [f"token {r.id} {r.text!r}", f"EFT log-prob {r.logprob:.3f} (rank {r.rank})"]
    lines += [f"{label} alone {lp:.3f}" for label, lp in r.models.items()]
    if r.base_top is not None and r.differs_from_base:
        lines.append(f"the large base alone would pick token {r.base_top}")
    if r.top:
        lines.append("alternatives (EFT):")
        lines += [f"  {t!r} {lp:.3f}" for _, t, lp in r.top]
    return "\n".join(lines)


def html_page(records: Sequence[TokenInfo], title: str, prompt: str = "", meta: str = "") -> str:
    """A standalone page: the text with highlighted tokens, hover for details; the same
    records as `--json` are embedded (script type application/json) for tools."""
    spans = []
    for i, r in enumerate(records):
        s = shade(r)
        style = "" if s is None else f' style="background:{_HTML_BG[s]};color:{_HTML_FG[s]}"'
        cls = "tok" + (" moved" if s is not None else "")
        spans.append(
            f'<span class="{cls}" data-i="{i}" title="{html.escape(_tooltip(r))}"{style}>'
            f"{html.escape(r.text)}</span>"
        )
    data = json.dumps([r.as_dict() for r in records], ensure_ascii=False).replace("</", "<\\/")
    swatches = "".join(
        f'<span class="sw" style="background:{bg};color:{fg}">{label}</span>'
        for bg, fg, label in zip(_HTML_BG, _HTML_FG, ("< 1", "1-3", "3-6", "> 6 nats"))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.6 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
  color: #222; }}
.prompt {{ color: #666; white-space: pre-wrap; border-left: 3px solid #ddd; padding-left: .8rem; }}
.text {{ white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 14px; }}
.tok.moved {{ border-radius: 3px; cursor: help; }}
.tok:hover {{ outline: 1px solid #888; }}
.sw {{ padding: 0 .4rem; margin-right: .3rem; border-radius: 3px; font-size: 13px; }}
.meta {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(meta)}</p>
<p class="meta">Highlighted: tokens the large base alone would not have picked (greedy);
shade: how far fine-tuning moved them {swatches} Hover a token for its log-probs.</p>
{f'<div class="prompt">{html.escape(prompt)}</div>' if prompt else ""}
<div class="text">{"".join(spans)}</div>
<script id="records" type="application/json">{data}</script>
</body></html>
"""
