"""One validation style for every setting a user passes: strict types (no "1.0" for a number,
no True for an integer), ranges, and an `InvalidParameterError` naming the setting."""

from __future__ import annotations

import math
import numbers
import os

from .errors import InvalidParameterError

MAX_WEIGHT = 1e6  # beta, expert weights: past this the delta alone decides (argmax of it)
MAX_TOP_LOGPROBS = 20  # alternatives a per-token record lists
MAX_DRAFT = 15  # verification asks for k + 1 logits rows in one decode (context.MAX_OUTPUTS)


def param_of(name: str) -> str:
    """The setting a message's name is about: "logit_bias[5]" and "prompt token id" name
    logit_bias and prompt."""
    return name.split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0]


def bad(name: str, message: str) -> InvalidParameterError:
    """The error for setting `name` (its `param` set)."""
    return InvalidParameterError(message, param=param_of(name))


def number(name: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number (int, float, NumPy scalar; not bool or str) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad(name, f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise bad(name, f"{name} must be finite, got {value!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if lo is not None and hi is not None:
            raise bad(name, f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
        bound = f">= {lo:g}" if lo is not None else f"<= {hi:g}"
        raise bad(name, f"{name} must be {bound}, got {value!r}")
    return v


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (int or NumPy integer; not bool, float or str) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad(name, f"{name} must be an integer, got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise bad(name, f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise bad(name, f"{name} must be an integer <= {maximum}, got {value!r}")
    return v


def weight(name: str, value) -> float:
    """An expert weight: any sign, magnitude at most MAX_WEIGHT."""
    return number(name, value, -MAX_WEIGHT, MAX_WEIGHT)


def beta(value) -> float:
    return number("beta", value, 0.0, MAX_WEIGHT)


def path(name: str, value) -> str | os.PathLike:
    """A model file path: str or os.PathLike, not empty."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise bad(name, f"{name} must be a file path, got {value!r}")
    return value


def flag(name: str, value) -> bool | None:
    """True, False or None (the default)."""
    if value is not None and not isinstance(value, bool):
        raise bad(name, f"{name} must be True, False or None, got {value!r}")
    return value


def choice(name: str, value, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise bad(name, f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value
