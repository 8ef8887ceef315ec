"""Strings as grammar: counted characters (minLength/maxLength as a chain of rules, one per
step), a format's fixed rule, or a `pattern` translated from its parsed tree (pattern.py).

A length counts characters as jsonschema does (an escape is one character), and pattern
characters are written as JSON string text: raw where JSON allows it, escaped otherwise.
One constraint family per string: pattern with lengths or a format, or a format with lengths
that cut it, are refused rather than half enforced.
"""

from __future__ import annotations

from .charsets import CONTROL, gbnf_class, minus
from .fixed import format_fits, format_within
from .gbnf import EPS, NONE, Rules, alt, lit, seq, star
from .limits import Refuse, at, check_counts
from .node import Node


def string_grammar(rules: Rules, n: Node):
    """The strings a plain node allows (with their quotes)."""
    where = at(n.path)
    q = lit('"')
    if len(n.patterns) > 1:
        raise Refuse(f'two "pattern" keywords meet {where} (through allOf/$ref)')
    if len(n.formats) > 1:
        raise Refuse(f'"format" {n.formats[0]} and {n.formats[1]} meet {where}')
    if n.patterns:
        pattern, ppath, ast = n.patterns[0]
        if n.formats or n.min_len or n.max_len is not None:
            other = '"format"' if n.formats else '"minLength"/"maxLength"'
            raise Refuse(f'"pattern" together with {other} {where} is not supported')
        return seq(q, _regex(rules, ast, ppath), q)
    if n.formats:
        fmt = n.formats[0]
        if not format_fits(fmt, n.min_len, n.max_len):
            rules.reasons.append(f'no "{fmt}" string {where} has a length within the limits')
            return NONE
        if not format_within(fmt, n.min_len, n.max_len):
            raise Refuse(
                f'"format": "{fmt}" together with "minLength"/"maxLength" {where} is not supported'
            )
        return seq(q, rules.use(f"fmt-{fmt}"), q)
    if n.min_len == 0 and n.max_len is None:
        return rules.use("string")
    check_counts((("minLength", n.min_len), ("maxLength", n.max_len)), where)
    return seq(q, rules.repeat(rules.use("char"), n.min_len, n.max_len, "c"), q)


def _regex(rules: Rules, ast, path):
    """A pattern's strings: each top-level branch, unanchored ends free (re.search)."""
    branches = ast[1]
    out = []
    anychar = rules.use("char")
    for branch in branches:
        items = list(branch[1])
        start = bool(items) and items[0] == ("bol",)
        end = bool(items) and items[-1] == ("eol",) and len(items) > (1 if start else 0)
        body = items[1 if start else 0 : len(items) - (1 if end else 0)]
        expr = seq(
            EPS if start else star(anychar),
            _regex_node(rules, ("cat", body), path),
            EPS if end else star(anychar),
        )
        out.append(expr)
    return alt(*out)


def _regex_node(rules: Rules, node, path):
    kind = node[0]
    if kind in ("bol", "eol"):
        raise Refuse(f'"pattern" {at(path)}: "^" and "$" are supported only at the ends')
    if kind == "cat":
        return seq(*(_regex_node(rules, x, path) for x in node[1]))
    if kind == "alt":
        return alt(*(_regex_node(rules, x, path) for x in node[1]))
    if kind == "rep":
        inner = _regex_node(rules, node[1], path)
        if inner[0] not in ("lit", "cls", "ref"):
            name = rules.new("r")
            rules.define(name, inner)
            inner = ("ref", name)
        return rules.repeat(inner, node[2], node[3], "r")
    return _charset(node[1], broad=node[2])


def _charset(ranges, broad: bool):
    """Characters of a regex set, as JSON string text: raw where JSON allows it, escaped
    otherwise (controls only when the set names them)."""
    raw = minus(ranges, [CONTROL, (0x22, 0x22), (0x5C, 0x5C), (0xD800, 0xDFFF)])
    out = [("cls", gbnf_class(raw))] if raw else []
    short = {0x22: '\\"', 0x5C: "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
    for a, b in ranges:
        for c in range(a, min(b, 0x5C) + 1):
            if c in (0x22, 0x5C) or c <= 0x1F and not broad:
                out.append(lit(short.get(c, f"\\u{c:04x}")))
    return alt(*out)
