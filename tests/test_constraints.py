"""Grammars, JSON schemas, penalties and logit bias: outputs always follow the grammar, penalties
equal llama.cpp's semantics computed by hand, and speculative decoding stays exact with them
(greedy: identical tokens; sampled: a chi-square test against the exact constrained
distribution computed from reference logits)."""

from __future__ import annotations

import json
import math

import jsonschema
import llama_cpp
import numpy as np
import pytest
from tinymodels import token_id

from localeft import InvalidParameterError
from localeft import backend
from localeft.constraints import Constraints, Penalties
from localeft.grammar import Grammar

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "maybe"]},
        "ok": {"type": "boolean"},
    },
    "required": ["answer", "ok"],
    "additionalProperties": False,
}
TWO = r"root ::= [a-e] [a-e]"  # two letters: 25 outcomes, a small exact distribution


# --- penalties, by hand ---------------------------------------------------------------------------
def llama_cpp_penalties(row, history, p: Penalties, n_ctx=256):
    """llama.cpp's llama_sampler_penalties_apply, written out token by token."""
    out = row.astype(np.float64).copy()
    for tok, bias in p.logit_bias.items():
        out[tok] += bias
    n = n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
    window = history[-n:] if n else []
    for tok in set(window):
        count = window.count(tok)
        if out[tok] <= 0:
            out[tok] *= p.repeat_penalty
        else:
            out[tok] /= p.repeat_penalty
        out[tok] -= count * p.frequency_penalty + p.presence_penalty
    return out


@pytest.mark.parametrize(
    "settings",
    [
        dict(repeat_penalty=1.3),
        dict(repeat_penalty=0.8, repeat_last_n=5),
        dict(frequency_penalty=0.7, presence_penalty=0.4, repeat_last_n=-1),
        dict(repeat_penalty=1.1, frequency_penalty=0.2, logit_bias={3: -2.5, 7: 1.5}),
        dict(repeat_penalty=2.0, repeat_last_n=0),  # off
    ],
)
def test_penalties_equal_llama_cpp_semantics(em, settings):
    rng = np.random.default_rng(1)
    row = em.logprobs("the cat is a dog").astype(np.float32) + 7.0  # mixed signs
    history = [int(x) for x in rng.integers(0, 40, size=30)] + [3, 3, 3, 9]
    p = Penalties.checked(row.size, **settings)
    got = Constraints(p, list(history), None, 256).apply(row.copy())
    want = llama_cpp_penalties(row, history, p)
    assert np.allclose(got, want, atol=1e-5, rtol=1e-6)
    assert (got != row).any() == p.active


@pytest.mark.parametrize(
    "kw",
    [
        dict(repeat_penalty=0),
        dict(repeat_last_n=-2),
        dict(presence_penalty="1"),
        dict(logit_bias={"x": 1}),
        dict(logit_bias={10**9: 1}),
        dict(logit_bias=[1, 2]),
        dict(grammar="root ::= foo"),
        dict(grammar='rot ::= "x"'),
        dict(json_schema='{"type": "obj'),
        dict(json_schema={"type": "object", "properties": {"a": {"type": "nonsense"}}}),
        dict(grammar='root ::= "x"', json_schema={"type": "object"}),
    ],
)
def test_bad_constraints_are_errors_before_any_decoding(em, kw):
    with pytest.raises(InvalidParameterError):
        em.stream("hello", **kw)


# --- grammars -------------------------------------------------------------------------------------
@pytest.mark.parametrize("speculative", [False, True])
def test_json_schema_output_always_parses_and_validates(em, speculative):
    for seed in range(12):
        g = em.generate(
            "hello",
            max_tokens=80,
            temperature=1.3,
            seed=seed,
            json_schema=SCHEMA,
            speculative=speculative,
            draft_tokens=3 if speculative else None,
        )
        assert g.finish_reason == "eog", (g.finish_reason, g.text)
        jsonschema.validate(json.loads(g.text), SCHEMA)


def test_grammar_outputs_over_many_seeds(em):
    grammar = r'root ::= ("yes" | "no") ", " [0-9] [0-9]? "."'
    import re

    for seed in range(25):
        kw = dict(temperature=1.0, seed=seed, grammar=grammar, max_tokens=20)
        if seed % 3 == 1:
            kw.update(top_k=8, top_p=0.9)
        if seed % 3 == 2:
            kw.update(draft_tokens=2)
        g = em.generate("the cat", **kw)
        assert re.fullmatch(r"(yes|no), [0-9][0-9]?\.", g.text), g.text
        assert g.finish_reason == "eog"


def test_greedy_speculative_equals_plain_with_grammars_and_penalties(em):
    cases = [
        dict(json_schema=SCHEMA),
        dict(grammar=r'root ::= [a-z ]+ "."'),
        dict(repeat_penalty=1.4, frequency_penalty=0.3, presence_penalty=0.2),
        dict(grammar=r"root ::= [a-z ]+", repeat_penalty=1.2, logit_bias={token_id("e"): 2.0}),
    ]
    for kw in cases:
        plain = em.generate("hello world", max_tokens=40, speculative=False, **kw)
        for k in (1, 3, 6):
            spec = em.generate("hello world", max_tokens=40, draft_tokens=k, **kw)
            assert spec.tokens == plain.tokens, (kw, k)


def test_a_grammar_no_token_can_continue_ends_with_finish_reason_grammar(em):
    banned = {token_id("q"): -math.inf, token_id("<0x71>"): -math.inf}
    for kw in (dict(), dict(temperature=1.0, seed=1), dict(draft_tokens=3)):
        g = em.generate("hello", max_tokens=10, grammar='root ::= "qq"', logit_bias=banned, **kw)
        assert g.finish_reason == "grammar" and g.text == ""
    assert em.generate("hello", max_tokens=10, grammar='root ::= "qq"').text == "qq"


def test_grammar_state_branches_and_rolls_back(em):
    g = Grammar(em.models["ft"], TWO)
    a, b = token_id("a"), token_id("b")
    branch = g.clone()
    branch.accept(a)
    branch.accept(b)
    assert g.allows(a) and not g.allows(token_id("▁a"))
    row = np.zeros(em.vocab.n_shared, dtype=np.float32)
    allowed = np.flatnonzero(np.isfinite(g.mask(row.copy())))
    assert a in allowed and b in allowed and len(allowed) < 40
    done = np.flatnonzero(np.isfinite(branch.mask(row.copy())))  # only end of generation now
    assert all(em.models["ft"].is_eog(int(t)) for t in done)


# --- exact distributions --------------------------------------------------------------------------
def raw_rows(tiny, tokens) -> dict[str, np.ndarray]:
    """Each model's next-token logits from llama-cpp-python's own Llama (float64)."""
    out = {}
    for label, path in (("base", tiny.large_base), ("ft", tiny.small_ft), ("ref", tiny.small_base)):
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=256, n_threads=1, verbose=False, flash_attn=True
        )
        llm.eval(tokens)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        out[label] = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
        llm.close()
    return out


def exact_pairs(em, tiny, settings: dict, p: Penalties) -> dict[tuple[int, int], float]:
    """P(t1, t2) of EFT sampling under grammar TWO and the penalties, from reference logits:
    combined raw logits, penalties by hand, the grammar's allowed set, temperature, top-k."""
    prompt = em.prompt_tokens("the cat")["ft"]
    grammar = Grammar(em.models["ft"], TWO)
    n = em.vocab.n_shared

    def dist(tokens, state):
        r = raw_rows(tiny, tokens)
        combined = (r["base"] + r["ft"] - r["ref"])[:n]
        z = llama_cpp_penalties(combined, tokens, p)
        allowed = np.isfinite(state.mask(np.zeros(n, dtype=np.float32)))
        z = np.where(allowed, z, -np.inf) / settings.get("temperature", 1.0)
        if settings.get("top_k"):
            z[np.argsort(-z)[settings["top_k"] :]] = -np.inf
        w = np.exp(z - z.max())
        return w / w.sum()

    table = {}
    d1 = dist(prompt, grammar)
    for t1 in np.flatnonzero(d1 > 0):
        state = grammar.clone()
        state.accept(int(t1))
        d2 = dist(prompt + [int(t1)], state)
        for t2 in np.flatnonzero(d2 > 0):
            table[(int(t1), int(t2))] = d1[t1] * d2[t2]
    return table


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=1.0),  # draw first, grammar asked about the drawn token alone
        dict(temperature=0.8, top_k=6),  # grammar mask first
    ],
)
def test_sampled_tokens_follow_the_exact_constrained_distribution(em, tiny, settings):
    penalty = dict(repeat_penalty=1.5, presence_penalty=0.6, frequency_penalty=0.3)
    p = Penalties.checked(em.vocab.n_shared, **penalty)
    exact = exact_pairs(em, tiny, settings, p)
    assert abs(sum(exact.values()) - 1) < 1e-9
    runs = 1200
    for spec in (False, True):
        counts: dict = {}
        for seed in range(runs):
            g = em.generate(
                "the cat",
                max_tokens=3,
                seed=seed,
                grammar=TWO,
                speculative=spec,
                draft_tokens=2 if spec else None,
                **penalty,
                **settings,
            )
            key = tuple(g.tokens)
            assert key in exact, (key, spec)
            counts[key] = counts.get(key, 0) + 1
        keys = sorted(exact, key=exact.get, reverse=True)
        big = [k for k in keys if exact[k] * runs >= 5]
        obs = [counts.get(k, 0) for k in big] + [runs - sum(counts.get(k, 0) for k in big)]
        exp = [exact[k] * runs for k in big] + [runs * (1 - sum(exact[k] for k in big))]
        if exp[-1] < 1:
            obs, exp = obs[:-1], exp[:-1]
        obs, exp = np.array(obs), np.array(exp)
        chi2 = ((obs - exp) ** 2 / exp).sum()
        dof = len(obs) - 1
        assert chi2 < dof + 5 * np.sqrt(2 * dof), (spec, chi2, dof)


# --- command line ---------------------------------------------------------------------------------


def test_cli_json_schema_grammar_file_and_penalties(run, tmp_path):
    r = run(
        "generate",
        "--raw",
        "--json-schema",
        json.dumps(SCHEMA),
        "--temp",
        "1",
        "--seed",
        "4",
        "hello",
    )
    assert r.exit_code == 0, r.output
    jsonschema.validate(json.loads(r.stdout), SCHEMA)
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(SCHEMA))
    assert json.loads(run("generate", "--raw", "--json-schema", schema_file, "hi").stdout)
    gbnf = tmp_path / "yn.gbnf"
    gbnf.write_text('root ::= "yes" | "no"\n')
    assert run("generate", "--raw", "--grammar", gbnf, "hi").stdout.strip() in ("yes", "no")
    out = run("generate", "--raw", "--json-output", "-n", "200", "--json", "hi")
    data = json.loads(out.stdout)
    assert data["finish_reason"] in ("eog", "length")
    if data["finish_reason"] == "eog":
        assert isinstance(json.loads(data["text"]), dict)
    e = token_id("e")
    r = run(
        "generate",
        "--raw",
        "-n",
        "30",
        "--json",
        "-l",
        f"{e}-inf",
        "--repeat-penalty",
        "1.3",
        "--frequency-penalty",
        "0.5",
        "hello",
    )
    assert r.exit_code == 0 and e not in json.loads(r.stdout)["tokens"]


def test_cli_bad_grammars_fail_before_the_models_load(run, tmp_path, monkeypatch):
    loads = []
    real = backend.Model.__init__

    def counting(self, path, *a, vocab_only=False, **k):
        if not vocab_only:
            loads.append(path)
        real(self, path, *a, vocab_only=vocab_only, **k)

    monkeypatch.setattr(backend.Model, "__init__", counting)
    bad = tmp_path / "bad.gbnf"
    bad.write_text("root ::= foo\n")
    for args, needle in (
        (["--grammar", bad], "Undefined rule identifier 'foo'"),
        (["--json-schema", '{"type": "obj'], "not JSON"),
        (["--grammar", tmp_path / "absent.gbnf"], "cannot read the grammar file"),
        (
            ["--json-schema", '{"type": "object", "properties": {"a": {"type": "x"}}}'],
            "cannot use this JSON schema",
        ),
    ):
        r = run("generate", "--raw", *args, "hi")
        assert r.exit_code == 1 and needle in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1
    assert loads == []
    r = run("generate", "--raw", "--grammar", bad, "--json-output", "hi")
    assert r.exit_code == 2
