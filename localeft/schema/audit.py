"""The keyword audit: the schema document checked as plain JSON within the limits, and each
schema object read into a Node, where every keyword is either enforced by the grammar, a
harmless annotation (title, description, ...), or refused with a one-line message naming the
keyword and its JSON pointer. $ref is resolved here (local JSON pointers only).

llama-cpp-python's converter ignored many keywords silently (numeric limits, multipleOf,
uniqueItems, ...), so a schema could be accepted and its outputs still fail validation: here
nothing is accepted that the later steps do not enforce.
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import unquote

from .fixed import FORMATS
from .limits import MAX_NESTING, MAX_VALUES, Refuse, at
from .node import FALSE, TRUE, TYPES, Node
from .pattern import Regex
from .values import canon, is_num, show

ANNOTATIONS = (
    "title",
    "description",
    "examples",
    "default",
    "$schema",
    "$id",
    "$comment",
    "$anchor",
    "deprecated",
    "readOnly",
    "writeOnly",
    "discriminator",
    "$defs",
    "definitions",
)
ENFORCED = (
    "type",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "properties",
    "required",
    "additionalProperties",
    "minProperties",
    "maxProperties",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
)
_KINDS = {
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "array": ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"),
    "object": ("properties", "required", "additionalProperties", "minProperties", "maxProperties"),
}
_KIND_OF = {kw: kind for kind, kws in _KINDS.items() for kw in kws}
_SUPPORTED = ", ".join(ENFORCED) + "; annotations: " + ", ".join(ANNOTATIONS[:-2]) + ", x-*"


def _esc(key: str) -> str:
    """A key as a JSON pointer token."""
    return key.replace("~", "~0").replace("/", "~1")


def plain_json(doc):
    """Check (without recursion) that `doc` is JSON no deeper than MAX_NESTING, then return a
    plain copy (lists for tuples)."""
    stack = [(doc, "", 1)]
    seen = 0
    while stack:
        value, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:  # a Python dict can share parts: 2**60 paths from 60 levels
            raise Refuse(f"it has over {MAX_VALUES:,} values")
        if depth > MAX_NESTING:
            where = path if len(path) <= 60 else path[:60] + "..."
            raise Refuse(f"it nests deeper than {MAX_NESTING} levels (at {where})")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise Refuse(f"a key {at(path)} is not a string: {k!r}")
                stack.append((v, f"{path}/{_esc(k)}", depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}/{i}", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise Refuse(f"{value} {at(path)} is not a JSON number")
        elif not (value is None or isinstance(value, (bool, int, str))):
            raise Refuse(f"{at(path)}: {type(value).__name__} is not JSON")
    return json.loads(json.dumps(doc))


class Document:
    """A schema document (a dict, checked by plain_json) whose schema objects are read on
    demand, by JSON pointer: those reached through subschema keywords and $ref."""

    def __init__(self, schema):
        self.doc = plain_json(schema)
        if not isinstance(self.doc, dict):
            raise Refuse("a JSON schema must be an object")
        self.has_refs = '"$ref"' in json.dumps(self.doc)
        self.values = {"": self.doc}  # JSON pointer -> schema object, for those reached

    def read(self, path: str) -> Node:
        """The Node of the schema object at `path` (reached before), every keyword audited."""
        schema = self.values[path]
        n = Node(path)
        kinds = set()
        where = at(path)

        def sub(value, p):
            if value is True:
                return TRUE
            if value is False:
                return FALSE
            if not isinstance(value, dict):
                raise Refuse(f"{at(p)}: a schema must be an object or a boolean")
            self.values[p] = value
            return ("loc", p)

        def each(values, p):
            return tuple(sub(v, f"{p}/{i}") for i, v in enumerate(values))

        def count(key, value):
            if not is_num(value) or value < 0 or value != int(value):
                raise Refuse(f'"{key}" {where} must be a nonnegative integer')
            return int(value)

        def schemas(key, value):
            if not isinstance(value, list) or not value:
                raise Refuse(f'"{key}" {where} must be a nonempty array of schemas')
            return each(value, f"{path}/{key}")

        draft4 = {}
        for key, value in schema.items():
            kp = f"{path}/{_esc(key)}"
            if key in ("$id", "id") and path and self.has_refs:
                raise Refuse(f'"{key}" {where} sets a new base for "$ref", which is not supported')
            if key in ANNOTATIONS or key.startswith("x-"):
                if key in ("$defs", "definitions") and not isinstance(value, dict):
                    raise Refuse(f'"{key}" {where} must be an object')
                continue
            if key not in ENFORCED:
                raise Refuse(f'"{key}" {where} is not supported (supported: {_SUPPORTED})')
            if key in _KIND_OF:
                kinds.add(_KIND_OF[key])
            if key == "type":
                names = [value] if isinstance(value, str) else value
                if not isinstance(names, list) or not names or any(t not in TYPES for t in names):
                    raise Refuse(f'"type" {where} must be one of {", ".join(TYPES)} or a list')
                n.types = frozenset(names)
            elif key in ("enum", "const"):
                vals = value if key == "enum" else [value]
                if not isinstance(vals, list) or not vals:
                    raise Refuse(f'"enum" {where} must be a nonempty array')
                if n.literals is not None:
                    keys = {canon(v) for v in vals}
                    vals = [v for v in n.literals if canon(v) in keys]
                    if not vals:
                        raise Refuse(f'"enum" and "const" {where} have no value in common')
                n.literals = tuple(vals)
            elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if key.startswith("exclusive") and isinstance(value, bool):
                    draft4[key] = value
                    continue
                if not is_num(value):
                    raise Refuse(f'"{key}" {where} must be a number')
                entry = ((value, key.startswith("exclusive"), key, path),)
                if key in ("minimum", "exclusiveMinimum"):
                    n.lows += entry
                else:
                    n.highs += entry
            elif key == "multipleOf":
                if not is_num(value) or value <= 0:
                    raise Refuse(f'"multipleOf" {where} must be a number greater than 0')
                n.mults += (value,)
            elif key == "minLength":
                n.min_len = count(key, value)
            elif key == "maxLength":
                n.max_len = count(key, value)
            elif key == "pattern":
                if not isinstance(value, str):
                    raise Refuse(f'"pattern" {where} must be a string')
                try:
                    re.compile(value)
                except re.error as e:
                    raise Refuse(f'"pattern" {where} is not a regular expression: {e}') from None
                n.patterns = ((value, path, Regex(value, where).parse()),)
            elif key == "format":
                if value not in FORMATS:
                    raise Refuse(
                        f'"format": {show(value)} {where} is not supported '
                        f"(supported formats: {', '.join(FORMATS)})"
                    )
                n.formats = (value,)
            elif key == "items":
                if isinstance(value, list):  # draft 4-2019: a tuple
                    if "prefixItems" in schema:
                        raise Refuse(f'"items" {where} is an array next to "prefixItems"')
                    n.prefix = each(value, kp)
                    extra = schema.get("additionalItems")
                    n.items = None if extra is None else sub(extra, f"{path}/additionalItems")
                else:
                    n.items = sub(value, kp)
            elif key == "prefixItems":
                if not isinstance(value, list):
                    raise Refuse(f'"prefixItems" {where} must be an array of schemas')
                n.prefix = each(value, kp)
            elif key == "additionalItems":
                if not isinstance(schema.get("items"), list):
                    continue  # ignored by every draft unless "items" is an array
            elif key == "minItems":
                n.min_items = count(key, value)
            elif key == "maxItems":
                n.max_items = count(key, value)
            elif key == "uniqueItems":
                if not isinstance(value, bool):
                    raise Refuse(f'"uniqueItems" {where} must be true or false')
                n.unique = value
            elif key == "properties":
                if not isinstance(value, dict):
                    raise Refuse(f'"properties" {where} must be an object')
                n.props = {k: sub(v, f"{kp}/{_esc(k)}") for k, v in value.items()}
                n.has_props = True
            elif key == "required":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise Refuse(f'"required" {where} must be an array of strings')
                n.required = tuple(dict.fromkeys(value))
            elif key == "additionalProperties":
                n.additional = sub(value, kp)
            elif key == "minProperties":
                n.min_props = count(key, value)
            elif key == "maxProperties":
                n.max_props = count(key, value)
            elif key in ("anyOf", "oneOf"):
                n.groups += ((key, schemas(key, value), path),)
            elif key == "allOf":
                n.parts += schemas(key, value)
            elif key == "$ref":
                n.parts += (self.ref(value, where),)
        for key, flag in draft4.items():  # draft 4: a boolean that makes the bound strict
            if flag:
                attr = "lows" if key == "exclusiveMinimum" else "highs"
                setattr(n, attr, tuple((v, True, key, p) for v, _, _, p in getattr(n, attr)))
        n.kinds = frozenset(kinds)
        return n

    def ref(self, ref, where: str):
        """The subschema a local $ref points to (its target becomes readable)."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise Refuse(f'"$ref" {where}: only local references ("#/...") are supported')
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            raise Refuse(f'"$ref" {where}: only JSON pointers ("#/...") are supported')
        target = self.doc
        path = ""
        for token in fragment.split("/")[1:]:
            key = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                raise Refuse(f'"$ref" {where}: {ref} does not exist')
            path += "/" + _esc(key)
        if isinstance(target, bool):
            return TRUE if target else FALSE
        if not isinstance(target, dict):
            raise Refuse(f'"$ref" {where}: {ref} is not a schema')
        self.values.setdefault(path, target)
        return ("loc", path)
