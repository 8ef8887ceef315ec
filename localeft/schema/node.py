"""Node: the constraints one schema object puts on a value, in a form that two of them can be
merged into one (allOf, and a $ref with sibling keywords, mean both hold).

A subschema inside a node is TRUE, FALSE, ("loc", JSON pointer) or ("all", subschemas): it is
resolved later, so that recursive schemas stay finite.
"""

from __future__ import annotations

from .values import canon

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
TRUE = ("true",)
FALSE = ("false",)


class Node:
    """The constraints of one schema object (or of several merged): `parts` (allOf, $ref) and
    `groups` (anyOf/oneOf) are resolved by Resolver.flatten into plain nodes."""

    __slots__ = (
        "path", "types", "kinds", "literals", "lows", "highs", "mults", "min_len", "max_len",
        "patterns", "formats", "prefix", "items", "min_items", "max_items", "unique", "props",
        "has_props", "required", "additional", "min_props", "max_props", "parts", "groups",
    )  # fmt: skip

    def __init__(self, path: str):
        self.path = path
        self.types = None  # frozenset of TYPES, None: any
        self.kinds = frozenset()  # keyword families present (for schemas without "type")
        self.literals = None  # enum ∩ const
        self.lows, self.highs, self.mults = (), (), ()  # ((value, strict, keyword, path))
        self.min_len, self.max_len = 0, None
        self.patterns, self.formats = (), ()  # ((pattern, path, parsed)), (format,)
        self.prefix, self.items = (), None  # items None: absent
        self.min_items, self.max_items, self.unique = 0, None, False
        self.props, self.has_props, self.required = {}, False, ()
        self.additional = None  # None: absent
        self.min_props, self.max_props = 0, None
        self.parts, self.groups = (), ()

    def copy(self) -> Node:
        n = Node(self.path)
        for k in Node.__slots__:
            setattr(n, k, getattr(self, k))
        return n

    def blank(self) -> bool:
        return self.types is None and self.literals is None and not self.kinds

    def effective_types(self) -> frozenset:
        """The types a value may have: "type", else those whose keywords are present, else
        any (integers are then numbers)."""
        if self.types is not None:
            return self.types
        if self.kinds:
            return frozenset("number" if k == "number" else k for k in self.kinds)
        return frozenset(TYPES) - {"integer"}

    def prop(self, name: str):
        if name in self.props:
            return self.props[name]
        return TRUE if self.additional is None else self.additional

    def position(self, i: int):
        if i < len(self.prefix):
            return self.prefix[i]
        return TRUE if self.items is None else self.items


def both(a, b):
    """The subschema that holds where both `a` and `b` hold."""
    if a == TRUE or a == b:
        return b
    if b == TRUE:
        return a
    if FALSE in (a, b):
        return FALSE
    parts = (a[1] if a[0] == "all" else (a,)) + (b[1] if b[0] == "all" else (b,))
    return ("all", tuple(dict.fromkeys(parts)))


def _least(a, b):
    """The smaller of two optional maxima (None: no maximum)."""
    return a if b is None else (b if a is None else min(a, b))


def merge(a: Node, b: Node) -> Node:
    """One node whose constraints are those of `a` and `b` together (neither has parts or
    groups left)."""
    if b.blank():
        return a
    if a.blank():
        out = b.copy()
        out.path = a.path or b.path
        return out
    n = a.copy()
    if a.types is None or b.types is None:
        n.types = a.types if b.types is None else b.types
    else:
        both_types = a.types & b.types
        if (
            "integer" in a.types
            and "number" in b.types
            or ("number" in a.types and "integer" in b.types)
        ):
            both_types |= {"integer"}
        n.types = frozenset(both_types)
    n.kinds = a.kinds | b.kinds
    if a.literals is None or b.literals is None:
        n.literals = a.literals if b.literals is None else b.literals
    else:
        keys = {canon(v) for v in b.literals}
        n.literals = tuple(v for v in a.literals if canon(v) in keys)
    n.lows, n.highs, n.mults = a.lows + b.lows, a.highs + b.highs, a.mults + b.mults
    n.min_len = max(a.min_len, b.min_len)
    n.max_len = _least(a.max_len, b.max_len)
    n.patterns = a.patterns + b.patterns
    n.formats = tuple(dict.fromkeys(a.formats + b.formats))
    k = max(len(a.prefix), len(b.prefix))
    n.prefix = tuple(both(a.position(i), b.position(i)) for i in range(k))
    n.items = None if a.items is None and b.items is None else both(a.position(k), b.position(k))
    n.min_items = max(a.min_items, b.min_items)
    n.max_items = _least(a.max_items, b.max_items)
    n.unique = a.unique or b.unique
    names = list(dict.fromkeys(list(a.props) + list(b.props)))
    n.props = {k: both(a.prop(k), b.prop(k)) for k in names}
    n.has_props = a.has_props or b.has_props
    n.required = tuple(dict.fromkeys(a.required + b.required))
    n.additional = (
        None
        if a.additional is None and b.additional is None
        else both(a.additional or TRUE, b.additional or TRUE)
    )
    n.min_props = max(a.min_props, b.min_props)
    n.max_props = _least(a.max_props, b.max_props)
    return n
