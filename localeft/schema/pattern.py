"""The regular-expression subset that `pattern` may use, parsed into a small tree whose
characters are code point sets (strings.py turns the tree into grammar).

jsonschema matches `pattern` with Python's re.search, so this parser reads Python's syntax
and refuses, with the construct named, everything that has no exact grammar (lookarounds,
backreferences, \\b, possessive quantifiers, ...). Tree: ("alt", branches) | ("cat", items)
| ("rep", node, lo, hi or None) | ("set", ranges, broad) | ("bol",) | ("eol",).
"""

from __future__ import annotations

import re

from .charsets import ALL, ASCII, CONTROL, DIGIT, SPACE, WORD, minus, norm
from .limits import MAX_REPEAT, Refuse

_ESCAPES = {"t": 9, "n": 10, "r": 13, "f": 12, "v": 11}


class Regex:
    """The part of Python's regular expressions (jsonschema matches `pattern` with re.search)
    that has an exact grammar: literals, classes, \\d \\w \\s and their negations, ".", groups,
    alternation, greedy or lazy quantifiers, "^" and "$" at the ends of a top-level branch.
    Character sets generate a subset of what Python matches: \\d \\w \\s generate ASCII only,
    negated sets generate neither control characters nor (after \\D \\W \\S) non-ASCII ones."""

    def __init__(self, pattern: str, where: str):
        self.p, self.i, self.where = pattern, 0, where

    def fail(self, what: str):
        raise Refuse(f'"pattern" {self.where}: {what} is not supported')

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
            return ("set", minus(ALL, [(0x0A, 0x0A)]), True)
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
            return ("set", {"d": DIGIT, "w": WORD, "s": SPACE}[c], False)
        if c in "DWS":
            base = {"D": DIGIT, "W": WORD, "S": SPACE}[c]
            return ("set", minus(ASCII, base + [(0x1C, 0x1F), (0x0B, 0x0B)]), True)
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
                lo = _single(item)
                if lo is None:  # \d, \w, \s or a negation: a set in the class
                    ranges += item[1]
                    shorthand = True
                    continue
            elif c == "[" and p.startswith(":", self.i):
                self.fail("a POSIX class")
            else:
                lo = ord(c)
            if p.startswith("-", self.i) and self.i + 1 < len(p) and p[self.i + 1] != "]":
                self.i += 1
                d = p[self.i]
                self.i += 1
                if d == "\\":
                    hi = _single(self.escape(in_class=True))
                    if hi is None:
                        self.fail("a range ending in a class")
                else:
                    hi = ord(d)
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        ranges = norm(ranges)
        if negate:
            universe = ASCII if shorthand else ALL
            return ("set", minus(universe, ranges + [CONTROL, (0x0B, 0x0B)]), True)
        return ("set", ranges, False)


def _single(item):
    """The code point of a parsed set of one character; None if it has more."""
    ranges = item[1]
    return ranges[0][0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else None
