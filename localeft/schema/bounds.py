"""Exact arithmetic on numeric bounds and multipleOf, shared by the audit (contradictions,
exclusive oneOf alternatives), the number automaton and uniqueItems.

A bound is (value, strict); values are Fractions (or the raw JSON numbers, which Python
compares exactly). JSON numbers in keywords mean decimals, so multiples are computed on
the decimal (values.dec), never on the binary float.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .limits import DIGITS, MAX_UNIQUE_VALUES
from .values import dec


def above(v, low) -> bool:
    """Whether v satisfies the lower bound `low` ((value, strict, ...))."""
    return v > low[0] or v == low[0] and not low[1]


def below(v, high) -> bool:
    """Whether v satisfies the upper bound `high` ((value, strict, ...))."""
    return v < high[0] or v == high[0] and not high[1]


def _tighter(bounds, upper: bool, conv):
    """The tightest (value, strict) of ((raw, strict, kw, path)) under conversion `conv`."""
    best = None
    for raw, strict, _, _ in bounds:
        v = conv(raw)
        if best is None or (v < best[0] if upper else v > best[0]) or v == best[0] and strict:
            best = (v, strict)
    return best


def tightest(n, conv=Fraction):
    """A node's tightest lower and upper bounds (None: open), values read by `conv`."""
    return _tighter(n.lows, False, conv), _tighter(n.highs, True, conv)


def empty_range(lo, hi) -> bool:
    return (
        lo is not None and hi is not None and (lo[0] > hi[0] or lo[0] == hi[0] and (lo[1] or hi[1]))
    )


def int_range(lo, hi):
    """Integer bounds (inclusive, None: open) from exact (Fraction, strict) bounds."""
    a = None if lo is None else (math.floor(lo[0]) + 1 if lo[1] else math.ceil(lo[0]))
    b = None if hi is None else (math.ceil(hi[0]) - 1 if hi[1] else math.floor(hi[0]))
    return a, b


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def integer_step(mults) -> int:
    """The integers that are multiples of every multipleOf are the multiples of this step (an
    integer is a multiple of p/q, in lowest terms, iff it is a multiple of p)."""
    step = 1
    for m in mults:
        step = lcm(step, dec(m).numerator)
    return step


def grid(mults) -> Fraction:
    """The least common multiple of decimal fractions: values that are multiples of each."""
    num = 1
    den = 0
    for f in (dec(m) for m in mults):
        num = lcm(num, f.numerator)
        den = math.gcd(den, f.denominator)
    return Fraction(num, den)


def first_multiple(g: Fraction, lo):
    """The least multiple of g satisfying the lower bound lo (None: 0)."""
    if lo is None:
        return None
    k = math.floor(lo[0] / g) if lo[1] else math.ceil(lo[0] / g)
    v = k * g
    if not above(v, lo):
        v += g
    return v


def digits(q: Fraction) -> tuple[str, str]:
    """A nonnegative decimal fraction as (integer digits, fraction digits, no trailing zeros)."""
    s = 0
    while (q * 10**s).denominator != 1:
        s += 1
    n = str(int(q * 10**s)).rjust(s + 1, "0")
    whole, frac = n[: len(n) - s], n[len(n) - s :]
    return whole, frac.rstrip("0")


def number_text(q) -> str:
    """A decimal Fraction as JSON number text without exponent."""
    if isinstance(q, int) or q.denominator == 1:
        return str(int(q))
    sign = "-" if q < 0 else ""
    whole, frac = digits(abs(q))
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def grid_values(n, integer: bool):
    """Every integer (or number) a node's bounds and multipleOf allow, if there are at most
    MAX_UNIQUE_VALUES (numbers also within DIGITS digits); else None."""
    if integer:
        a, b = int_range(*tightest(n))
        if a is None or b is None:
            return None
        step = integer_step(n.mults)
        first = -(-a // step) * step
        if first > b:
            return []
        count = (b - first) // step + 1
        return None if count > MAX_UNIQUE_VALUES else list(range(first, b + 1, step))
    lo, hi = tightest(n, dec)
    if lo is None or hi is None:
        return None
    g = grid(n.mults)
    v = first_multiple(g, lo)
    out = []
    while below(v, hi):
        out.append(v)
        if len(out) > MAX_UNIQUE_VALUES:
            return None
        v += g
    if any(sum(map(len, digits(abs(x)))) > DIGITS for x in out):
        return None
    return out
