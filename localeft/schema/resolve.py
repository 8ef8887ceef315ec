"""What a schema location means, as alternatives of plain Nodes: allOf and $ref with sibling
keywords merged into one set of constraints, anyOf distributed over them, and oneOf accepted
only where its alternatives provably exclude each other (then it is anyOf).

Each schema object is audited once (audit.Document) and its keywords that exclude each
other are refused here, wherever they are (also inside anyOf, where the schema as a whole
could still be satisfied): deciding that needs enum values checked against nested schemas,
which needs the resolution.
"""

from __future__ import annotations

from fractions import Fraction

from .audit import Document
from .bounds import (
    below,
    empty_range,
    first_multiple,
    grid,
    int_range,
    integer_step,
    tightest,
)
from .fixed import format_fits
from .limits import MAX_ALTERNATIVES, MAX_REF_DEPTH, Refuse, at
from .node import FALSE, TRUE, Node, merge
from .satisfies import satisfies
from .values import dec, show


class Resolver:
    """The nodes of one schema document, read and flattened on demand (both cached)."""

    def __init__(self, document: Document):
        self.document = document
        self.nodes: dict = {}  # JSON pointer -> Node as written
        self.flat: dict = {}  # JSON pointer -> its alternatives of plain nodes

    def node(self, path: str) -> Node:
        """The audited Node at `path` (cached before its contradictions are checked, so that a
        recursive schema's enum check finds it)."""
        if path in self.nodes:
            return self.nodes[path]
        n = self.document.read(path)
        self.nodes[path] = n
        self.contradictions(n)
        return n

    def matches(self, v, n: Node) -> bool:
        """Whether the JSON value v satisfies the plain node n."""
        return satisfies(v, n, self.flatten)

    def allowed(self, n: Node):
        """n's enum/const values that satisfy its other keywords, in order."""
        check = n.copy()
        check.literals = None
        return (v for v in n.literals if self.matches(v, check))

    def contradictions(self, n: Node):
        """Keywords of one schema object that exclude each other: refused."""
        where = at(n.path)
        lo, hi = tightest(n)

        def keyword(bounds, best):
            return next(f'"{k}" {show(v)}' for v, s, k, _ in bounds if (Fraction(v), s) == best)

        if empty_range(lo, hi):
            raise Refuse(
                f"no number satisfies {keyword(n.lows, lo)} and {keyword(n.highs, hi)} {where}"
            )
        if n.types is not None and n.types <= {"integer", "number"}:
            if "number" not in n.types:
                a, b = int_range(lo, hi)
                step = integer_step(n.mults)
                if a is not None and b is not None and -(-a // step) * step > b:
                    what = f"a multiple of {step}" if step > 1 else "an integer"
                    raise Refuse(f"no integer within the limits {where} is {what}")
            elif n.mults and lo is not None and hi is not None:
                lo_d, hi_d = tightest(n, dec)
                if not below(first_multiple(grid(n.mults), lo_d), hi_d):
                    raise Refuse(f'no multiple of "multipleOf" is within the limits {where}')
        pairs = (
            ("minLength", n.min_len, "maxLength", n.max_len),
            ("minItems", n.min_items, "maxItems", n.max_items),
            ("minProperties", n.min_props, "maxProperties", n.max_props),
        )
        for k1, v1, k2, v2 in pairs:
            if v2 is not None and v1 > v2:
                raise Refuse(f'"{k1}" {v1} is greater than "{k2}" {v2} {where}')
        if n.literals is not None and not any(True for _ in self.allowed(n)):
            raise Refuse(f'no value of "enum"/"const" {where} satisfies its other keywords')
        for name in n.required:
            if n.prop(name) == FALSE:
                why = "false" if name in n.props else 'forbidden by "additionalProperties": false'
                raise Refuse(f'required property "{name}" {where} is {why}')
        if n.max_props is not None and len(n.required) > n.max_props:
            raise Refuse(
                f'"required" names {len(n.required)} properties, "maxProperties" is '
                f"{n.max_props} {where}"
            )
        if n.items == FALSE and n.min_items > len(n.prefix):
            raise Refuse(f'"minItems" {n.min_items} {where}: "items": false allows {len(n.prefix)}')
        if n.formats and not format_fits(n.formats[0], n.min_len, n.max_len):
            raise Refuse(f'no "{n.formats[0]}" string {where} has a length within the limits')

    def flatten(self, sub, stack=()) -> list:
        """The alternatives of plain nodes (no parts, no groups) a subschema means."""
        if sub == TRUE:
            return [Node("")]
        if sub == FALSE:
            return []
        if sub[0] == "all":
            out = [Node(sub[1][0][1] if sub[1][0][0] == "loc" else "")]
            for s in sub[1]:
                out = self.product(out, self.flatten(s, stack), "")
            return out
        path = sub[1]
        if path in self.flat:
            return self.flat[path]
        if path in stack:
            raise Refuse(f"{at(path)}: a $ref/allOf/anyOf cycle never reaches a value")
        if len(stack) > MAX_REF_DEPTH:
            raise Refuse(f"{at(path)}: $ref/allOf/anyOf nest deeper than {MAX_REF_DEPTH}")
        node = self.node(path)
        stack = stack + (path,)
        base = node.copy()
        base.parts, base.groups = (), ()
        out = [base]
        for part in node.parts:
            out = self.product(out, self.flatten(part, stack), path)
        for key, alts, gpath in node.groups:
            options = [self.flatten(a, stack) for a in alts]
            if key == "oneOf":
                self.disjoint_alternatives(options, gpath)
            out = self.product(out, [n for o in options for n in o], path)
        self.flat[path] = out
        return out

    def product(self, left, right, path):
        """Every alternative of `left` merged with every one of `right` (allOf over anyOf)."""
        if len(left) * len(right) > MAX_ALTERNATIVES:
            raise Refuse(
                f"{at(path)}: anyOf/oneOf combine into over {MAX_ALTERNATIVES} alternatives"
            )
        return [merge(a, b) for a in left for b in right]

    def disjoint_alternatives(self, options, path):
        """oneOf is anyOf when no value matches two alternatives: refused unless provable
        (different types, enum/const values, ranges, lengths, or a required property whose
        values differ, as in discriminated unions)."""
        for i in range(len(options)):
            for j in range(i + 1, len(options)):
                if not all(self.disjoint(x, y, 0) for x in options[i] for y in options[j]):
                    raise Refuse(
                        f'"oneOf" {at(path)}: alternatives {i} and {j} may both match (use '
                        "anyOf, or make them exclusive by type, enum/const, range or a required "
                        "property with different values)"
                    )

    def disjoint(self, x: Node, y: Node, depth: int) -> bool:
        """Whether no value satisfies both plain nodes (False where it cannot tell)."""
        if depth > 8:
            return False
        if x.literals is not None or y.literals is not None:
            lits, other = (x, y) if x.literals is not None else (y, x)
            return not any(self.matches(v, other) for v in lits.literals)
        if x.types is None or y.types is None:
            return False  # without "type", every type is allowed
        tx, ty = x.types, y.types
        shared = tx & ty
        if ("integer" in tx and "number" in ty) or ("number" in tx and "integer" in ty):
            shared |= {"number"}
        for t in shared:
            if t in ("null", "boolean"):
                return False
            if t in ("number", "integer"):
                lo1, hi1 = tightest(x)
                lo2, hi2 = tightest(y)
                if not (empty_range(lo1, hi2) or empty_range(lo2, hi1)):
                    return False
            elif t == "string":
                if not _apart(x.min_len, x.max_len, y.min_len, y.max_len):
                    return False
            elif t == "array":
                if not _apart(x.min_items, x.max_items, y.min_items, y.max_items):
                    return False
            elif t == "object":
                common = [k for k in x.required if k in y.required]
                if not any(
                    all(
                        self.disjoint(a, b, depth + 1)
                        for a in self.flatten(x.prop(k))
                        for b in self.flatten(y.prop(k))
                    )
                    for k in common
                ):
                    return False
        return True


def _apart(min1: int, max1, min2: int, max2) -> bool:
    """Whether two count ranges [min, max] (max None: open) have no count in common."""
    return max1 is not None and max1 < min2 or max2 is not None and max2 < min1
