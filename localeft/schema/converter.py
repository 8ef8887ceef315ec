"""The converter: schema_to_gbnf, and the walk that gives each schema location one rule
(so that $ref can recurse) whose body is the alternatives of its plain nodes, each written
by the module for its types.

Data flows one way: audit (Document) -> resolve (Resolver: Nodes, flattened) -> this walk ->
numbers, strings, arrays, objects -> gbnf (Rules, written as text). Arrays and objects get
this walk's compile as a function, to compile their items and property values.
"""

from __future__ import annotations

from . import fixed
from .arrays import array_grammar
from .audit import Document
from .gbnf import NONE, Rules, alt, lit
from .limits import MAX_GRAMMAR_CHARS, MAX_REF_DEPTH, Refuse, at
from .node import FALSE, TRUE, Node
from .numbers import any_number, number_grammar
from .objects import object_grammar
from .resolve import Resolver
from .strings import string_grammar
from .values import canon, dumps
from ..errors import InvalidParameterError


def schema_to_gbnf(schema) -> str:
    """GBNF text for a JSON schema (a dict); InvalidParameterError, one line, if some keyword
    cannot be enforced or nothing satisfies the schema."""
    try:
        return _Converter(Document(schema)).grammar()
    except Refuse as e:
        raise InvalidParameterError(f"cannot use this JSON schema: {e}") from None
    except RecursionError:  # belt and braces: the limits should come first
        raise InvalidParameterError("cannot use this JSON schema: it nests too deeply") from None


class _Converter:
    """One conversion: the resolved document, the rules written so far, one rule per schema
    location (memo), and the number automata shared by equal limits."""

    def __init__(self, document: Document):
        self.resolver = Resolver(document)
        self.rules = Rules({**fixed.RULES, "number": any_number}, fixed.DEPS)
        self.memo: dict = {}  # location key -> rule name
        self.numbers: dict = {}  # number automata of this grammar, by their limits
        self.depth = 0

    def grammar(self) -> str:
        text = self.rules.text(self.compile(("loc", "")))
        if text is None:
            reasons = self.rules.reasons
            why = f" ({reasons[0]})" if reasons else ""
            raise Refuse(f"no JSON value satisfies it{why}")
        if len(text) > MAX_GRAMMAR_CHARS:
            raise Refuse(f"its grammar would be too large ({len(text):,} characters)")
        return text

    def compile(self, sub):
        """A grammar expression for a schema location (one rule per location, so that $ref
        can recurse)."""
        if sub == TRUE:
            return self.rules.use("value")
        if sub == FALSE:
            return NONE
        key = sub[1] if sub[0] == "loc" else sub
        if key in self.memo:
            return ("ref", self.memo[key])
        name = self.rules.new("s")
        self.memo[key] = name
        self.depth += 1
        try:
            if self.depth > MAX_REF_DEPTH:
                raise Refuse(
                    f"{at(key if isinstance(key, str) else '')}: the schema nests "
                    f"deeper than {MAX_REF_DEPTH} levels"
                )
            if sub[0] == "loc":
                node = self.resolver.node(key)
                if node.blank() and not node.groups and len(node.parts) == 1:
                    # a bare $ref: the target's rule (shared, may recurse)
                    self.rules.define(name, self.compile(node.parts[0]))
                    return ("ref", name)
            alternatives = self.resolver.flatten(sub)
            self.rules.define(name, alt(*(self.plain(n) for n in alternatives)))
        finally:
            self.depth -= 1
        return ("ref", name)

    def plain(self, n: Node):
        """The grammar of one node without allOf/anyOf/$ref."""
        rules = self.rules
        if n.blank():
            return rules.use("value")
        if n.literals is not None:
            vals: dict = {}
            for v in self.resolver.allowed(n):
                vals.setdefault(canon(v), v)
            if not vals:
                rules.reasons.append(
                    f'no value of "enum"/"const" {at(n.path)} satisfies the other keywords'
                )
            return alt(*(lit(dumps(v)) for v in vals.values()))
        types = n.effective_types()
        out = []
        if "object" in types:
            out.append(object_grammar(rules, n, self.compile))
        if "array" in types:
            out.append(array_grammar(rules, n, self.compile, self.resolver))
        if "string" in types:
            out.append(string_grammar(rules, n))
        if "number" in types or "integer" in types:
            out.append(number_grammar(rules, n, "number" not in types, self.numbers))
        if "boolean" in types:
            out.append(rules.use("boolean"))
        if "null" in types:
            out.append(rules.use("null"))
        result = alt(*out)
        if result == NONE:
            rules.reasons.append(f"the keywords {at(n.path)} exclude each other")
        return result
