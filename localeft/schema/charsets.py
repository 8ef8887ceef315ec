"""Sets of characters as sorted code point ranges [(lo, hi)], and their GBNF class text.

The pattern parser, string characters and property names all work with these sets; a class
is written with every character escaped and as positive ranges only, because with a negated
class llama.cpp's engine would also take bytes that decode past U+10FFFF or to a surrogate
(not UTF-8).
"""

from __future__ import annotations

CONTROL = (0x00, 0x1F)
WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
DIGIT = [(0x30, 0x39)]
SPACE = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]  # \v (0x0B) has no short JSON escape
ASCII = [(0x00, 0x7F)]
ALL = [(0x00, 0xD7FF), (0xE000, 0x10FFFF)]  # every character UTF-8 can carry


def norm(ranges):
    """Sorted, merged ranges."""
    out: list = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def minus(ranges, cut):
    """The characters of `ranges` not in `cut`."""
    out = []
    for a, b in norm(ranges):
        for c, d in norm(cut):
            if d < a or c > b:
                continue
            if c > a:
                out.append((a, c - 1))
            a = max(a, d + 1)
            if a > b:
                break
        if a <= b:
            out.append((a, b))
    return norm(out)


def _cp(c: int) -> str:
    if c < 0x100:
        return f"\\x{c:02X}"
    if c < 0x10000:
        return f"\\u{c:04X}"
    return f"\\U{c:08X}"


def gbnf_class(ranges) -> str:
    """A GBNF character class from code point ranges [(lo, hi)], every character escaped."""
    body = "".join(_cp(a) if a == b else f"{_cp(a)}-{_cp(b)}" for a, b in ranges)
    return "[" + body + "]"
