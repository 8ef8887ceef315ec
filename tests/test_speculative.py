"""Speculative EFT decoding is distribution-preserving: identical greedy tokens, and sampled
tokens that follow the exact EFT distribution (chi-square with a bound that can fail)."""

import numpy as np
import pytest

from localeft import Emulator, Expert
from localeft.sampling import Dist, Sampler, SamplingParams
from localeft.speculative import accept

PROMPTS = ["hello world", "the cat", "a dog is", "Hello"]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("k", [None, 1, 2, 3, 5, 8])
def test_greedy_speculative_equals_plain(em, prompt, k):
    for n in (1, 7, 40):
        plain = em.generate(prompt, max_tokens=n, speculative=False)
        spec = em.generate(prompt, max_tokens=n, speculative=True, draft_tokens=k)
        assert spec.tokens == plain.tokens and spec.text == plain.text
        assert spec.stats.speculative and spec.stats.verifications > 0


@pytest.mark.parametrize("drafter", [0, 1])
def test_greedy_speculative_with_two_experts_and_beta(tiny, drafter):
    em = Emulator(
        base=tiny.large_base,
        experts=[
            Expert(ft=tiny.small_ft, ref=tiny.small_base, weight=0.6),
            Expert(ft=tiny.oracle_small_ft, ref=tiny.small_base, weight=0.4),
        ],
        n_ctx=256,
        drafter=drafter,
    )
    for beta in (0.5, 2.0):
        plain = em.generate("the cat", max_tokens=30, beta=beta, speculative=False)
        spec = em.generate("the cat", max_tokens=30, beta=beta, draft_tokens=4)
        assert spec.tokens == plain.tokens


def test_accept_reject_reproduces_the_target_exactly():
    """The pure rejection sampler: output ~ p whatever q is (here far from p)."""
    rng = np.random.default_rng(0)
    n = 12
    p = rng.dirichlet(np.ones(n) * 0.5)
    q = rng.dirichlet(np.ones(n) * 0.5)
    P, Q = Dist(None, p), Dist(None, q)
    draws = 40000
    out = np.empty(draws, dtype=int)
    for i in range(draws):
        d = int(rng.choice(n, p=q))
        n_acc, rest = accept([P], [Q], [d], rng)
        out[i] = d if n_acc == 1 else rest.sample(rng.random())
    counts = np.bincount(out, minlength=n)
    chi2 = ((counts - draws * p) ** 2 / (draws * p)).sum()
    assert chi2 < (n - 1) + 5 * np.sqrt(2 * (n - 1))
    # acceptance rate is sum(min(p, q)), as theory says
    assert (
        abs(
            np.mean([accept([P], [Q], [int(rng.choice(n, p=q))], rng)[0] for _ in range(4000)])
            - np.minimum(p, q).sum()
        )
        < 0.03
    )


def exact_pair_distribution(em, prompt, params):
    """P(t1, t2) of plain EFT sampling with these settings, from exact probabilities."""
    s = Sampler(params, em.vocab.n_shared)
    d1 = s.dist(em.logprobs(prompt).astype(np.float32))
    table = {}
    for t1, p1 in zip(d1.ids.tolist(), d1.probs.tolist()):
        d2 = s.dist(em.logprobs(prompt, after=[t1]).astype(np.float32))
        for t2, p2 in zip(d2.ids.tolist(), d2.probs.tolist()):
            table[(t1, t2)] = p1 * p2
    return table


@pytest.mark.parametrize(
    "settings", [dict(temperature=1.5, top_k=4), dict(temperature=0.7, top_p=0.6, min_p=0.02)]
)
def test_sampled_speculative_follows_the_exact_eft_distribution(em, settings):
    params = SamplingParams(**settings)
    exact = exact_pair_distribution(em, "the cat", params)
    runs = 1500
    counts: dict = {}
    for seed in range(runs):
        g = em.generate(
            "the cat", max_tokens=2, seed=seed, speculative=True, draft_tokens=3, **settings
        )
        key = tuple(g.tokens)
        assert key in exact, "speculative decoding produced a pair plain sampling never would"
        counts[key] = counts.get(key, 0) + 1
    # chi-square over the pairs with enough expected mass; the rest pooled into one bin
    keys = sorted(exact, key=exact.get, reverse=True)
    big = [k for k in keys if exact[k] * runs >= 5]
    obs = [counts.get(k, 0) for k in big] + [runs - sum(counts.get(k, 0) for k in big)]
    exp = [exact[k] * runs for k in big] + [runs * (1 - sum(exact[k] for k in big))]
    obs, exp = (
        np.array(obs[:-1] if exp[-1] < 1 else obs),
        np.array(exp[:-1] if exp[-1] < 1 else exp),
    )
    chi2 = ((obs - exp) ** 2 / exp).sum()
    dof = len(obs) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


def test_contexts_roll_back_to_the_accepted_prefix(em, make_em):
    """After speculative runs with rejections, continuing gives what a fresh model computes."""
    g = em.generate("a dog is", max_tokens=25, temperature=1.0, seed=3, draft_tokens=6)
    assert g.stats.accepted < g.stats.drafted  # some drafts were rejected and rolled back
    text_after = em.models["base"].detokenize(g.tokens)
    reused = em.logprobs("a dog is", after=g.tokens)
    fresh = make_em()
    # A stale or misplaced KV entry shifts probabilities by O(0.1); what remains (~1e-5) is
    # llama.cpp computing one batch of 25 vs 25 single steps (F16 KV rounding).
    assert np.abs(np.exp(reused) - np.exp(fresh.logprobs("a dog is", after=g.tokens))).max() < 1e-3
    assert text_after == g.text
    for r in em.group.roles:  # every cache holds exactly the tokens its list says
        assert r.ctx.tokens[-len(g.tokens) :] == g.tokens


def test_default_is_plain_decoding_on_a_cpu_and_speculative_when_asked(em):
    assert not em.gpu_offload
    assert not em.generate("hello", max_tokens=4).stats.speculative
    assert em.generate("hello", max_tokens=4, draft_tokens=2).stats.speculative
    assert em.generate("hello", max_tokens=4, speculative=True).stats.speculative


def test_speculative_with_different_prompt_lengths_per_role(make_em):
    """Chat with a plain transcript for the pre-trained models: every context has its own
    prompt length and positions, and rollback must keep each consistent."""
    em = make_em(base_prompt="transcript")
    msgs = [{"role": "user", "content": "hello, the cat is a dog"}]
    prompts = list(em.prompt_tokens(msgs).values())
    assert len(prompts[0]) != len(prompts[1])
    for k in (2, 5):
        plain = em.chat(msgs, max_tokens=30, speculative=False)
        spec = em.chat(msgs, max_tokens=30, draft_tokens=k)
        assert spec.tokens == plain.tokens
        sampled = [
            em.chat(msgs, max_tokens=12, temperature=1.0, seed=s, draft_tokens=k).tokens
            for s in range(3)
        ]
        for i, r in enumerate(
            em.group.roles
        ):  # each cache holds its own prompt + what was generated
            assert r.ctx.tokens[: len(prompts[i])] == prompts[i]
        assert all(len(t) > 0 for t in sampled)
    fresh = make_em(base_prompt="transcript")
    after = sampled[-1]
    diff = np.exp(em.logprobs(msgs, after=after)) - np.exp(fresh.logprobs(msgs, after=after))
    assert np.abs(diff).max() < 1e-3


def test_longest_allowed_draft_runs(em):
    from localeft.speculative import MAX_DRAFT

    plain = em.generate("the cat", max_tokens=40, speculative=False)
    assert em.generate("the cat", max_tokens=40, draft_tokens=MAX_DRAFT).tokens == plain.tokens
