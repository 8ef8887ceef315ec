"""Whether a JSON value satisfies a plain Node, as jsonschema would decide it.

Used where the converter reasons about values rather than grammar: enum/const values are
kept only if they satisfy the other keywords beside them, and oneOf alternatives are proved
exclusive when one's literal values all fail the other.
"""

from __future__ import annotations

import re

from .bounds import above, below
from .fixed import format_ok
from .node import Node
from .values import canon, dec, is_num


def type_ok(v, types) -> bool:
    """Whether v has one of `types` (None: any); an integral float is an integer."""
    if types is None:
        return True
    if v is None:
        return "null" in types
    if isinstance(v, bool):
        return "boolean" in types
    if isinstance(v, int) or isinstance(v, float) and v.is_integer():
        return "integer" in types or "number" in types
    if isinstance(v, float):
        return "number" in types
    if isinstance(v, str):
        return "string" in types
    return ("array" if isinstance(v, list) else "object") in types


def satisfies(v, n: Node, flatten) -> bool:
    """Whether v satisfies n; `flatten` turns a subschema (items, properties) into its
    alternatives of plain nodes."""

    def each(x, sub) -> bool:
        return any(satisfies(x, alternative, flatten) for alternative in flatten(sub))

    if not type_ok(v, n.types):
        return False
    if n.literals is not None and canon(v) not in {canon(x) for x in n.literals}:
        return False
    if is_num(v):  # the raw numbers: Python compares an int with a float exactly
        if not all(above(v, low) for low in n.lows) or not all(below(v, h) for h in n.highs):
            return False
        if any((dec(v) / dec(m)).denominator != 1 for m in n.mults):
            return False
    elif isinstance(v, str):
        if not _within(len(v), n.min_len, n.max_len):
            return False
        if any(not re.search(p, v) for p, _, _ in n.patterns):
            return False
        if any(not format_ok(f, v) for f in n.formats):
            return False
    elif isinstance(v, list):
        if not _within(len(v), n.min_items, n.max_items):
            return False
        if n.unique and len({canon(x) for x in v}) != len(v):
            return False
        if not all(each(x, n.position(i)) for i, x in enumerate(v)):
            return False
    elif isinstance(v, dict):
        if any(k not in v for k in n.required):
            return False
        if not _within(len(v), n.min_props, n.max_props):
            return False
        if not all(each(x, n.prop(k)) for k, x in v.items()):
            return False
    return True


def _within(count: int, least: int, most) -> bool:
    """Whether a length is within [least, most] (most None: no maximum)."""
    return least <= count and (most is None or count <= most)
