"""The grammar's fixed rules: any JSON value (what `true`, a missing schema or a bare type
allows), its string characters, and the string formats (date, time, date-time, uuid), with
the lengths a format's strings have and a check of what its rule generates (to filter enum
values). The rule "number" is not text: the converter builds it from the number automaton.
"""

from __future__ import annotations

import datetime
import re

FORMATS = ("date", "time", "date-time", "uuid")

# An unescaped string character, as positive ranges: with a negated class llama.cpp's engine
# would also take bytes that decode past U+10FFFF or to a surrogate (not UTF-8).
RAW = "[\\x20-\\x21\\x23-\\x5B\\x5D-\\uD7FF\\uE000-\\U0010FFFF]"
_HEX = "[0-9a-fA-F]"
# One escape is one character: \u escapes of UTF-16 surrogates (pairs would be one character
# for a length count, lone ones are not text) are left out.
_ESCAPE = (
    '"\\\\" ( ["\\\\/bfnrt] | "u" ( [0-9a-cA-CefEF] '
    + " ".join([_HEX] * 3)
    + f" | [dD] [0-7] {_HEX} {_HEX} ) )"
)
_LEAP2 = '( "0" [48] | [2468] [048] | [13579] [26] )'  # two digits, a nonzero multiple of 4
RULES = {
    "ws": '" "?',
    "char": f"{RAW} | {_ESCAPE}",
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
DEPS = {  # the fixed rules each one names
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


def format_fits(fmt: str, min_len: int, max_len) -> bool:
    """Whether some string of the format has a length within [min_len, max_len]."""
    shortest, longest = _FORMAT_LENGTHS[fmt]
    return not (min_len > longest or max_len is not None and max_len < shortest)


def format_within(fmt: str, min_len: int, max_len) -> bool:
    """Whether every string of the format has a length within [min_len, max_len]."""
    shortest, longest = _FORMAT_LENGTHS[fmt]
    return not (min_len > shortest or max_len is not None and max_len < longest)


def format_ok(fmt: str, s: str) -> bool:
    """What the format rules generate (used to filter enum values)."""

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
