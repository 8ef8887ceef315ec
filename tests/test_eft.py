"""EFT distributions against independent float64 references (tolerance 1e-5 in probability)."""

import numpy as np
import pytest
from reference import eft_reference, model_logits
from tinymodels import oracle_logits

from localeft import Emulator, Expert, InvalidParameterError, VocabMismatchError
from localeft.eft import Combiner, Term, log_softmax

PROMPTS = ["hello world", "the cat is a dog", "Hello"]
TOL = 1e-5


def tokens_for(em: Emulator, text: str) -> list[int]:
    return em.models["base"].tokenize(text)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_upscaling_matches_float64_reference(tiny, em, beta, prompt):
    toks = tokens_for(em, prompt)
    ref = eft_reference(
        model_logits(tiny.large_base, toks),
        [(model_logits(tiny.small_ft, toks), model_logits(tiny.small_base, toks), beta)],
    )
    got = np.exp(em.logprobs(prompt, beta=beta))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= TOL
    assert abs(got.sum() - 1) < 1e-9


def test_downscaling_matches_reference(tiny):
    # small base + (large fine-tuned − large base): roles are what the paper's down-scaling uses.
    em = Emulator(
        base=tiny.small_base, experts=[Expert(ft=tiny.small_ft, ref=tiny.large_base)], n_ctx=256
    )
    toks = tokens_for(em, "hello world")
    ref = eft_reference(
        model_logits(tiny.small_base, toks),
        [(model_logits(tiny.small_ft, toks), model_logits(tiny.large_base, toks), 1.0)],
    )
    assert np.abs(np.exp(em.logprobs("hello world")) - ref).max() <= TOL


def test_two_experts_interpolate(tiny):
    lam = 0.7
    em = Emulator(
        base=tiny.large_base,
        experts=[
            Expert(ft=tiny.small_ft, ref=tiny.small_base, weight=lam),
            Expert(ft=tiny.oracle_small_ft, ref=tiny.small_base, weight=1 - lam),
        ],
        n_ctx=256,
    )
    # the shared ref is loaded once, and gets one context
    assert len(em.group.models) == 4 and len(em.group.roles) == 4
    toks = tokens_for(em, "the cat")
    L = lambda p: model_logits(p, toks)  # noqa: E731
    ref = eft_reference(
        L(tiny.large_base),
        [
            (L(tiny.small_ft), L(tiny.small_base), lam),
            (L(tiny.oracle_small_ft), L(tiny.small_base), 1 - lam),
        ],
    )
    assert np.abs(np.exp(em.logprobs("the cat")) - ref).max() <= TOL


def test_beta_zero_is_the_base_model_exactly(tiny, em):
    toks = tokens_for(em, "hello world")
    base = np.exp(log_softmax(model_logits(tiny.large_base, toks)))
    assert np.abs(np.exp(em.logprobs("hello world", beta=0)) - base).max() <= 1e-6
    g0 = em.generate("hello world", beta=0, max_tokens=12, speculative=False)
    gb = em.generate("hello world", mode="base", max_tokens=12)
    assert g0.tokens == gb.tokens


def test_expert_with_ft_equal_ref_changes_nothing(tiny):
    em = Emulator(
        base=tiny.large_base, experts=[Expert(ft=tiny.small_base, ref=tiny.small_base)], n_ctx=256
    )
    toks = tokens_for(em, "hello")
    base = np.exp(log_softmax(model_logits(tiny.large_base, toks)))
    assert np.abs(np.exp(em.logprobs("hello", beta=2.0)) - base).max() <= 1e-6


def test_matches_hand_computed_oracle(tiny):
    """Zeroed blocks: logits depend only on the last token, computed from the weights alone."""
    em = Emulator(
        large_base=tiny.oracle_large_base,
        small_ft=tiny.oracle_small_ft,
        small_base=tiny.oracle_small_base,
        n_ctx=256,
        beta=1.5,
    )
    for text in ["hello", "a dog is the"]:
        last = tokens_for(em, text)[-1]
        large, ft, base = (
            oracle_logits(p, last)
            for p in (tiny.oracle_large_base, tiny.oracle_small_ft, tiny.oracle_small_base)
        )
        ref = eft_reference(large, [(ft, base, 1.5)])
        assert np.abs(np.exp(em.logprobs(text)) - ref).max() <= TOL


def test_padded_vocabulary_combines_over_shared_range(tiny):
    em = Emulator(
        large_base=tiny.padded, small_ft=tiny.small_ft, small_base=tiny.small_base, n_ctx=256
    )
    assert em.vocab.padded and em.vocab.n_shared < em.models["base"].n_vocab
    toks = tokens_for(em, "hello world")
    ref = eft_reference(
        model_logits(tiny.padded, toks),
        [(model_logits(tiny.small_ft, toks), model_logits(tiny.small_base, toks), 1.0)],
    )
    got = np.exp(em.logprobs("hello world"))
    assert got.size == em.vocab.n_shared
    assert np.abs(got - ref).max() <= TOL
    g = em.generate("hello world", max_tokens=20, temperature=1.0, seed=1)
    assert all(t < em.vocab.n_shared for t in g.tokens)


def test_incompatible_vocabulary_is_a_clear_error(tiny, make_em):
    with pytest.raises(VocabMismatchError, match=r"token \d+ is '.*' in one and '.*' in the other"):
        make_em(small_ft=tiny.incompatible)


def test_raw_logits_combination_equals_log_softmax_combination():
    """The identity the engine relies on, on random vectors with very different normalisers."""
    rng = np.random.default_rng(0)
    rows = [
        rng.normal(scale=s, size=1000).astype(np.float32) + off
        for s, off in [(3, 50), (2, -20), (5, 7)]
    ]
    c = Combiner(1000, 0, [Term(1, 2, 1.3)])
    got = np.exp(log_softmax(c.combine(rows)))
    ref = eft_reference(rows[0], [(rows[1], rows[2], 1.3)])
    assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("beta", [-1, float("nan"), "x"])
def test_bad_beta_is_rejected(em, beta):
    with pytest.raises(InvalidParameterError, match="beta"):
        em.logprobs("hello", beta=beta)
    with pytest.raises(InvalidParameterError, match="beta"):
        em.stream("hello", beta=beta)
    with pytest.raises(InvalidParameterError, match="beta"):
        em.beta = beta
