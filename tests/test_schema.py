"""JSON schemas: every keyword the converter accepts is enforced by the grammar, the others are
refused with one line naming the keyword and where it is.

Three kinds of checks:
- grammar level (no model weights): llama.cpp's own grammar engine, fed one byte token per
  byte, accepts exactly the valid strings of windows of integers, decimals and dates;
- generation: a table of schema features, each sampled over many seeds from the tiny trio (a
  random model draws near-uniform tokens, a good adversary), every finished output validated
  with jsonschema (numbers read as Decimal: exact, as the keywords are defined);
- refusals: contradictions, unsupported keywords and deep nesting are one-line errors before
  any decoding, through the Python API and the CLI.
"""

from __future__ import annotations

import datetime
import decimal
import json
from decimal import Decimal

import jsonschema
import pytest
from tinymodels import EOS_ID, token_id

from localeft import InvalidParameterError
from localeft.backend import Model
from localeft.grammar import Grammar, schema_grammar

# --- the engine as an acceptor --------------------------------------------------------------------
BYTE_TOKENS = [token_id(f"<0x{b:02X}>") for b in range(256)]


@pytest.fixture(scope="module")
def vocab(tiny):
    return Model(tiny.small_ft, vocab_only=True)


def acceptor(vocab, schema):
    """`accepts(text)`: whether the schema's grammar accepts exactly `text` (then may end)."""
    base = Grammar(vocab, schema_grammar(schema))

    def accepts(text: str | bytes) -> bool:
        g = base.clone()
        for b in text.encode("utf-8") if isinstance(text, str) else text:
            if not g.allows(BYTE_TOKENS[b]):
                return False
            g.accept(BYTE_TOKENS[b])
        return g.allows(EOS_ID)

    return accepts


def exact(schema) -> dict:
    """The schema with its numbers as Decimal, so that jsonschema checks multipleOf exactly."""
    return json.loads(json.dumps(schema), parse_float=Decimal)


CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def valid(schema, text: str) -> bool:
    try:
        value = json.loads(text, parse_float=Decimal)
    except ValueError:
        return False
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        return cls(exact(schema), format_checker=CHECKER).is_valid(value)
    except decimal.InvalidOperation:  # e.g. 1e999999 % 0.01: not what a grammar should allow
        return False


# --- grammar level: windows of strings ------------------------------------------------------------
INTEGERS = [str(i) for i in range(-1000, 1001)]
DRAFT4 = "http://json-schema.org/draft-04/schema#"
NOT_CANONICAL = ["-0", "01", "-01", "00", "1.0", "1e2", "", "-", "+1", " 1", "1.", ".5", "0.0",
                 "-0.0", "10000", "-10000", "123456789012345", "1234567890123456"]  # fmt: skip


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 1, "maximum": 3},
        {"type": "integer", "minimum": -17, "maximum": 250},
        {"type": "integer", "exclusiveMinimum": -100, "exclusiveMaximum": -7},
        {"type": "integer", "minimum": -5.5, "maximum": 9.99},
        {"type": "integer", "exclusiveMinimum": 2.0, "maximum": 2.5e2},
        {"type": "integer", "minimum": 10},
        {"type": "integer", "maximum": -10},
        {"type": "integer", "minimum": 999, "maximum": 1000},
        {"type": "integer", "multipleOf": 7},
        {"type": "integer", "multipleOf": 7, "minimum": -50, "maximum": 600},
        {"type": "integer", "multipleOf": 1.5, "exclusiveMaximum": 100},
        {"type": "integer", "multipleOf": 100, "minimum": -999},
        {"type": "integer", "multipleOf": 12, "exclusiveMinimum": 0, "maximum": 999},
        {"type": "integer", "minimum": 0, "exclusiveMinimum": 0, "maximum": 5, "multipleOf": 2},
        {"$schema": DRAFT4, "type": "integer", "minimum": 3, "exclusiveMinimum": True},
    ],
)
def test_integer_grammar_accepts_exactly_the_valid_integers(vocab, schema):
    accepts = acceptor(vocab, schema)
    for text in INTEGERS + NOT_CANONICAL:
        ok = valid(schema, text)
        if accepts(text):
            assert ok, (schema, text)
        elif text in INTEGERS:  # canonical: every valid one is accepted
            assert not ok, (schema, text)


DECIMALS = sorted(
    {f"{i / 100:.2f}" for i in range(-500, 501)}
    | {f"{i / 100:.2f}".rstrip("0").rstrip(".") for i in range(-500, 501)}
    | {f"{i / 1000:.3f}" for i in range(-3000, 3001, 7)}
    | {"12345678901234.5", "0.12345678901234", "0.123456789012345"}
) + ["-0", "-0.00"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "number", "minimum": -2.25, "exclusiveMaximum": 0.5},
        {"type": "number", "exclusiveMinimum": -0.1, "maximum": 3},
        {"type": "number", "exclusiveMinimum": 1.05, "exclusiveMaximum": 1.1},
        {"type": "number", "minimum": 0.3},
        {"type": "number", "maximum": -0.3},
        {"type": "number", "multipleOf": 0.25},
        {"type": "number", "multipleOf": 0.01, "minimum": -1.5, "maximum": 2},
        {"type": "number", "multipleOf": 0.05, "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"type": "number", "multipleOf": 2.5, "minimum": -4},
        {"type": ["number", "null"], "maximum": 0},
    ],
)
def test_number_grammar_accepts_exactly_the_valid_decimals(vocab, schema):
    accepts = acceptor(vocab, schema)
    decimals = len(str(schema.get("multipleOf", 0.123456789012345)).partition(".")[2])
    for text in DECIMALS + NOT_CANONICAL:
        ok = valid(schema, text)
        negative_zero = text.startswith("-") and ok and Decimal(text) == 0
        if accepts(text):
            assert ok and not negative_zero, (schema, text)
        elif text in DECIMALS and ok:  # left out only: -0, extra decimals, over 15 digits
            digits = sum(c.isdigit() for c in text)
            many = len(text.partition(".")[2]) > decimals
            assert negative_zero or many or digits > 15, (schema, text)


def test_numbers_have_no_exponent_and_at_most_15_digits(vocab):
    accepts = acceptor(vocab, {"type": "number"})
    assert accepts("123456789012345") and accepts("-0.12345678901234")
    for text in ("1234567890123456", "1e5", "1E5", "0.123456789012345", "NaN", "Infinity"):
        assert not accepts(text), text
    integers = acceptor(vocab, {"type": "integer", "multipleOf": 997})  # Python reads any int
    assert integers(str(997 * 10**30)) and integers("-997") and not integers(str(997 * 10**30 + 1))


def test_long_chains_are_rules_not_recursion(vocab):
    accepts = acceptor(vocab, {"type": "array", "items": {"type": "integer"}, "maxItems": 4096})
    assert accepts("[" + ",".join(["1"] * 4096) + "]")
    assert not accepts("[" + ",".join(["1"] * 4097) + "]")
    strings = acceptor(vocab, {"type": "string", "minLength": 4000, "maxLength": 4096})
    assert strings('"' + "a" * 4096 + '"') and not strings('"' + "a" * 3999 + '"')


def test_dates_exist(vocab):
    accepts = acceptor(vocab, {"type": "string", "format": "date"})
    for year in (1, 4, 100, 1900, 1999, 2000, 2023, 2024, 2100, 2400, 9999):
        for month in range(1, 13):
            for day in range(0, 33):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                try:
                    ok = datetime.date.fromisoformat(text) is not None
                except ValueError:
                    ok = False
                assert accepts(f'"{text}"') == ok, text
    assert not accepts('"0000-01-01"') and not accepts('"2024-1-01"')
    dt = acceptor(vocab, {"type": "string", "format": "date-time"})
    assert dt('"2024-02-29T23:59:59.123+05:30"') and dt('"1999-12-31T00:00:00Z"')
    assert not dt('"2023-02-29T10:00:00Z"') and not dt('"2024-01-01T24:00:00Z"')
    assert not dt('"2024-01-01T10:00:00"')  # RFC 3339 wants an offset
    uuid = acceptor(vocab, {"type": "string", "format": "uuid"})
    assert uuid('"123e4567-e89b-12d3-a456-426614174000"')
    assert not uuid('"123e4567e89b12d3a456426614174000"')


def test_strings_count_characters_and_escapes_once(vocab):
    accepts = acceptor(vocab, {"type": "string", "minLength": 2, "maxLength": 3})
    assert accepts('"ab"') and accepts('"a\\u00e9"') and accepts('"\\n\\"x"') and accepts('"éé"')
    assert not accepts('"a"') and not accepts('"abcd"') and not accepts('"\\ud83d\\ude00"')
    assert not accepts('"a\nb"')  # a raw control character is not JSON
    any_string = acceptor(vocab, {"type": "string"})
    assert not any_string('"\x01"') and any_string('"\\u0001"')
    # bytes that are not UTF-8: past U+10FFFF, a surrogate, overlong, a stray continuation
    for raw in (b"\xf4\x9e\xbc\xbd", b"\xed\xa0\x80", b"\xc1\x81", b"\xe0\x80\xaf", b"\x81"):
        assert not any_string(b'"' + raw + b'"'), raw
        assert not accepts(b'"a' + raw + b'"'), raw
    assert any_string('"\U0010ffff\u00e9"'.encode("utf-8"))


def test_arrays_objects_and_combinations(vocab):
    unique = acceptor(
        vocab, {"type": "array", "items": {"enum": ["a", "b", 3]}, "uniqueItems": True}
    )
    assert unique("[]") and unique('["a", 3]') and unique('["a","b",3]')
    assert not unique('["a","a"]') and not unique("[3,3]")
    ints = {"type": "integer", "minimum": 1, "maximum": 3}
    small = acceptor(vocab, {"type": "array", "items": ints, "uniqueItems": True, "minItems": 2})
    assert small("[1,3]") and not small("[1]") and not small("[1,1]") and not small("[2,2,3]")
    tuple_ = acceptor(vocab, {"prefixItems": [ints, {"type": "boolean"}], "items": False})
    assert tuple_("[2,true]") and tuple_("[2]") is False and not tuple_("[2,true,1]")
    counted = acceptor(vocab, {"type": "array", "minItems": 2, "maxItems": 3})
    assert counted('[1,"x"]') and counted("[[],{},null]") and not counted("[1]")
    assert not counted("[1,2,3,4]")
    extra = acceptor(
        vocab,
        {
            "properties": {"a": {"type": "integer"}, "ab": {"type": "boolean"}},
            "additionalProperties": {"type": "string", "maxLength": 1},
        },
    )
    assert extra('{"a":1,"b":"x"}') and extra('{"abc":"x"}') and extra('{"":"x"}')
    assert not extra('{"a":"x"}') and not extra('{"ab":"x"}') and not extra('{"b":"xy"}')
    assert extra('{"ab":true}') and extra("{}")
    required_only = acceptor(vocab, {"type": "object", "required": ["id"]})
    assert required_only('{"id":[1]}') and not required_only("{}")
    assert not required_only('{"x":1}')
    nested_any = acceptor(
        vocab,
        {
            "type": "integer",
            "minimum": 0,
            "anyOf": [{"maximum": 3}, {"minimum": 10, "maximum": 12}],
        },
    )
    assert [n for n in range(-5, 20) if nested_any(str(n))] == [0, 1, 2, 3, 10, 11, 12]
    pattern = acceptor(vocab, {"type": "string", "pattern": "^[a-c]{2,3}-\\d+$"})
    assert pattern('"ab-12"') and not pattern('"a-1"') and not pattern('"abcd-1"')
    assert not pattern('"ab-"')
    search = acceptor(vocab, {"type": "string", "pattern": "x\\.y"})  # unanchored: contains
    assert search('"--x.y--"') and search('"x.y"') and not search('"xzy"')
    recursive = acceptor(
        vocab,
        {
            "$defs": {
                "tree": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "integer", "minimum": 0, "maximum": 9},
                        "kids": {"type": "array", "items": {"$ref": "#/$defs/tree"}},
                    },
                    "required": ["v"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/tree",
        },
    )
    assert recursive('{"v":1,"kids":[{"v":2},{"v":3,"kids":[]}]}')
    assert not recursive('{"v":1,"kids":[{"v":10}]}')


def test_enum_values_and_names_are_written_as_json(vocab):
    name = 'q"uote\\'
    values = ['a\\b"c', "\ud800", "é\n", 1.5, [1, {"k": None}]]
    schema = {
        "type": "object",
        "properties": {name: {"enum": values}, "\ud800": {"const": True}},
        "additionalProperties": {"type": "null"},
    }
    accepts = acceptor(vocab, schema)

    def dumps(v):  # raw UTF-8 where possible, a \u escape for the lone surrogate
        return json.dumps(v, ensure_ascii=v == "\ud800")

    for value in values:
        text = "{" + dumps(name) + ": " + dumps(value) + ', "\\ud800": true}'
        assert valid(schema, text) and accepts(text), text
    assert accepts('{"\\ud800": true, "x": null}') and not accepts('{"x": 1}')


PYDANTIC = {  # what pydantic v2 writes for a model with an enum, Optional, a discriminated union
    "$defs": {
        "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
        "Cat": {
            "properties": {
                "pet_type": {"const": "cat", "title": "Pet Type", "type": "string"},
                "lives": {"default": 9, "maximum": 9, "minimum": 0, "type": "integer"},
            },
            "required": ["pet_type"],
            "title": "Cat",
            "type": "object",
        },
        "Dog": {
            "properties": {
                "pet_type": {"const": "dog", "title": "Pet Type", "type": "string"},
                "name": {"maxLength": 20, "title": "Name", "type": "string"},
            },
            "required": ["pet_type", "name"],
            "title": "Dog",
            "type": "object",
        },
    },
    "properties": {
        "id": {"exclusiveMinimum": 0, "title": "Id", "type": "integer"},
        "score": {
            "anyOf": [{"maximum": 1.0, "minimum": 0.0, "type": "number"}, {"type": "null"}],
            "default": None,
        },
        "color": {"$ref": "#/$defs/Color"},
        "tags": {"items": {"type": "string"}, "maxItems": 3, "type": "array"},
        "pet": {
            "discriminator": {
                "mapping": {"cat": "#/$defs/Cat", "dog": "#/$defs/Dog"},
                "propertyName": "pet_type",
            },
            "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
        },
        "when": {"format": "date-time", "type": "string"},
    },
    "required": ["id", "color", "pet"],
    "title": "Model",
    "type": "object",
}


def test_a_pydantic_schema_is_enforced(vocab):
    accepts = acceptor(vocab, PYDANTIC)
    good = [
        '{"id": 5, "score": 0.5, "color": "red", "tags": ["a"], "pet": {"pet_type": "dog", '
        '"name": "Rex"}, "when": "2024-01-01T10:00:00Z"}',
        '{"id": 1, "score": null, "color": "green", "pet": {"pet_type": "cat", "lives": 9}}',
    ]
    bad = [
        '{"id": 0, "color": "red", "pet": {"pet_type": "cat"}}',
        '{"id": 1, "score": 1.5, "color": "red", "pet": {"pet_type": "cat"}}',
        '{"id": 1, "color": "blue", "pet": {"pet_type": "cat"}}',
        '{"id": 1, "color": "red", "pet": {"pet_type": "cat", "lives": 10}}',
        '{"id": 1, "color": "red", "pet": {"pet_type": "dog"}}',
        '{"id": 1, "color": "red", "tags": ["a", "b", "c", "d"], "pet": {"pet_type": "cat"}}',
    ]
    for text in good:
        assert valid(PYDANTIC, text) and accepts(text), text
    for text in bad:
        assert not valid(PYDANTIC, text) and not accepts(text), text


# --- generation: a table of schema features -------------------------------------------------------
SMALL = {"type": "integer", "minimum": -3, "maximum": 3}
FEATURES = {
    "integer range": {"type": "integer", "minimum": 1, "maximum": 3},
    "negative exclusive integers": {
        "type": "integer",
        "exclusiveMinimum": -12,
        "exclusiveMaximum": -3,
    },
    "integer with float bounds": {"type": "integer", "minimum": -2.5, "maximum": 7.9},
    "integer minimum only": {"type": "integer", "minimum": -40},
    "integer maximum only": {"type": "integer", "maximum": -40},
    "integer multipleOf": {"type": "integer", "multipleOf": 7},
    "integer multipleOf in range": {
        "type": "integer",
        "multipleOf": 5,
        "minimum": -20,
        "maximum": 20,
    },
    "number range, decimal bounds": {"type": "number", "minimum": -2.25, "maximum": 0.5},
    "number exclusive bounds": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.01},
    "number multipleOf 0.01": {"type": "number", "multipleOf": 0.01, "minimum": 0, "maximum": 10},
    "number multipleOf 0.25": {"type": "number", "multipleOf": 0.25},
    "integers in an array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 4,
    },
    "numbers in an array": {
        "type": "array",
        "items": {"type": "number", "multipleOf": 0.5, "minimum": -2, "maximum": 2},
        "minItems": 1,
        "maxItems": 3,
    },
    "uniqueItems integers": {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": 5},
        "uniqueItems": True,
        "minItems": 2,
    },
    "uniqueItems enum": {
        "type": "array",
        "items": {"enum": ["red", "green", "blue"]},
        "uniqueItems": True,
        "minItems": 1,
    },
    "nested object": {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "number", "minimum": -1, "maximum": 1},
                    "y": {"type": "integer", "exclusiveMinimum": 0, "maximum": 3},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        },
        "required": ["point"],
    },
    "string lengths": {"type": "string", "minLength": 3, "maxLength": 6},
    "enum": {"enum": ["a", 1, None, True, {"k": [1, 2]}, 'a\\b"c']},
    "enum with type": {"type": "string", "enum": ["x", 2, "y"]},
    "anyOf": {
        "anyOf": [
            {"type": "integer", "minimum": 100, "maximum": 105},
            {"type": "string", "maxLength": 2},
            {"type": "null"},
        ]
    },
    "anyOf with siblings": {
        "type": "integer",
        "minimum": 0,
        "anyOf": [{"maximum": 3}, {"minimum": 10, "maximum": 12}],
    },
    "allOf": {"allOf": [{"type": "integer", "minimum": -5}, {"maximum": 5, "multipleOf": 2}]},
    "oneOf, discriminated": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": "a"}, "n": {"type": "integer", "maximum": -5}},
                "required": ["kind", "n"],
            },
            {
                "type": "object",
                "properties": {"kind": {"const": "b"}, "s": {"type": "string", "maxLength": 2}},
                "required": ["kind"],
            },
        ]
    },
    "$ref with siblings": {
        "$defs": {"small": SMALL},
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/small"},
            "b": {"$ref": "#/$defs/small", "multipleOf": 2},
        },
        "required": ["a", "b"],
    },
    "prefixItems": {
        "type": "array",
        "prefixItems": [{"type": "integer", "minimum": 5, "maximum": 6}, {"type": "boolean"}],
        "items": False,
    },
    "type list": {"type": ["integer", "null"], "minimum": 3, "maximum": 4},
    "format date": {"type": "string", "format": "date"},
    "pattern": {"type": "string", "pattern": "^[a-c]{2,4}-[0-9]{1,3}$"},
}
SEEDS = range(40)
PROMPTS = ["hello", "the cat is", "what is a dog", "1, 2, 3,", "Paris", "-"]


def sample(em, schema=None, *, grammar=None, seeds=SEEDS, max_tokens=100):
    """Generations over seeds, prompts and temperatures 1 and 2 (flatter: closer to uniform)."""
    kw = {"json_schema": schema} if grammar is None else {"grammar": grammar}
    for seed in seeds:
        prompt = PROMPTS[seed % len(PROMPTS)]
        temp = 1.0 + seed % 2
        yield em.generate(prompt, temperature=temp, seed=seed, max_tokens=max_tokens, **kw)


@pytest.mark.parametrize("name", list(FEATURES))
def test_seeded_outputs_validate(em, name):
    schema = FEATURES[name]
    finished = 0
    for g in sample(em, schema):
        if g.finish_reason != "eog":
            assert g.finish_reason == "length", (name, g.finish_reason, g.text)
            continue
        finished += 1
        assert valid(schema, g.text), (name, g.text)
    assert finished >= len(SEEDS) * 0.8, (name, finished)


def test_speculative_decoding_keeps_the_limits(em):
    schema = FEATURES["integers in an array"]
    for seed in range(8):
        g = em.generate(
            "hello", temperature=1.0, seed=seed, max_tokens=100, json_schema=schema, draft_tokens=3
        )
        assert g.finish_reason == "eog" and valid(schema, g.text), g.text


# --- refusals -------------------------------------------------------------------------------------
def refusal(schema) -> str:
    with pytest.raises(InvalidParameterError) as e:
        schema_grammar(schema)
    message = str(e.value)
    assert "\n" not in message and message.startswith(("cannot use this JSON schema", "a JSON"))
    return message


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"type": "integer", "minimum": 5, "maximum": 3}, ['"minimum" 5', '"maximum" 3']),
        ({"minimum": 5, "maximum": 3}, ['"minimum" 5']),
        ({"type": "number", "exclusiveMinimum": 1, "maximum": 1}, ["exclusiveMinimum"]),
        ({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 2}, ["no integer"]),
        ({"type": "integer", "minimum": 1, "maximum": 4, "multipleOf": 5}, ["multiple of 5"]),
        ({"type": "number", "minimum": 0.1, "maximum": 0.2, "multipleOf": 0.25}, ["multiple"]),
        ({"type": "string", "minLength": 4, "maxLength": 2}, ['"minLength" 4']),
        ({"properties": {"a": {"type": "array", "minItems": 3, "maxItems": 1}}}, ["/properties/a"]),
        ({"enum": []}, ['"enum"']),
        ({"type": "integer", "enum": ["a", "b"]}, ['"enum"']),
        ({"enum": [1, 2], "minimum": 3}, ['"enum"']),
        ({"required": ["a"], "additionalProperties": False}, ['required property "a"']),
        (
            {
                "type": "object",
                "properties": {"x": {"type": "integer", "maximum": -1}},
                "required": ["x"],
                "allOf": [{"properties": {"x": {"minimum": 0}}}],
            },
            ["no JSON value"],
        ),  # fmt: skip
        (
            {"type": "object", "properties": {"tags": {"type": "array", "contains": {}}}},
            ['"contains" at /properties/tags is not supported', "supported: type"],
        ),
        (
            {
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
                }
            },  # fmt: skip
            ['"uniqueItems": true at /properties/tags'],
        ),
        ({"not": {"type": "null"}}, ['"not" at the top level']),
        ({"type": "object", "patternProperties": {"^x": {}}}, ['"patternProperties"']),
        ({"type": "string", "format": "email"}, ['"format": "email"', "supported formats"]),
        ({"$ref": "https://example.com/s.json"}, ["local references"]),
        ({"$ref": "#/$defs/missing"}, ["does not exist"]),
        ({"type": "string", "pattern": "^(?=a)b$"}, ['"pattern"', "(?="]),
        ({"type": "string", "pattern": "^a\\bb$"}, ["\\b"]),
        ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, ['"pattern" together']),
        ({"type": "number", "minimum": 0.30000000000000004}, ["significant digits"]),
        ({"type": "integer", "multipleOf": 0}, ['"multipleOf"']),
        ({"type": "integer", "multipleOf": 99991}, ['"multipleOf" at the top level', "too large"]),
        ({"type": "string", "maxLength": 10**6}, ['"maxLength" 1000000']),
        ({"type": "object", "minProperties": 1}, ['"minProperties"']),
        (
            {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]},
            ['"oneOf" at the top level', "alternatives 0 and 1"],
        ),
        (
            {
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                "$ref": "#/$defs/a",
            },
            ["no JSON value"],
        ),  # fmt: skip
        ({"type": "strnig"}, ['"type"']),
        (
            {"$defs": {"a": {"$id": "x", "$ref": "#/$defs/b"}, "b": {}}, "$ref": "#/$defs/a"},
            ['"$id" at /$defs/a sets a new base'],
        ),
        ({"maximun": 3}, ['"maximun" at the top level is not supported']),
    ],
)
def test_unenforceable_or_unsatisfiable_schemas_are_refused(schema, words):
    message = refusal(schema)
    for w in words:
        assert w in message, message


def test_what_is_harmless_is_accepted(vocab):
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/x",
        "title": "T",
        "description": "d",
        "$comment": "c",
        "examples": [1],
        "default": 2,
        "deprecated": False,
        "x-vendor": {"anything": True},
        "type": "integer",
        "uniqueItems": False,
        "minimum": 1,
        "maximum": 2,
    }
    accepts = acceptor(vocab, schema)
    assert accepts("1") and accepts("2") and not accepts("3")


def nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def deep_text(levels: int) -> str:  # no json.dumps: it recurses too
    return (
        '{"type": "object", "properties": {"a": ' * levels + '{"type": "integer"}' + "}}" * levels
    )


def test_deep_nesting_is_one_line_not_a_recursion_error(em, vocab):
    for schema in (nested(2000), deep_text(2000), deep_text(70)):
        assert "nests" in refusal(schema)
    with pytest.raises(InvalidParameterError):
        em.stream("hi", json_schema=deep_text(2000))
    cyclic: dict = {"type": "object", "properties": {}}
    cyclic["properties"]["a"] = cyclic  # a Python dict that contains itself
    assert "nests" in refusal(cyclic)
    shared: dict = {"type": "integer"}
    for _ in range(60):  # 2**60 paths through 61 dicts
        shared = {"anyOf": [shared, shared]}
    assert "values" in refusal(shared)
    assert acceptor(vocab, nested(30))('{"a":' * 30 + "7" + "}" * 30)


def test_cli_refuses_in_one_line(run, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(deep_text(2000))
    for arg, needle in (
        (deep, "nests"),
        ('{"type": "integer", "minimum": 5, "maximum": 3}', "no number satisfies"),
        ('{"type": "array", "uniqueItems": true}', "uniqueItems"),
    ):
        r = run("generate", "--raw", "--json-schema", arg, "hi")
        assert r.exit_code == 1, r.output
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.output
