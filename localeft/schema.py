"""JSON schema -> GBNF, enforcing every keyword it accepts and refusing the rest.

llama-cpp-python's converter ignores many keywords silently (numeric limits, multipleOf,
uniqueItems, minItems on untyped arrays, required names without properties, siblings of
anyOf, ...), so a schema could be accepted and its outputs still fail validation. This module
writes the grammar itself, in three steps:

1. audit: every keyword of every schema object reached (properties, items, prefixItems,
   additionalProperties, anyOf/oneOf/allOf, $ref into $defs/definitions) is either enforced by
   the grammar, a harmless annotation (title, description, ...), or refused with a one-line
   message naming the keyword and its JSON pointer. Keywords that contradict each other in one
   schema object (minimum > maximum, minLength > maxLength, an empty enum, ...) are refused too.
2. allOf and $ref with sibling keywords are merged into one set of constraints; anyOf (and oneOf
   whose alternatives provably exclude each other) become alternatives of the grammar.
3. the grammar: numbers come from a finite automaton over their decimal digits (ranges,
   exclusive bounds and multipleOf are exact, the automaton is minimised and written as one
   rule per state), strings from counted character rules or a translated regular expression,
   arrays and objects from chains of rules (one per position), so that what the grammar accepts
   always validates.

Outputs are a subset of what the schema allows, chosen so that what is generated is easy to
read back: no exponents; a number has at most 15 significant digits (so reading it as a binary
float keeps every comparison with the schema's bounds exact); objects keep the declared
property order and get no extra properties unless additionalProperties asks for them.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from urllib.parse import unquote

from .errors import InvalidParameterError

MAX_NESTING = 128  # JSON levels of the schema document
MAX_VALUES = 1_000_000  # values in the schema document
MAX_REF_DEPTH = 100  # schema levels while compiling (through $ref too)
MAX_REPEAT = 4096  # maxLength, maxItems, regex repetitions: one rule per step
MAX_STATES = 60_000  # states of one number automaton (about a second to build)
MAX_ALTERNATIVES = 256  # alternatives after distributing anyOf over allOf
MAX_UNIQUE_VALUES = 64  # uniqueItems: items with at most this many possible values
MAX_GRAMMAR_CHARS = 2_000_000
DIGITS = 15  # significant digits of a generated number (exact through a binary double)

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
FORMATS = ("date", "time", "date-time", "uuid")
TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
_KINDS = {
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "array": ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"),
    "object": ("properties", "required", "additionalProperties", "minProperties", "maxProperties"),
}
_KIND_OF = {kw: kind for kind, kws in _KINDS.items() for kw in kws}
_SUPPORTED = ", ".join(ENFORCED) + "; annotations: " + ", ".join(ANNOTATIONS[:-2]) + ", x-*"


class _Refuse(Exception):
    pass


def schema_to_gbnf(schema) -> str:
    """GBNF text for a JSON schema (a dict); InvalidParameterError, one line, if some keyword
    cannot be enforced or nothing satisfies the schema."""
    try:
        doc = _plain_json(schema)
        if not isinstance(doc, dict):
            raise _Refuse("a JSON schema must be an object")
        return _Compiler(doc).grammar()
    except _Refuse as e:
        raise InvalidParameterError(f"cannot use this JSON schema: {e}") from None
    except RecursionError:  # belt and braces: the limits above should come first
        raise InvalidParameterError("cannot use this JSON schema: it nests too deeply") from None


# --- the document ---------------------------------------------------------------------------------
def _esc(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _at(path: str) -> str:
    return f"at {path}" if path else "at the top level"


def _plain_json(doc):
    """Check (without recursion) that `doc` is JSON no deeper than MAX_NESTING, then return a
    plain copy (lists for tuples)."""
    stack = [(doc, "", 1)]
    seen = 0
    while stack:
        value, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:  # a Python dict can share parts: 2**60 paths from 60 levels
            raise _Refuse(f"it has over {MAX_VALUES:,} values")
        if depth > MAX_NESTING:
            where = path if len(path) <= 60 else path[:60] + "..."
            raise _Refuse(f"it nests deeper than {MAX_NESTING} levels (at {where})")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _Refuse(f"a key {_at(path)} is not a string: {k!r}")
                stack.append((v, f"{path}/{_esc(k)}", depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}/{i}", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _Refuse(f"{value} {_at(path)} is not a JSON number")
        elif not (value is None or isinstance(value, (bool, int, str))):
            raise _Refuse(f"{_at(path)}: {type(value).__name__} is not JSON")
    return json.loads(json.dumps(doc))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dec(v) -> Fraction:
    """The decimal a JSON number means (a float by its shortest repr: 0.1 is 1/10)."""
    return Fraction(Decimal(repr(v))) if isinstance(v, float) else Fraction(v)


def _canon(v):
    """Hashable form with JSON equality (1 == 1.0, True != 1)."""
    if v is None:
        return ("z",)
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", Fraction(v))
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, list):
        return ("a", tuple(_canon(x) for x in v))
    return ("o", frozenset((k, _canon(x)) for k, x in v.items()))


def _dumps(v) -> str:
    """JSON text, non-ASCII characters raw, unless a lone surrogate needs its \\u escape."""
    text = json.dumps(v, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(v)
    return text


def _show(v) -> str:
    text = _dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


# --- grammar expressions --------------------------------------------------------------------------
# ("lit", text) | ("cls", gbnf class) | ("ref", rule) | ("seq", items) | ("alt", items)
# | ("opt", e) | ("star", e) | NONE (matches nothing); EPS = ("seq", ()) matches "".
NONE = ("none",)
EPS = ("seq", ())


def lit(text: str):
    return ("lit", text) if text else EPS


def seq(*items):
    out: list = []
    for x in items:
        if x == NONE:
            return NONE
        parts = x[1] if x[0] == "seq" else (x,)
        for p in parts:
            if out and p[0] == "lit" and out[-1][0] == "lit":
                out[-1] = ("lit", out[-1][1] + p[1])
            else:
                out.append(p)
    return out[0] if len(out) == 1 else ("seq", tuple(out))


def alt(*items):
    out: dict = {}  # ordered set
    empty = False
    for x in items:
        parts = x[1] if x[0] == "alt" else (x,)
        for p in parts:
            if p == NONE:
                continue
            if p == EPS:
                empty = True
            elif p[0] == "opt":
                empty = True
                out[p[1]] = None
            else:
                out[p] = None
    out = list(out)
    if not out:
        return EPS if empty else NONE
    body = out[0] if len(out) == 1 else ("alt", tuple(out))
    return opt(body) if empty else body


def opt(x):
    if x in (NONE, EPS) or x[0] in ("opt", "star"):
        return EPS if x == NONE else x
    return ("opt", x)


def star(x):
    if x in (NONE, EPS):
        return EPS
    return ("star", x[1] if x[0] == "opt" else x)


def _lit_text(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _cp(c: int) -> str:
    if c < 0x100:
        return f"\\x{c:02X}"
    if c < 0x10000:
        return f"\\u{c:04X}"
    return f"\\U{c:08X}"


def _cls(ranges) -> str:
    """A GBNF character class from code point ranges [(lo, hi)], every character escaped."""
    body = "".join(_cp(a) if a == b else f"{_cp(a)}-{_cp(b)}" for a, b in ranges)
    return "[" + body + "]"


def _emit(e, top=False) -> str:
    kind = e[0]
    if kind == "lit":
        return _lit_text(e[1])
    if kind in ("cls", "ref", "raw"):
        return e[1]
    if kind == "seq":
        if not e[1]:
            return '""'
        return " ".join(_emit(x) for x in e[1])
    if kind == "alt":
        text = " | ".join(_emit(x, top=True) for x in e[1])
        return text if top else f"( {text} )"
    if kind in ("opt", "star"):
        text = _emit(e[1])
        if e[1][0] == "seq":
            text = f"( {text} )"
        return text + ("?" if kind == "opt" else "*")
    raise AssertionError(e)


def _refs(e, out: set) -> set:
    if e[0] == "ref":
        out.add(e[1])
    elif e[0] in ("seq", "alt"):
        for x in e[1]:
            _refs(x, out)
    elif e[0] in ("opt", "star"):
        _refs(e[1], out)
    return out


def _productive(e, ok: set) -> bool:  # fixed ("raw") rules name only productive rules
    kind = e[0]
    if kind == "none":
        return False
    if kind == "ref":
        return e[1] in ok
    if kind == "seq":
        return all(_productive(x, ok) for x in e[1])
    if kind == "alt":
        return any(_productive(x, ok) for x in e[1])
    return True


def _prune(e, ok: set):
    """`e` with references to rules that match nothing replaced by NONE (and simplified)."""
    kind = e[0]
    if kind == "ref":
        return e if e[1] in ok else NONE
    if kind == "seq":
        return seq(*(_prune(x, ok) for x in e[1])) if e[1] else e
    if kind == "alt":
        return alt(*(_prune(x, ok) for x in e[1]))
    if kind == "opt":
        return opt(_prune(e[1], ok))
    if kind == "star":
        return star(_prune(e[1], ok))
    return e


# --- fixed rules ------------------------------------------------------------------------------
_CONTROL = (0x00, 0x1F)
# An unescaped string character, as positive ranges: with a negated class llama.cpp's engine
# would also take bytes that decode past U+10FFFF or to a surrogate (not UTF-8).
_RAW = "[\\x20-\\x21\\x23-\\x5B\\x5D-\\uD7FF\\uE000-\\U0010FFFF]"
_HEX = "[0-9a-fA-F]"
# One escape is one character: \u escapes of UTF-16 surrogates (pairs would be one character
# for a length count, lone ones are not text) are left out.
_ESCAPE = (
    '"\\\\" ( ["\\\\/bfnrt] | "u" ( [0-9a-cA-CefEF] '
    + " ".join([_HEX] * 3)
    + f" | [dD] [0-7] {_HEX} {_HEX} ) )"
)
_LEAP2 = '( "0" [48] | [2468] [048] | [13579] [26] )'  # two digits, a nonzero multiple of 4
_FIXED = {
    "ws": '" "?',
    "char": f"{_RAW} | {_ESCAPE}",
    "string": '"\\"" char* "\\""',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"',
    "array": '"[" ws ( value ws ( "," ws value ws )* )? "]"',
    "boolean": '"true" | "false"',
    "null": '"null"',
    # years 0001-9999 (Python's date has no year 0), days that exist, Feb 29 in leap years
    "fmt-year": '[1-9] [0-9] [0-9] [0-9] | "0" [1-9] [0-9] [0-9] | "00" [1-9] [0-9] | "000" [1-9]',
    "fmt-day28": '"0" [1-9] | "1" [0-9] | "2" [0-8]',
    "fmt-date": 'fmt-year "-" ( ( "0" [13578] | "1" [02] ) "-" ( fmt-day28 | "29" | "3" [01] )'
    ' | ( "0" [469] | "11" ) "-" ( fmt-day28 | "29" | "30" ) | "02-" fmt-day28 )'
    f' | ( [0-9] [0-9] {_LEAP2} | {_LEAP2} "00" ) "-02-29"',
    "fmt-time": '( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] '
    '( "." [0-9] [0-9] [0-9] )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
    "fmt-date-time": 'fmt-date "T" fmt-time',
    "fmt-uuid": " ".join([_HEX] * 8)
    + ' "-" '
    + ' "-" '.join(" ".join([_HEX] * n) for n in (4, 4, 4))
    + ' "-" '
    + " ".join([_HEX] * 12),
}
_FIXED_DEPS = {
    "string": ("char",),
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("ws", "string", "value"),
    "array": ("ws", "value"),
    "fmt-date": ("fmt-year", "fmt-day28"),
    "fmt-date-time": ("fmt-date", "fmt-time"),
}
_FORMAT_LENGTHS = {"date": (10, 10), "time": (9, 18), "date-time": (20, 29), "uuid": (36, 36)}
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_TIME_RE = re.compile(
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])\Z"
)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")


def _format_ok(fmt: str, s: str) -> bool:
    """What the format rules generate (used to filter enum values)."""
    import datetime

    def date_ok(d):
        try:
            return bool(_DATE_RE.match(d)) and datetime.date.fromisoformat(d) is not None
        except ValueError:
            return False

    if fmt == "date":
        return date_ok(s)
    if fmt == "time":
        return bool(_TIME_RE.match(s))
    if fmt == "date-time":
        return len(s) > 11 and s[10] == "T" and date_ok(s[:10]) and bool(_TIME_RE.match(s[11:]))
    return bool(_UUID_RE.match(s))


# --- numbers: a finite automaton over the decimal digits ------------------------------------------
def _digits(q: Fraction) -> tuple[str, str]:
    """A nonnegative decimal fraction as (integer digits, fraction digits, no trailing zeros)."""
    s = 0
    while (q * 10**s).denominator != 1:
        s += 1
    n = str(int(q * 10**s)).rjust(s + 1, "0")
    whole, frac = n[: len(n) - s], n[len(n) - s :]
    return whole, frac.rstrip("0")


class _Compare:
    """Where a nonnegative number read digit by digit stands against a bound B: while reading
    the integer part ("I", lex) or "G" (more digits than B); then "L", "G", or j (equal so far,
    j fraction digits of B matched)."""

    def __init__(self, bound: Fraction):
        self.whole, self.frac = _digits(bound)

    def int_digit(self, st, n_before: int, d: str):
        if st == "G" or n_before >= len(self.whole):
            return "G"
        lex = st[1]
        if lex == 0:
            b = self.whole[n_before]
            lex = (d > b) - (d < b)
        return ("I", lex)

    def end_int(self, st, n: int):
        if st == "G":
            return "G"
        if n < len(self.whole):
            return "L"
        return {-1: "L", 1: "G", 0: 0}[st[1]]

    def frac_digit(self, st, d: str):
        if st in ("L", "G"):
            return st
        b = self.frac[st] if st < len(self.frac) else "0"
        if d != b:
            return "G" if d > b else "L"
        return min(st + 1, len(self.frac))

    def final(self, st) -> int:
        if st in ("L", "G"):
            return -1 if st == "L" else 1
        return -1 if st < len(self.frac) else 0


class _Magnitude:
    """Canonical nonnegative JSON numbers (no leading zeros, no exponent) x with lo <= x <= hi
    (each (Fraction, strict) or None) and (x * 10**scale) % modulus == 0, with at most
    `frac` fraction digits and `total` digits in all (None: any number of integer digits)."""

    def __init__(self, lo, hi, modulus, scale, frac, total):
        self.lo = None if lo is None else (_Compare(lo[0]), lo[1])
        self.hi = None if hi is None else (_Compare(hi[0]), hi[1])
        self.modulus, self.scale = modulus, scale
        self.frac, self.total = frac, total
        # past the longest bound only the count matters for `total`: without one, it saturates
        longest = max((len(b[0].whole) for b in (self.lo, self.hi) if b), default=0)
        self.saturate = longest + 1 if total is None else None
        self.start = ("S", 0, 0, ("I", 0), ("I", 0), 0)

    def step(self, state, ch):
        phase, n, f, a, b, r = state
        lo, hi = self.lo, self.hi
        if ch == ".":
            if phase not in ("Z", "I") or self.frac == 0:
                return None
            a = lo[0].end_int(a, n) if lo else a
            b = hi[0].end_int(b, n) if hi else b
            phase = "D"
        else:
            d = int(ch)
            if phase == "S":
                phase = "Z" if d == 0 else "I"
            elif phase == "I":
                pass
            elif phase in ("D", "F"):
                phase = "F"
            else:  # after a leading "0" only "." may follow
                return None
            if phase in ("Z", "I"):
                if self.total is not None and n + 1 > self.total:
                    return None
                a = lo[0].int_digit(a, n, ch) if lo else a
                b = hi[0].int_digit(b, n, ch) if hi else b
                n = n + 1 if self.saturate is None else min(n + 1, self.saturate)
            else:
                if f + 1 > self.frac or self.total is not None and n + f + 1 > self.total:
                    return None
                a = lo[0].frac_digit(a, ch) if lo else a
                b = hi[0].frac_digit(b, ch) if hi else b
                f += 1
            r = (r * 10 + d) % self.modulus
        if lo and a == "L" or hi and b == "G":
            return None
        return (phase, n, f, a, b, r)

    def accept(self, state) -> bool:
        phase, n, f, a, b, r = state
        if phase not in ("Z", "I", "F"):
            return False
        if (r * 10 ** (self.scale - f)) % self.modulus:
            return False
        for bound, st, sign in ((self.lo, a, 1), (self.hi, b, -1)):
            if bound:
                cmp, strict = bound
                if phase != "F":
                    st = cmp.end_int(st, n)
                c = cmp.final(st) * sign
                if c < 0 or c == 0 and strict:
                    return False
        return True


def _dfa(start, step, accept, alphabet, what: str, budget: int = MAX_STATES):
    """Reachable, co-reachable, minimised DFA: (transitions [{ch: state}], accepting [bool]),
    state 0 the start; None if it accepts nothing."""
    index = {start: 0}
    states = [start]
    trans: list[dict] = []
    i = 0
    while i < len(states):
        t = {}
        for ch in alphabet:
            nxt = step(states[i], ch)
            if nxt is None:
                continue
            if nxt not in index:
                if len(states) >= budget:
                    raise _Refuse(f"{what} needs too large a grammar (over {budget:,} states)")
                index[nxt] = len(states)
                states.append(nxt)
            t[ch] = index[nxt]
        trans.append(t)
        i += 1
    acc = [accept(s) for s in states]
    back: list[list[int]] = [[] for _ in states]
    for s, t in enumerate(trans):
        for d in t.values():
            back[d].append(s)
    live = {s for s, a in enumerate(acc) if a}
    todo = list(live)
    while todo:
        for p in back[todo.pop()]:
            if p not in live:
                live.add(p)
                todo.append(p)
    if 0 not in live:
        return None
    keep = sorted(live)
    # Moore's partition refinement (a missing or dead transition is class -1)
    part = {s: int(acc[s]) for s in keep}
    n_classes = len(set(part.values()))
    while True:
        sig = {s: (part[s],) + tuple(part.get(trans[s].get(c), -1) for c in alphabet) for s in keep}
        ids: dict = {}
        part = {s: ids.setdefault(sig[s], len(ids)) for s in keep}
        if len(ids) == n_classes:
            break
        n_classes = len(ids)
    rep: dict = {}
    for s in keep:
        rep.setdefault(part[s], s)
    number = {part[0]: 0}  # classes numbered in breadth-first order from the start
    queue = [part[0]]
    out_trans: list[dict] = []
    out_acc: list[bool] = []
    for k in queue:  # grows while iterating
        s = rep[k]
        t = {}
        for c, d in trans[s].items():
            if d in live:
                if part[d] not in number:
                    number[part[d]] = len(number)
                    queue.append(part[d])
                t[c] = number[part[d]]
        out_trans.append(t)
        out_acc.append(acc[s])
    return out_trans, out_acc


def _digit_groups(chars) -> list:
    """Characters of "-0123456789." as grammar pieces: one class for the digits, literals."""
    ds = sorted(int(c) for c in chars if c.isdigit())
    out, runs, i = [], [], 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + 1:
            j += 1
        runs.append(f"{ds[i]}" if i == j else f"{ds[i]}-{ds[j]}")
        i = j + 1
    if runs:
        out.append(("cls", "[" + "".join(runs) + "]"))
    return out + [lit(c) for c in sorted(chars) if not c.isdigit()]


# --- regular expressions (pattern) ----------------------------------------------------------------
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_DIGIT = [(0x30, 0x39)]
_SPACE = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]  # \v (0x0B) has no short JSON escape
_ASCII = [(0x00, 0x7F)]
_ALL = [(0x00, 0xD7FF), (0xE000, 0x10FFFF)]
_ESCAPES = {"t": 9, "n": 10, "r": 13, "f": 12, "v": 11}


def _norm(ranges):
    out: list = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _minus(ranges, cut):
    out = []
    for a, b in _norm(ranges):
        for c, d in _norm(cut):
            if d < a or c > b:
                continue
            if c > a:
                out.append((a, c - 1))
            a = max(a, d + 1)
            if a > b:
                break
        if a <= b:
            out.append((a, b))
    return _norm(out)


class _Regex:
    """The part of Python's regular expressions (jsonschema matches `pattern` with re.search)
    that has an exact grammar: literals, classes, \\d \\w \\s and their negations, ".", groups,
    alternation, greedy or lazy quantifiers, "^" and "$" at the ends of a top-level branch.
    Character sets generate a subset of what Python matches: \\d \\w \\s generate ASCII only,
    negated sets generate neither control characters nor (after \\D \\W \\S) non-ASCII ones."""

    def __init__(self, pattern: str, where: str):
        self.p, self.i, self.where = pattern, 0, where

    def fail(self, what: str):
        raise _Refuse(f'"pattern" {self.where}: {what} is not supported')

    def parse(self):
        node = self.alternation()
        if self.i != len(self.p):
            self.fail(f"{self.p[self.i]!r} at {self.i}")
        return node

    def alternation(self):
        branches = [self.sequence()]
        while self.i < len(self.p) and self.p[self.i] == "|":
            self.i += 1
            branches.append(self.sequence())
        return ("alt", branches)

    def sequence(self):
        items = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        return ("cat", items)

    def quantified(self, atom):
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            if c in "*+?":
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                self.i += 1
            elif c == "{":
                m = re.compile(r"\{(\d*)(,?)(\d*)\}").match(p, self.i)
                if not m or (not m.group(1) and not m.group(2)):
                    break  # Python reads it as a literal "{"
                lo = int(m.group(1) or 0)
                hi = lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None)
                self.i = m.end()
            else:
                break
            if atom[0] in ("bol", "eol"):
                self.fail("a quantified anchor")
            if max(lo, hi or 0) > MAX_REPEAT:
                self.fail(f"a repetition over {MAX_REPEAT}")
            if self.i < len(p) and p[self.i] == "?":
                self.i += 1  # lazy: the same strings
            elif self.i < len(p) and p[self.i] == "+":
                self.fail("a possessive quantifier")
            atom = ("rep", atom, lo, hi)
        return atom

    def atom(self):
        p = self.p
        c = p[self.i]
        self.i += 1
        if c == "(":
            if p.startswith("?:", self.i):
                self.i += 2
            elif p.startswith("?P<", self.i):
                self.i = p.index(">", self.i) + 1
            elif p.startswith("?", self.i):
                self.fail(f"the group ({p[self.i : self.i + 3]}")
            node = self.alternation()
            if self.i >= len(p) or p[self.i] != ")":
                self.fail("an unbalanced group")
            self.i += 1
            return node
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == ".":
            return ("set", _minus(_ALL, [(0x0A, 0x0A)]), True)
        if c == "[":
            return self.klass()
        if c == "\\":
            return self.escape(in_class=False)
        if c in "*+?":
            self.fail(f"{c!r} at {self.i - 1}")
        return ("set", [(ord(c), ord(c))], False)

    def escape(self, in_class: bool):
        p = self.p
        if self.i >= len(p):
            self.fail("a trailing backslash")
        c = p[self.i]
        self.i += 1
        if c in "dws":
            return ("set", {"d": _DIGIT, "w": _WORD, "s": _SPACE}[c], False)
        if c in "DWS":
            base = {"D": _DIGIT, "W": _WORD, "S": _SPACE}[c]
            return ("set", _minus(_ASCII, base + [(0x1C, 0x1F), (0x0B, 0x0B)]), True)
        if c in _ESCAPES:
            return ("set", [(_ESCAPES[c], _ESCAPES[c])], False)
        if c in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[c]
            digits = p[self.i : self.i + n]
            self.i += n
            cp = int(digits, 16)
            return ("set", [(cp, cp)], False)
        if c.isalnum() or c == "_":
            self.fail(f"the escape \\{c}")
        return ("set", [(ord(c), ord(c))], False)

    def klass(self):
        p = self.p
        negate = p.startswith("^", self.i)
        if negate:
            self.i += 1
        ranges: list = []
        shorthand = False
        first = True
        while True:
            if self.i >= len(p):
                self.fail("an unbalanced [")
            c = p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            self.i += 1
            if c == "\\":
                item = self.escape(in_class=True)
                if len(item[1]) != 1 or item[1][0][0] != item[1][0][1]:
                    ranges += item[1]
                    shorthand = True
                    continue
                lo = item[1][0][0]
            elif c == "[" and p.startswith(":", self.i):
                self.fail("a POSIX class")
            else:
                lo = ord(c)
            if p.startswith("-", self.i) and self.i + 1 < len(p) and p[self.i + 1] != "]":
                self.i += 1
                d = p[self.i]
                self.i += 1
                if d == "\\":
                    item = self.escape(in_class=True)
                    if len(item[1]) != 1 or item[1][0][0] != item[1][0][1]:
                        self.fail("a range ending in a class")
                    hi = item[1][0][0]
                else:
                    hi = ord(d)
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        ranges = _norm(ranges)
        if negate:
            universe = _ASCII if shorthand else _ALL
            return ("set", _minus(universe, ranges + [_CONTROL, (0x0B, 0x0B)]), True)
        return ("set", ranges, False)


# --- the compiler ---------------------------------------------------------------------------------
TRUE = ("true",)
FALSE = ("false",)


class Node:
    """The constraints of one schema object (or of several merged): `parts` (allOf, $ref) and
    `groups` (anyOf/oneOf) are resolved by _Compiler.flatten into plain nodes."""

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

    def prop(self, name: str):
        if name in self.props:
            return self.props[name]
        return TRUE if self.additional is None else self.additional

    def position(self, i: int):
        if i < len(self.prefix):
            return self.prefix[i]
        return TRUE if self.items is None else self.items


def _both(a, b):
    if a == TRUE or a == b:
        return b
    if b == TRUE:
        return a
    if FALSE in (a, b):
        return FALSE
    parts = (a[1] if a[0] == "all" else (a,)) + (b[1] if b[0] == "all" else (b,))
    return ("all", tuple(dict.fromkeys(parts)))


def _tighter(bounds, upper: bool, conv):
    """The tightest (value, strict) of ((raw, strict, kw, path)) under conversion `conv`."""
    best = None
    for raw, strict, _, _ in bounds:
        v = conv(raw)
        if best is None or (v < best[0] if upper else v > best[0]) or v == best[0] and strict:
            best = (v, strict)
    return best


def _empty_range(lo, hi) -> bool:
    return (
        lo is not None and hi is not None and (lo[0] > hi[0] or lo[0] == hi[0] and (lo[1] or hi[1]))
    )


def _int_range(lo, hi):
    """Integer bounds (inclusive, None: open) from exact (Fraction, strict) bounds."""
    a = None if lo is None else (math.floor(lo[0]) + 1 if lo[1] else math.ceil(lo[0]))
    b = None if hi is None else (math.ceil(hi[0]) - 1 if hi[1] else math.floor(hi[0]))
    return a, b


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _grid(mults) -> Fraction:
    """The least common multiple of decimal fractions: values that are multiples of each."""
    fr = [_dec(m) for m in mults]
    num = 1
    den = 0
    for f in fr:
        num = _lcm(num, f.numerator)
        den = math.gcd(den, f.denominator)
    return Fraction(num, den)


def _first_multiple(g: Fraction, lo):
    """The least multiple of g satisfying the lower bound lo (None: 0)."""
    if lo is None:
        return None
    k = math.floor(lo[0] / g) if lo[1] else math.ceil(lo[0] / g)
    v = k * g
    if v < lo[0] or v == lo[0] and lo[1]:
        v += g
    return v


class _Compiler:
    def __init__(self, doc: dict):
        self.doc = doc
        self.has_refs = '"$ref"' in json.dumps(doc)
        self.values = {"": doc}
        self.nodes: dict = {}
        self.flat: dict = {}
        self.memo: dict = {}  # location key -> rule name
        self.rules: dict = {}
        self.fixed: set = set()
        self.count = 0
        self.depth = 0
        self.reasons: list[str] = []
        self.numbers: dict = {}

    # -- rules --
    def new_rule(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def use(self, name: str):
        """A reference to one of the fixed rules (added with the rules it names)."""
        todo = [name]
        while todo:
            n = todo.pop()
            if n not in self.fixed:
                self.fixed.add(n)
                if n == "number":  # any number: the automaton without limits
                    self.rules[n] = self.number_expr(None, None, 1, 0, DIGITS, False, shared=False)
                else:
                    self.rules[n] = ("raw", _FIXED[n])
                todo.extend(_FIXED_DEPS.get(n, ()))
        return ("ref", name)

    def grammar(self) -> str:
        self.rules["root"] = self.compile(("loc", ""))
        ok: set = set()
        while True:
            more = {n for n, e in self.rules.items() if n not in ok and _productive(e, ok)}
            if not more:
                break
            ok |= more
        if "root" not in ok:
            why = f" ({self.reasons[0]})" if self.reasons else ""
            raise _Refuse(f"no JSON value satisfies it{why}")
        body = {n: _prune(e, ok) for n, e in self.rules.items() if n in ok}
        seen, todo = {"root"}, ["root"]
        while todo:
            n = todo.pop()
            for r in _refs(body[n], set()) | set(_FIXED_DEPS.get(n, ())):
                if r not in seen:
                    seen.add(r)
                    todo.append(r)
        lines = [f"{n} ::= {_emit(body[n], True)}" for n in ["root"] + sorted(seen - {"root"})]
        text = "\n".join(lines) + "\n"
        if len(text) > MAX_GRAMMAR_CHARS:
            raise _Refuse(f"its grammar would be too large ({len(text):,} characters)")
        return text

    # -- the audit: one schema object at a time --
    def node(self, path: str) -> Node:
        if path in self.nodes:
            return self.nodes[path]
        schema = self.values[path]
        n = Node(path)
        kinds = set()
        where = _at(path)

        def sub(value, p):
            if value is True:
                return TRUE
            if value is False:
                return FALSE
            if not isinstance(value, dict):
                raise _Refuse(f"{_at(p)}: a schema must be an object or a boolean")
            self.values[p] = value
            return ("loc", p)

        def count(key, value):
            if not _is_num(value) or value < 0 or value != int(value):
                raise _Refuse(f'"{key}" {where} must be a nonnegative integer')
            return int(value)

        def schemas(key, value):
            if not isinstance(value, list) or not value:
                raise _Refuse(f'"{key}" {where} must be a nonempty array of schemas')
            return tuple(sub(v, f"{path}/{key}/{i}") for i, v in enumerate(value))

        draft4 = {}
        for key, value in schema.items():
            kp = f"{path}/{_esc(key)}"
            if key in ("$id", "id") and path and self.has_refs:
                raise _Refuse(f'"{key}" {where} sets a new base for "$ref", which is not supported')
            if key in ANNOTATIONS or key.startswith("x-"):
                if key in ("$defs", "definitions") and not isinstance(value, dict):
                    raise _Refuse(f'"{key}" {where} must be an object')
                continue
            if key not in ENFORCED:
                raise _Refuse(f'"{key}" {where} is not supported (supported: {_SUPPORTED})')
            if key in _KIND_OF:
                kinds.add(_KIND_OF[key])
            if key == "type":
                names = [value] if isinstance(value, str) else value
                if not isinstance(names, list) or not names or any(t not in TYPES for t in names):
                    raise _Refuse(f'"type" {where} must be one of {", ".join(TYPES)} or a list')
                n.types = frozenset(names)
            elif key in ("enum", "const"):
                vals = value if key == "enum" else [value]
                if not isinstance(vals, list) or not vals:
                    raise _Refuse(f'"enum" {where} must be a nonempty array')
                if n.literals is not None:
                    keys = {_canon(v) for v in vals}
                    vals = [v for v in n.literals if _canon(v) in keys]
                    if not vals:
                        raise _Refuse(f'"enum" and "const" {where} have no value in common')
                n.literals = tuple(vals)
            elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if key.startswith("exclusive") and isinstance(value, bool):
                    draft4[key] = value
                    continue
                if not _is_num(value):
                    raise _Refuse(f'"{key}" {where} must be a number')
                entry = ((value, key.startswith("exclusive"), key, path),)
                if key in ("minimum", "exclusiveMinimum"):
                    n.lows += entry
                else:
                    n.highs += entry
            elif key == "multipleOf":
                if not _is_num(value) or value <= 0:
                    raise _Refuse(f'"multipleOf" {where} must be a number greater than 0')
                n.mults += (value,)
            elif key == "minLength":
                n.min_len = count(key, value)
            elif key == "maxLength":
                n.max_len = count(key, value)
            elif key == "pattern":
                if not isinstance(value, str):
                    raise _Refuse(f'"pattern" {where} must be a string')
                try:
                    re.compile(value)
                except re.error as e:
                    raise _Refuse(f'"pattern" {where} is not a regular expression: {e}') from None
                n.patterns = ((value, path, _Regex(value, where).parse()),)
            elif key == "format":
                if value not in FORMATS:
                    raise _Refuse(
                        f'"format": {_show(value)} {where} is not supported '
                        f"(supported formats: {', '.join(FORMATS)})"
                    )
                n.formats = (value,)
            elif key == "items":
                if isinstance(value, list):  # draft 4-2019: a tuple
                    if "prefixItems" in schema:
                        raise _Refuse(f'"items" {where} is an array next to "prefixItems"')
                    n.prefix = tuple(sub(v, f"{kp}/{i}") for i, v in enumerate(value))
                    extra = schema.get("additionalItems")
                    n.items = None if extra is None else sub(extra, f"{path}/additionalItems")
                else:
                    n.items = sub(value, kp)
            elif key == "prefixItems":
                if not isinstance(value, list):
                    raise _Refuse(f'"prefixItems" {where} must be an array of schemas')
                n.prefix = tuple(sub(v, f"{kp}/{i}") for i, v in enumerate(value))
            elif key == "additionalItems":
                if not isinstance(schema.get("items"), list):
                    continue  # ignored by every draft unless "items" is an array
            elif key == "minItems":
                n.min_items = count(key, value)
            elif key == "maxItems":
                n.max_items = count(key, value)
            elif key == "uniqueItems":
                if not isinstance(value, bool):
                    raise _Refuse(f'"uniqueItems" {where} must be true or false')
                n.unique = value
            elif key == "properties":
                if not isinstance(value, dict):
                    raise _Refuse(f'"properties" {where} must be an object')
                n.props = {k: sub(v, f"{kp}/{_esc(k)}") for k, v in value.items()}
                n.has_props = True
            elif key == "required":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _Refuse(f'"required" {where} must be an array of strings')
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
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if flag:
                attr = "lows" if bound == "minimum" else "highs"
                setattr(n, attr, tuple((v, True, key, p) for v, _, _, p in getattr(n, attr)))
        n.kinds = frozenset(kinds)
        self.nodes[path] = n
        self.contradictions(n)
        return n

    def ref(self, ref, where: str):
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _Refuse(f'"$ref" {where}: only local references ("#/...") are supported')
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            raise _Refuse(f'"$ref" {where}: only JSON pointers ("#/...") are supported')
        target = self.doc
        path = ""
        for token in fragment.split("/")[1:]:
            key = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                raise _Refuse(f'"$ref" {where}: {ref} does not exist')
            path += "/" + _esc(key)
        if isinstance(target, bool):
            return TRUE if target else FALSE
        if not isinstance(target, dict):
            raise _Refuse(f'"$ref" {where}: {ref} is not a schema')
        self.values.setdefault(path, target)
        return ("loc", path)

    def contradictions(self, n: Node):
        """Keywords of one schema object that exclude each other: refused, wherever they are
        (also inside anyOf, where the schema as a whole could still be satisfied)."""
        where = _at(n.path)
        lo = _tighter(n.lows, False, Fraction)
        hi = _tighter(n.highs, True, Fraction)

        def keyword(bounds, best):
            return next(f'"{k}" {_show(v)}' for v, s, k, _ in bounds if (Fraction(v), s) == best)

        if _empty_range(lo, hi):
            raise _Refuse(
                f"no number satisfies {keyword(n.lows, lo)} and {keyword(n.highs, hi)} {where}"
            )
        if n.types is not None and n.types <= {"integer", "number"}:
            if "number" not in n.types:
                a, b = _int_range(lo, hi)
                step = 1
                for m in n.mults:  # an integer is a multiple of p/q (lowest terms) iff of p
                    step = _lcm(step, _dec(m).numerator)
                if a is not None and b is not None and -(-a // step) * step > b:
                    what = f"a multiple of {step}" if step > 1 else "an integer"
                    raise _Refuse(f"no integer within the limits {where} is {what}")
            elif n.mults and lo is not None and hi is not None:
                hi_d = _tighter(n.highs, True, _dec)
                first = _first_multiple(_grid(n.mults), _tighter(n.lows, False, _dec))
                if first > hi_d[0] or first == hi_d[0] and hi_d[1]:
                    raise _Refuse(f'no multiple of "multipleOf" is within the limits {where}')
        pairs = (
            ("minLength", n.min_len, "maxLength", n.max_len),
            ("minItems", n.min_items, "maxItems", n.max_items),
            ("minProperties", n.min_props, "maxProperties", n.max_props),
        )
        for k1, v1, k2, v2 in pairs:
            if v2 is not None and v1 > v2:
                raise _Refuse(f'"{k1}" {v1} is greater than "{k2}" {v2} {where}')
        if n.literals is not None:
            check = n.copy()
            check.literals = check.parts = check.groups = ()
            check.literals = None
            if not any(self.matches(v, check) for v in n.literals):
                raise _Refuse(f'no value of "enum"/"const" {where} satisfies its other keywords')
        for name in n.required:
            if n.prop(name) == FALSE:
                why = "false" if name in n.props else 'forbidden by "additionalProperties": false'
                raise _Refuse(f'required property "{name}" {where} is {why}')
        if n.max_props is not None and len(n.required) > n.max_props:
            raise _Refuse(
                f'"required" names {len(n.required)} properties, "maxProperties" is '
                f"{n.max_props} {where}"
            )
        if n.items == FALSE and n.min_items > len(n.prefix):
            raise _Refuse(
                f'"minItems" {n.min_items} {where}: "items": false allows {len(n.prefix)}'
            )
        if n.formats and (n.min_len or n.max_len is not None):
            flo, fhi = _FORMAT_LENGTHS[n.formats[0]]
            if n.min_len > fhi or n.max_len is not None and n.max_len < flo:
                raise _Refuse(f'no "{n.formats[0]}" string {where} has a length within the limits')

    # -- allOf, $ref and anyOf/oneOf, resolved into alternatives of plain nodes --
    def flatten(self, sub, stack=()) -> list:
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
            raise _Refuse(f"{_at(path)}: a $ref/allOf/anyOf cycle never reaches a value")
        if len(stack) > MAX_REF_DEPTH:
            raise _Refuse(f"{_at(path)}: $ref/allOf/anyOf nest deeper than {MAX_REF_DEPTH}")
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
        if len(left) * len(right) > MAX_ALTERNATIVES:
            raise _Refuse(
                f"{_at(path)}: anyOf/oneOf combine into over {MAX_ALTERNATIVES} alternatives"
            )
        return [self.merge(a, b) for a in left for b in right]

    def merge(self, a: Node, b: Node) -> Node:
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
            both = a.types & b.types
            if (
                "integer" in a.types
                and "number" in b.types
                or ("number" in a.types and "integer" in b.types)
            ):
                both |= {"integer"}
            n.types = frozenset(both)
        n.kinds = a.kinds | b.kinds
        if a.literals is None or b.literals is None:
            n.literals = a.literals if b.literals is None else b.literals
        else:
            keys = {_canon(v) for v in b.literals}
            n.literals = tuple(v for v in a.literals if _canon(v) in keys)
        n.lows, n.highs, n.mults = a.lows + b.lows, a.highs + b.highs, a.mults + b.mults
        n.min_len = max(a.min_len, b.min_len)
        n.max_len = (
            a.max_len
            if b.max_len is None
            else (b.max_len if a.max_len is None else min(a.max_len, b.max_len))
        )
        n.patterns = a.patterns + b.patterns
        n.formats = tuple(dict.fromkeys(a.formats + b.formats))
        k = max(len(a.prefix), len(b.prefix))
        n.prefix = tuple(_both(a.position(i), b.position(i)) for i in range(k))
        n.items = (
            None if a.items is None and b.items is None else _both(a.position(k), b.position(k))
        )
        n.min_items = max(a.min_items, b.min_items)
        n.max_items = (
            a.max_items
            if b.max_items is None
            else (b.max_items if a.max_items is None else min(a.max_items, b.max_items))
        )
        n.unique = a.unique or b.unique
        names = list(dict.fromkeys(list(a.props) + list(b.props)))
        n.props = {k: _both(a.prop(k), b.prop(k)) for k in names}
        n.has_props = a.has_props or b.has_props
        n.required = tuple(dict.fromkeys(a.required + b.required))
        n.additional = (
            None
            if a.additional is None and b.additional is None
            else _both(a.additional or TRUE, b.additional or TRUE)
        )
        n.min_props = max(a.min_props, b.min_props)
        n.max_props = (
            a.max_props
            if b.max_props is None
            else (b.max_props if a.max_props is None else min(a.max_props, b.max_props))
        )
        return n

    def disjoint_alternatives(self, options, path):
        """oneOf is anyOf when no value matches two alternatives: refused unless provable
        (different types, enum/const values, ranges, lengths, or a required property whose
        values differ, as in discriminated unions)."""
        for i in range(len(options)):
            for j in range(i + 1, len(options)):
                if not all(self.disjoint(x, y, 0) for x in options[i] for y in options[j]):
                    raise _Refuse(
                        f'"oneOf" {_at(path)}: alternatives {i} and {j} may both match (use '
                        "anyOf, or make them exclusive by type, enum/const, range or a required "
                        "property with different values)"
                    )

    def effective_types(self, n: Node) -> frozenset:
        if n.types is not None:
            return n.types
        if n.kinds:
            return frozenset("number" if k == "number" else k for k in n.kinds)
        return frozenset(TYPES) - {"integer"}

    def disjoint(self, x: Node, y: Node, depth: int) -> bool:
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
                lo1, hi1 = _tighter(x.lows, False, Fraction), _tighter(x.highs, True, Fraction)
                lo2, hi2 = _tighter(y.lows, False, Fraction), _tighter(y.highs, True, Fraction)
                if not (_empty_range(lo1, hi2) or _empty_range(lo2, hi1)):
                    return False
            elif t == "string":
                if not (
                    x.max_len is not None
                    and x.max_len < y.min_len
                    or y.max_len is not None
                    and y.max_len < x.min_len
                ):
                    return False
            elif t == "array":
                if not (
                    x.max_items is not None
                    and x.max_items < y.min_items
                    or y.max_items is not None
                    and y.max_items < x.min_items
                ):
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

    # -- validation of literal values (enum/const) against the other keywords --
    @staticmethod
    def type_ok(v, types) -> bool:
        if types is None:
            return True
        if v is None:
            return "null" in types
        if isinstance(v, bool):
            return "boolean" in types
        if isinstance(v, int) or isinstance(v, float) and v.is_integer():
            return "integer" in types or "number" in types
        if isinstance(v, float):
            return "number" in types
        if isinstance(v, str):
            return "string" in types
        return ("array" if isinstance(v, list) else "object") in types

    def matches_sub(self, v, sub) -> bool:
        return any(self.matches(v, n) for n in self.flatten(sub))

    def matches(self, v, n: Node) -> bool:
        if not self.type_ok(v, n.types):
            return False
        if n.literals is not None and _canon(v) not in {_canon(x) for x in n.literals}:
            return False
        if _is_num(v):
            for raw, strict, _, _ in n.lows:
                if v < raw or strict and v == raw:
                    return False
            for raw, strict, _, _ in n.highs:
                if v > raw or strict and v == raw:
                    return False
            if any((_dec(v) / _dec(m)).denominator != 1 for m in n.mults):
                return False
        elif isinstance(v, str):
            if len(v) < n.min_len or n.max_len is not None and len(v) > n.max_len:
                return False
            if any(not re.search(p, v) for p, _, _ in n.patterns):
                return False
            if any(not _format_ok(f, v) for f in n.formats):
                return False
        elif isinstance(v, list):
            if len(v) < n.min_items or n.max_items is not None and len(v) > n.max_items:
                return False
            if n.unique and len({_canon(x) for x in v}) != len(v):
                return False
            if not all(self.matches_sub(x, n.position(i)) for i, x in enumerate(v)):
                return False
        elif isinstance(v, dict):
            if any(k not in v for k in n.required):
                return False
            if len(v) < n.min_props or n.max_props is not None and len(v) > n.max_props:
                return False
            if not all(self.matches_sub(x, n.prop(k)) for k, x in v.items()):
                return False
        return True

    # -- grammar --
    def compile(self, sub):
        """A grammar expression for a schema location (one rule per location, so that $ref
        can recurse)."""
        if sub == TRUE:
            return self.use("value")
        if sub == FALSE:
            return NONE
        key = sub[1] if sub[0] == "loc" else sub
        if key in self.memo:
            return ("ref", self.memo[key])
        name = self.new_rule("s")
        self.memo[key] = name
        self.depth += 1
        try:
            if self.depth > MAX_REF_DEPTH:
                raise _Refuse(
                    f"{_at(key if isinstance(key, str) else '')}: the schema nests "
                    f"deeper than {MAX_REF_DEPTH} levels"
                )
            if sub[0] == "loc":
                node = self.node(key)
                if (
                    node.blank() and not node.groups and len(node.parts) == 1
                ):  # a bare $ref: the target's rule (shared, may recurse)
                    self.rules[name] = self.compile(node.parts[0])
                    return ("ref", name)
            self.rules[name] = alt(*(self.plain(n) for n in self.flatten(sub)))
        finally:
            self.depth -= 1
        return ("ref", name)

    def plain(self, n: Node):
        """The grammar of one node without allOf/anyOf/$ref."""
        if n.blank():
            return self.use("value")
        if n.literals is not None:
            check = n.copy()
            check.literals = None
            vals: dict = {}
            for v in n.literals:
                if self.matches(v, check):
                    vals.setdefault(_canon(v), v)
            if not vals:
                self.reasons.append(
                    f'no value of "enum"/"const" {_at(n.path)} satisfies the other keywords'
                )
            return alt(*(lit(_dumps(v)) for v in vals.values()))
        types = self.effective_types(n)
        out = []
        if "object" in types:
            out.append(self.object(n))
        if "array" in types:
            out.append(self.array(n))
        if "string" in types:
            out.append(self.string(n))
        if "number" in types or "integer" in types:
            out.append(self.number(n, integer="number" not in types))
        if "boolean" in types:
            out.append(self.use("boolean"))
        if "null" in types:
            out.append(self.use("null"))
        result = alt(*out)
        if result == NONE:
            self.reasons.append(f"the keywords {_at(n.path)} exclude each other")
        return result

    # numbers
    def number(self, n: Node, integer: bool):
        where = _at(n.path)
        if integer:
            # Python (and so jsonschema) compares an int with a float bound exactly
            a, b = _int_range(_tighter(n.lows, False, Fraction), _tighter(n.highs, True, Fraction))
            lo = None if a is None else (Fraction(a), False)
            hi = None if b is None else (Fraction(b), False)
            modulus = 1
            for m in n.mults:  # an integer is a multiple of p/q (lowest terms) iff of p
                modulus = _lcm(modulus, _dec(m).numerator)
            return self.number_expr(lo, hi, modulus, 0, 0, True, where=where)
        for raw, _, kw, p in n.lows + n.highs:
            digits = Decimal(repr(raw)).normalize().as_tuple().digits
            if abs(raw) < 10**DIGITS and len(digits) > DIGITS:
                raise _Refuse(
                    f'"{kw}" {raw!r} {_at(p)} has more than {DIGITS} significant digits '
                    "(limits of numbers must read back exactly as a double)"
                )
        lo, hi = _tighter(n.lows, False, _dec), _tighter(n.highs, True, _dec)
        scale, modulus = 0, 1
        if n.mults:  # x multiple of each m  <=>  x * 10**scale is a multiple of each m * 10**scale
            ms = [_dec(m) for m in n.mults]
            while any((m * 10**scale).denominator != 1 for m in ms):
                scale += 1
            if scale >= DIGITS:
                raise _Refuse(f'"multipleOf" {where} has {scale} decimals, over {DIGITS - 1}')
            for m in ms:
                modulus = _lcm(modulus, int(m * 10**scale))
        frac = scale if n.mults else DIGITS
        return self.number_expr(lo, hi, modulus, scale, frac, False, where=where)

    def number_expr(self, lo, hi, modulus, scale, frac, integer, shared=True, where=""):
        """Integers (or numbers) x with lo <= x <= hi ((Fraction, strict) or None), at most
        `frac` decimals, and x * 10**scale a multiple of `modulus` (frac <= scale if it is
        over 1); numbers have DIGITS digits in all, integers at least as many."""
        key = (lo, hi, modulus, scale, frac, integer)
        if shared and key in self.numbers:
            return self.numbers[key]
        if integer:  # at most 15 digits (or as many as a bound has): a sampler must end
            longest = max((len(_digits(abs(x[0]))[0]) for x in (lo, hi) if x), default=0)
            capped = max(DIGITS, longest)
        else:
            capped = DIGITS
        what = f'"multipleOf" {where}' if modulus > 1 else f"the number limits {where}"
        try:
            dfa = self.number_dfa(lo, hi, modulus, scale, frac, capped, what, MAX_STATES // 3)
        except _Refuse:
            if not integer:
                raise
            # a large multipleOf times the digit count: any number of digits instead (the
            # automaton is then about `modulus` states, and every state is at most a few
            # digits from a multiple)
            dfa = self.number_dfa(lo, hi, modulus, scale, frac, None, what, MAX_STATES)
        if dfa is None:
            kind = "integer" if integer else "number"
            self.reasons.append(
                f"no {kind} of at most {capped} digits is within the limits {where}"
            )
            expr = NONE
        else:
            expr = self.dfa_rules(dfa, "n")
        if shared:
            self.numbers[key] = expr
        return expr

    @staticmethod
    def number_dfa(lo, hi, modulus, scale, frac, total, what, budget):
        def tighter_low(x, y):
            if x is None:
                return y
            return x if (x[0] > y[0] or x[0] == y[0] and x[1]) else y

        pos = neg = None
        if hi is None or hi[0] > 0 or hi[0] == 0 and not hi[1]:
            zero = (Fraction(0), False)
            pos = _Magnitude(tighter_low(lo, zero), hi, modulus, scale, frac, total)
        if lo is None or lo[0] < 0:  # "-" and a magnitude m > 0 with -hi <= m <= -lo
            above = (Fraction(0), True)
            mlo = above if hi is None else tighter_low((-hi[0], hi[1]), above)
            mhi = None if lo is None else (-lo[0], lo[1])
            neg = _Magnitude(mlo, mhi, modulus, scale, frac, total)

        def step(state, ch):
            if state == "start":
                if ch == "-":
                    return ("-", neg.start) if neg else None
                nxt = pos.step(pos.start, ch) if pos else None
                return None if nxt is None else ("+", nxt)
            if ch == "-":
                return None
            nxt = (pos if state[0] == "+" else neg).step(state[1], ch)
            return None if nxt is None else (state[0], nxt)

        def accept(state):
            return state != "start" and (pos if state[0] == "+" else neg).accept(state[1])

        return _dfa("start", step, accept, "-0123456789.", what, budget)

    def dfa_rules(self, dfa, stem):
        trans, acc = dfa
        names = [self.new_rule(stem) for _ in trans]
        for s, t in enumerate(trans):
            by_target: dict = {}
            for c, d in t.items():
                by_target.setdefault(d, []).append(c)
            options = []
            for d, chars in by_target.items():
                tail = EPS if acc[d] and not trans[d] else ("ref", names[d])
                options.extend(seq(g, tail) for g in _digit_groups(chars))
            body = alt(*options)
            self.rules[names[s]] = opt(body) if acc[s] else body
        return ("ref", names[0])

    # strings
    def string(self, n: Node):
        where = _at(n.path)
        q = lit('"')
        if len(n.patterns) > 1:
            raise _Refuse(f'two "pattern" keywords meet {where} (through allOf/$ref)')
        if len(n.formats) > 1:
            raise _Refuse(f'"format" {n.formats[0]} and {n.formats[1]} meet {where}')
        if n.patterns:
            pattern, ppath, ast = n.patterns[0]
            if n.formats or n.min_len or n.max_len is not None:
                other = '"format"' if n.formats else '"minLength"/"maxLength"'
                raise _Refuse(f'"pattern" together with {other} {where} is not supported')
            return seq(q, self.regex(ast, ppath), q)
        if n.formats:
            fmt = n.formats[0]
            flo, fhi = _FORMAT_LENGTHS[fmt]
            if n.min_len > fhi or n.max_len is not None and n.max_len < flo:
                self.reasons.append(f'no "{fmt}" string {where} has a length within the limits')
                return NONE
            if n.min_len > flo or n.max_len is not None and n.max_len < fhi:
                raise _Refuse(
                    f'"format": "{fmt}" together with "minLength"/"maxLength" {where} '
                    "is not supported"
                )
            return seq(q, self.use(f"fmt-{fmt}"), q)
        if n.min_len == 0 and n.max_len is None:
            return self.use("string")
        for kw, v in (("minLength", n.min_len), ("maxLength", n.max_len)):
            if v is not None and v > MAX_REPEAT:
                raise _Refuse(
                    f'"{kw}" {v} {where} is over {MAX_REPEAT}, the most this grammar counts'
                )
        return seq(q, self.repeat(self.use("char"), n.min_len, n.max_len, "c"), q)

    def repeat(self, item, lo: int, hi, stem: str):
        """item{lo,hi} (hi None: unbounded) as flat text and a chain of rules, never nested."""
        head = seq(*([item] * lo))
        if hi is None:
            return seq(head, star(item))
        if hi == lo:
            return head
        if hi - lo <= 4:
            tail = EPS
            for _ in range(hi - lo):
                tail = opt(seq(item, tail))
            return seq(head, tail)
        names = [self.new_rule(stem) for _ in range(hi - lo)]
        for i, nm in enumerate(names):
            nxt = ("ref", names[i + 1]) if i + 1 < len(names) else EPS
            self.rules[nm] = opt(seq(item, nxt)) if nxt != EPS else opt(item)
        return seq(head, ("ref", names[0]))

    def regex(self, ast, path):
        branches = ast[1]
        out = []
        anychar = self.use("char")
        for branch in branches:
            items = list(branch[1])
            start = bool(items) and items[0] == ("bol",)
            end = bool(items) and items[-1] == ("eol",) and len(items) > (1 if start else 0)
            body = items[1 if start else 0 : len(items) - (1 if end else 0)]
            expr = seq(
                EPS if start else star(anychar),
                self.regex_node(("cat", body), path),
                EPS if end else star(anychar),
            )
            out.append(expr)
        return alt(*out)

    def regex_node(self, node, path):
        kind = node[0]
        if kind in ("bol", "eol"):
            raise _Refuse(f'"pattern" {_at(path)}: "^" and "$" are supported only at the ends')
        if kind == "cat":
            return seq(*(self.regex_node(x, path) for x in node[1]))
        if kind == "alt":
            return alt(*(self.regex_node(x, path) for x in node[1]))
        if kind == "rep":
            inner = self.regex_node(node[1], path)
            if inner[0] not in ("lit", "cls", "ref"):
                name = self.new_rule("r")
                self.rules[name] = inner
                inner = ("ref", name)
            return self.repeat(inner, node[2], node[3], "r")
        return self.charset(node[1], broad=node[2])

    @staticmethod
    def charset(ranges, broad: bool):
        """Characters of a regex set, as JSON string text: raw where JSON allows it, escaped
        otherwise (controls only when the set names them)."""
        raw = _minus(ranges, [_CONTROL, (0x22, 0x22), (0x5C, 0x5C), (0xD800, 0xDFFF)])
        out = [("cls", _cls(raw))] if raw else []
        short = {0x22: '\\"', 0x5C: "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
        for a, b in ranges:
            for c in range(a, min(b, 0x5C) + 1):
                if c in (0x22, 0x5C) or c <= 0x1F and not broad:
                    out.append(lit(short.get(c, f"\\u{c:04x}")))
        return alt(*out)

    # arrays
    def array(self, n: Node):
        where = _at(n.path)
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
            self.reasons.append(f"no array length fits the limits {where}")
            return NONE
        if not k and extra == TRUE and lo == 0 and hi is None and not n.unique:
            return self.use("array")
        for kw, v in (("minItems", lo), ("maxItems", hi)):
            if v is not None and v > MAX_REPEAT:
                raise _Refuse(
                    f'"{kw}" {v} {where} is over {MAX_REPEAT}, the most this grammar counts'
                )
        ws = self.use("ws")
        if n.unique and (hi is None or hi > 1):
            return self.unique_array(n, extra, lo, hi, where)

        def item(i):
            return self.compile(n.prefix[i] if i < k else extra)

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
            after = ("ref", self.new_rule("a"))
            self.rules[after[1]] = body if i < lo else opt(body)
        first = seq(item(0), ws, after)
        return seq(lit("["), ws, first if lo > 0 else opt(first), lit("]"))

    def unique_array(self, n: Node, extra, lo, hi, where):
        if n.prefix:
            raise _Refuse(f'"uniqueItems": true with "prefixItems" {where} is not supported')
        values = self.domain(extra)
        if values is None:
            raise _Refuse(
                f'"uniqueItems": true {where} is enforced only when the items have at most '
                f"{MAX_UNIQUE_VALUES} possible values (enum, const, boolean, a small integer "
                "range); these items have more"
            )
        m = len(values)
        top = m if hi is None else min(hi, m)
        if lo > top:
            raise _Refuse(
                f'"uniqueItems": true {where}: the items have {m} possible values, '
                f'fewer than "minItems" {lo}'
            )
        ws = self.use("ws")
        memo: dict = {}

        def pick(i, c):  # values[:i] decided, c written: items appear in the order of `values`
            if c == top or i == m:
                return EPS if c >= lo else NONE
            if (i, c) in memo:
                return memo[(i, c)]
            name = self.new_rule("u")
            memo[(i, c)] = ("ref", name)
            sep = EPS if c == 0 else seq(lit(","), ws)
            take = seq(sep, lit(values[i]), ws, pick(i + 1, c + 1))
            skip = pick(i + 1, c) if m - i - 1 >= lo - c else NONE
            self.rules[name] = alt(take, skip)
            return memo[(i, c)]

        return seq(lit("["), ws, pick(0, 0), lit("]"))

    def domain(self, sub):
        """Every value (as JSON text) a schema allows, if there are few; else None."""
        out: dict = {}
        for n in self.flatten(sub):
            if n.literals is not None:
                check = n.copy()
                check.literals = None
                for v in n.literals:
                    if self.matches(v, check):
                        out.setdefault(_canon(v), _dumps(v))
                continue
            if n.blank():
                return None
            types = self.effective_types(n)
            for t in types:
                if t == "null":
                    out.setdefault(_canon(None), "null")
                elif t == "boolean":
                    out.setdefault(_canon(True), "true")
                    out.setdefault(_canon(False), "false")
                elif t in ("integer", "number"):
                    if t == "number" and not n.mults:
                        return None
                    vals = self.grid_values(n, integer="number" not in types)
                    if vals is None:
                        return None
                    for v in vals:
                        out.setdefault(_canon(v), str(v) if isinstance(v, int) else _plain(v))
                else:
                    return None
            if len(out) > MAX_UNIQUE_VALUES:
                return None
        return list(out.values())

    def grid_values(self, n: Node, integer: bool):
        if integer:
            a, b = _int_range(_tighter(n.lows, False, Fraction), _tighter(n.highs, True, Fraction))
            if a is None or b is None:
                return None
            step = 1
            for m in n.mults:
                step = _lcm(step, _dec(m).numerator)
            first = -(-a // step) * step
            if first > b:
                return []
            count = (b - first) // step + 1
            return None if count > MAX_UNIQUE_VALUES else list(range(first, b + 1, step))
        lo, hi = _tighter(n.lows, False, _dec), _tighter(n.highs, True, _dec)
        if lo is None or hi is None:
            return None
        g = _grid(n.mults)
        v = _first_multiple(g, lo)
        out = []
        while v < hi[0] or v == hi[0] and not hi[1]:
            out.append(v)
            if len(out) > MAX_UNIQUE_VALUES:
                return None
            v += g
        if any(sum(map(len, _digits(abs(x)))) > DIGITS for x in out):
            return None
        return out

    # objects
    def object(self, n: Node):
        where = _at(n.path)
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
            return self.use("object")
        fewest = len(n.required)
        most = None if extras else len(names)
        if n.min_props > fewest or n.max_props is not None and (most is None or most > n.max_props):
            raise _Refuse(
                f'"minProperties"/"maxProperties" {where} are enforced only when "required" '
                'already gives that many properties and "properties" (without '
                '"additionalProperties") no more'
            )
        ws = self.use("ws")
        kvs = []
        for name in names:
            value = self.compile(n.prop(name))
            kvs.append(seq(lit(_dumps(name)), ws, lit(":"), ws, value, ws))
        required = [name in n.required for name in names]
        addkv = NONE
        if extras:
            value = self.compile(n.additional if explicit else TRUE)
            addkv = seq(lit('"'), self.key_not_in(names), lit('"'), ws, lit(":"), ws, value, ws)
        count = len(names)
        more = EPS  # ("," kv)* of the additional properties
        if extras:
            more = ("ref", self.new_rule("o"))
            self.rules[more[1]] = star(seq(lit(","), ws, addkv))
        rest: list = [None] * (count + 1)  # rest[i]: properties i.. after something written
        rest[count] = more
        for i in range(count - 1, -1, -1):
            item = seq(lit(","), ws, kvs[i])
            name = self.new_rule("o")
            self.rules[name] = seq(item if required[i] else opt(item), rest[i + 1])
            rest[i] = ("ref", name)
        first = opt(seq(addkv, more))  # first[i]: nothing written yet
        for i in range(count - 1, -1, -1):
            here = seq(kvs[i], rest[i + 1])
            name = self.new_rule("o")
            self.rules[name] = here if required[i] else alt(here, first)
            first = ("ref", name)
        return seq(lit("{"), ws, first, lit("}"))

    def key_not_in(self, names):
        """String contents (no escapes) other than each of `names`."""
        trie: dict = {}
        for name in names:
            node = trie
            for ch in name:
                node = node.setdefault(ch, {})
            node[""] = {}
        raw = ("cls", _RAW)
        allowed = _minus(_ALL, [_CONTROL, (0x22, 0x22), (0x5C, 0x5C)])
        names_of = {id(trie): self.new_rule("k")}
        todo = [trie]  # one rule per trie node, without recursion (names can be long)
        while todo:
            node = todo.pop()
            kids = {c: kid for c, kid in node.items() if c}
            options = [] if "" in node else [EPS]
            others = _minus(allowed, [(ord(c), ord(c)) for c in kids])
            if others:
                options.append(seq(("cls", _cls(others)), star(raw)))
            for c, kid in kids.items():
                if ord(c) > 0x1F and c not in '"\\' and not 0xD800 <= ord(c) <= 0xDFFF:
                    names_of[id(kid)] = self.new_rule("k")
                    options.append(seq(lit(c), ("ref", names_of[id(kid)])))
                    todo.append(kid)
            self.rules[names_of[id(node)]] = alt(*options)
        return ("ref", names_of[id(trie)])


def _plain(q) -> str:
    """A decimal Fraction as JSON number text without exponent."""
    if isinstance(q, int) or q.denominator == 1:
        return str(int(q))
    sign = "-" if q < 0 else ""
    whole, frac = _digits(abs(q))
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"
