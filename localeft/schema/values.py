"""JSON values as the keywords compare them: exact numbers (a float means the decimal its
shortest repr shows, as jsonschema reads it with Decimal), JSON equality (1 == 1.0,
true != 1), and JSON text that UTF-8 can carry (for enum values, property names, messages).
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction


def is_num(v) -> bool:
    """A JSON number (bool is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def dec(v) -> Fraction:
    """The decimal a JSON number means (a float by its shortest repr: 0.1 is 1/10)."""
    return Fraction(Decimal(repr(v))) if isinstance(v, float) else Fraction(v)


def canon(v):
    """Hashable form with JSON equality (1 == 1.0, True != 1)."""
    if v is None:
        return ("z",)
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", Fraction(v))
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, list):
        return ("a", tuple(canon(x) for x in v))
    return ("o", frozenset((k, canon(x)) for k, x in v.items()))


def dumps(v) -> str:
    """JSON text, non-ASCII characters raw, unless a lone surrogate needs its \\u escape."""
    text = json.dumps(v, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(v)
    return text


def show(v) -> str:
    """A value for a message: its JSON text, cut to 40 characters."""
    text = dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."
