"""What every step of the converter shares about refusing: the Refuse exception, the limits
that keep its work and its grammars bounded, and how a message names a place.

A schema is refused, never half enforced: each step raises Refuse with one line naming the
keyword and its JSON pointer, and the entry point (converter.schema_to_gbnf) turns that into
an InvalidParameterError.
"""

from __future__ import annotations

MAX_NESTING = 128  # JSON levels of the schema document
MAX_VALUES = 1_000_000  # values in the schema document
MAX_REF_DEPTH = 100  # schema levels while compiling (through $ref too)
MAX_REPEAT = 4096  # maxLength, maxItems, regex repetitions: one rule per step
MAX_STATES = 60_000  # states of one number automaton (about a second to build)
MAX_ALTERNATIVES = 256  # alternatives after distributing anyOf over allOf
MAX_UNIQUE_VALUES = 64  # uniqueItems: items with at most this many possible values
MAX_GRAMMAR_CHARS = 2_000_000
DIGITS = 15  # significant digits of a generated number (exact through a binary double)


class Refuse(Exception):
    """A schema the grammar cannot enforce, or that no value satisfies (a one-line reason)."""


def at(path: str) -> str:
    """Where a schema object is, for a message ("" is the top level)."""
    return f"at {path}" if path else "at the top level"


def check_counts(counts, where: str) -> None:
    """Refuse a count (minLength, maxItems, ...) over MAX_REPEAT: the grammar spends one rule
    per step. `counts` is ((keyword, value or None)), `where` from at()."""
    for keyword, value in counts:
        if value is not None and value > MAX_REPEAT:
            raise Refuse(
                f'"{keyword}" {value} {where} is over {MAX_REPEAT}, the most this grammar counts'
            )
