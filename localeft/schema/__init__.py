"""JSON schema -> GBNF, enforcing every keyword it accepts and refusing the rest.

llama-cpp-python's converter ignores many keywords silently (numeric limits, multipleOf,
uniqueItems, minItems on untyped arrays, required names without properties, siblings of
anyOf, ...), so a schema could be accepted and its outputs still fail validation. This
package writes the grammar itself, in three steps:

1. audit (audit.py): every keyword of every schema object reached (properties, items,
   prefixItems, additionalProperties, anyOf/oneOf/allOf, $ref into $defs/definitions) is
   either enforced by the grammar, a harmless annotation (title, description, ...), or
   refused with a one-line message naming the keyword and its JSON pointer. Keywords that
   contradict each other in one schema object (minimum > maximum, minLength > maxLength, an
   empty enum, ...) are refused too (resolve.py).
2. resolution (resolve.py, node.py): allOf and $ref with sibling keywords are merged into one
   set of constraints; anyOf (and oneOf whose alternatives provably exclude each other)
   become alternatives of the grammar.
3. the grammar (converter.py, then numbers.py, strings.py, arrays.py, objects.py; gbnf.py
   writes it): numbers come from a finite automaton over their decimal digits (ranges,
   exclusive bounds and multipleOf are exact, the automaton is minimised and written as one
   rule per state), strings from counted character rules or a translated regular expression
   (pattern.py), arrays and objects from chains of rules (one per position), so that what
   the grammar accepts always validates.

Outputs are a subset of what the schema allows, chosen so that what is generated is easy to
read back: no exponents; a number has at most 15 significant digits (so reading it as a binary
float keeps every comparison with the schema's bounds exact); objects keep the declared
property order and get no extra properties unless additionalProperties asks for them.
"""

from .converter import schema_to_gbnf

__all__ = ["schema_to_gbnf"]
