"""Arrays as grammar: a chain of rules, one per position (so that minItems, maxItems and
prefixItems count exactly and nothing nests), and uniqueItems for items with few possible
values, by choosing each value at most once in a fixed order.

Item schemas are compiled by the converter through the `sub_grammar` function it passes in.
"""

from __future__ import annotations

from .bounds import number_text, grid_values
from .gbnf import EPS, NONE, Rules, alt, lit, opt, seq, star
from .limits import MAX_UNIQUE_VALUES, Refuse, at, check_counts
from .node import FALSE, TRUE, Node
from .resolve import Resolver
from .values import canon, dumps


def array_grammar(rules: Rules, n: Node, sub_grammar, resolver: Resolver):
    """The arrays a plain node allows; sub_grammar(subschema) gives an item's expression."""
    where = at(n.path)
    k = len(n.prefix)
    lo, hi = n.min_items, n.max_items
    extra = n.items
    if extra is None:
        extra = TRUE
        if k and hi is None:
            hi = max(k, lo)  # a tuple without "items": no extra items unless minItems asks
    elif extra == FALSE:
        hi = k if hi is None else min(hi, k)
    lo = max(lo, k if hi is None else min(k, hi))  # a tuple comes whole unless maxItems cuts it
    if hi is not None and lo > hi:
        rules.reasons.append(f"no array length fits the limits {where}")
        return NONE
    if not k and extra == TRUE and lo == 0 and hi is None and not n.unique:
        return rules.use("array")
    check_counts((("minItems", lo), ("maxItems", hi)), where)
    ws = rules.use("ws")
    if n.unique and (hi is None or hi > 1):
        return _unique_array(rules, n, extra, lo, hi, where, resolver)

    def item(i):
        return sub_grammar(n.prefix[i] if i < k else extra)

    if hi == 0:
        return seq(lit("["), ws, lit("]"))
    # after[i] (i items written) is one rule per position, built from the end: a chain
    # (never nested text), then ("," item)* when there is no maxItems
    if hi is None:
        chained, after = max(k, lo, 1), star(seq(lit(","), ws, item(k), ws))
    else:
        chained, after = hi, EPS
    for i in range(chained - 1, 0, -1):
        body = seq(lit(","), ws, item(i), ws, after)
        after = ("ref", rules.new("a"))
        rules.define(after[1], body if i < lo else opt(body))
    first = seq(item(0), ws, after)
    return seq(lit("["), ws, first if lo > 0 else opt(first), lit("]"))


def _unique_array(rules: Rules, n: Node, extra, lo, hi, where, resolver: Resolver):
    if n.prefix:
        raise Refuse(f'"uniqueItems": true with "prefixItems" {where} is not supported')
    values = _domain(resolver, extra)
    if values is None:
        raise Refuse(
            f'"uniqueItems": true {where} is enforced only when the items have at most '
            f"{MAX_UNIQUE_VALUES} possible values (enum, const, boolean, a small integer "
            "range); these items have more"
        )
    m = len(values)
    top = m if hi is None else min(hi, m)
    if lo > top:
        raise Refuse(
            f'"uniqueItems": true {where}: the items have {m} possible values, '
            f'fewer than "minItems" {lo}'
        )
    ws = rules.use("ws")
    memo: dict = {}

    def pick(i, c):  # values[:i] decided, c written: items appear in the order of `values`
        if c == top or i == m:
            return EPS if c >= lo else NONE
        if (i, c) in memo:
            return memo[(i, c)]
        name = rules.new("u")
        memo[(i, c)] = ("ref", name)
        sep = EPS if c == 0 else seq(lit(","), ws)
        take = seq(sep, lit(values[i]), ws, pick(i + 1, c + 1))
        skip = pick(i + 1, c) if m - i - 1 >= lo - c else NONE
        rules.define(name, alt(take, skip))
        return memo[(i, c)]

    return seq(lit("["), ws, pick(0, 0), lit("]"))


def _domain(resolver: Resolver, sub):
    """Every value (as JSON text) a schema allows, if there are few; else None."""
    out: dict = {}
    for n in resolver.flatten(sub):
        if n.literals is not None:
            for v in resolver.allowed(n):
                out.setdefault(canon(v), dumps(v))
            continue
        if n.blank():
            return None
        types = n.effective_types()
        for t in types:
            if t == "null":
                out.setdefault(canon(None), "null")
            elif t == "boolean":
                out.setdefault(canon(True), "true")
                out.setdefault(canon(False), "false")
            elif t in ("integer", "number"):
                if t == "number" and not n.mults:
                    return None
                vals = grid_values(n, integer="number" not in types)
                if vals is None:
                    return None
                for v in vals:
                    out.setdefault(canon(v), str(v) if isinstance(v, int) else number_text(v))
            else:
                return None
        if len(out) > MAX_UNIQUE_VALUES:
            return None
    return list(out.values())
