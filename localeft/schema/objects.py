"""Objects as grammar: the declared properties in their declared order, each optional one
skippable, as a chain of rules (one per property, built from the end); extra properties only
when additionalProperties (or a schema without "properties") asks for them, and then under
names other than the declared ones. min/maxProperties are enforced only where "required" and
"properties" already fix the count.

Property schemas are compiled by the converter, through the `sub_grammar` function it
passes in.
"""

from __future__ import annotations

from .charsets import ALL, CONTROL, gbnf_class, minus
from .fixed import RAW
from .gbnf import EPS, NONE, Rules, alt, lit, opt, seq, star
from .limits import Refuse, at
from .node import FALSE, TRUE, Node
from .values import dumps


def object_grammar(rules: Rules, n: Node, sub_grammar):
    """The objects a plain node allows; sub_grammar(subschema) gives a value's expression."""
    where = at(n.path)
    names = list(n.props) + [r for r in n.required if r not in n.props]
    explicit = n.additional is not None and n.additional != FALSE
    extras = explicit or (n.additional is None and not n.has_props)
    if (
        not names
        and extras
        and n.additional in (None, TRUE)
        and not n.min_props
        and (n.max_props is None)
    ):
        return rules.use("object")
    fewest = len(n.required)
    most = None if extras else len(names)
    if n.min_props > fewest or n.max_props is not None and (most is None or most > n.max_props):
        raise Refuse(
            f'"minProperties"/"maxProperties" {where} are enforced only when "required" '
            'already gives that many properties and "properties" (without '
            '"additionalProperties") no more'
        )
    ws = rules.use("ws")
    kvs = []
    for name in names:
        value = sub_grammar(n.prop(name))
        kvs.append(seq(lit(dumps(name)), ws, lit(":"), ws, value, ws))
    required = [name in n.required for name in names]
    addkv = NONE
    if extras:
        value = sub_grammar(n.additional if explicit else TRUE)
        addkv = seq(lit('"'), _key_not_in(rules, names), lit('"'), ws, lit(":"), ws, value, ws)
    count = len(names)
    more = EPS  # ("," kv)* of the additional properties
    if extras:
        more = ("ref", rules.new("o"))
        rules.define(more[1], star(seq(lit(","), ws, addkv)))
    rest: list = [None] * (count + 1)  # rest[i]: properties i.. after something written
    rest[count] = more
    for i in range(count - 1, -1, -1):
        item = seq(lit(","), ws, kvs[i])
        name = rules.new("o")
        rules.define(name, seq(item if required[i] else opt(item), rest[i + 1]))
        rest[i] = ("ref", name)
    first = opt(seq(addkv, more))  # first[i]: nothing written yet
    for i in range(count - 1, -1, -1):
        here = seq(kvs[i], rest[i + 1])
        name = rules.new("o")
        rules.define(name, here if required[i] else alt(here, first))
        first = ("ref", name)
    return seq(lit("{"), ws, first, lit("}"))


def _key_not_in(rules: Rules, names):
    """String contents (no escapes) other than each of `names`."""
    trie: dict = {}
    for name in names:
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}
    raw = ("cls", RAW)
    allowed = minus(ALL, [CONTROL, (0x22, 0x22), (0x5C, 0x5C)])
    names_of = {id(trie): rules.new("k")}
    todo = [trie]  # one rule per trie node, without recursion (names can be long)
    while todo:
        node = todo.pop()
        kids = {c: kid for c, kid in node.items() if c}
        options = [] if "" in node else [EPS]
        others = minus(allowed, [(ord(c), ord(c)) for c in kids])
        if others:
            options.append(seq(("cls", gbnf_class(others)), star(raw)))
        for c, kid in kids.items():
            if ord(c) > 0x1F and c not in '"\\' and not 0xD800 <= ord(c) <= 0xDFFF:
                names_of[id(kid)] = rules.new("k")
                options.append(seq(lit(c), ("ref", names_of[id(kid)])))
                todo.append(kid)
        rules.define(names_of[id(node)], alt(*options))
    return ("ref", names_of[id(trie)])
