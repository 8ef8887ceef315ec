"""Sampling transforms keep exactly the right tokens; draws follow the distribution; seeds
repeat."""

import numpy as np
import pytest

from localeft import InvalidParameterError, SamplingParams
from localeft.sampling import Sampler


def reference_kept(logits, t, top_k, top_p, min_p):
    """Brute force with a full sort: temperature → top-k → top-p → min-p, HF order."""
    z = np.asarray(logits, dtype=np.float64) / t
    order = np.argsort(-z, kind="stable")
    if top_k:
        order = order[:top_k]
    w = np.exp(z[order] - z[order[0]])
    if top_p < 1:
        cum = np.cumsum(w) / w.sum()
        order, w = order[: np.searchsorted(cum, top_p) + 1], w[: np.searchsorted(cum, top_p) + 1]
    if min_p:
        keep = w >= min_p * w[0]
        order, w = order[keep], w[keep]
    return dict(zip(order.tolist(), (w / w.sum()).tolist()))


def kept(d) -> dict[int, float]:
    """A Dist as {id: probability} over the tokens it keeps (listed or dense)."""
    if d.ids is None:
        ids = np.flatnonzero(d.probs > 0)
        return dict(zip(ids.tolist(), d.probs[ids].tolist()))
    return dict(zip(d.ids.tolist(), d.probs.tolist()))


def assert_keeps_the_reference(logits: np.ndarray, case: dict) -> None:
    """dist() keeps the brute-force reference's tokens with its probabilities."""
    d = Sampler(SamplingParams(**case), logits.size).dist(logits)
    ref = reference_kept(
        logits,
        case["temperature"],
        case.get("top_k", 0),
        case.get("top_p", 1.0),
        case.get("min_p", 0.0),
    )
    got = kept(d)
    assert set(got) == set(ref)
    assert max(abs(got[i] - ref[i]) for i in ref) < 1e-9


CASES = [
    dict(temperature=1.0, top_k=40),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.3, min_p=0.05),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=2.0, top_k=1000, top_p=0.5),
    dict(temperature=1.0, top_p=0.999),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", [600, 151936])
def test_filters_keep_exactly_the_right_tokens(case, n):
    rng = np.random.default_rng(n)
    for trial in range(3):
        logits = (rng.standard_normal(n) * (2 + trial)).astype(np.float32)
        assert_keeps_the_reference(logits, case)


def test_unfiltered_distribution_is_the_softmax():
    logits = np.random.default_rng(1).standard_normal(151936).astype(np.float32) * 3
    d = Sampler(SamplingParams(temperature=0.7), logits.size).dist(logits)
    z = logits.astype(np.float64) / 0.7
    p = np.exp(z - z.max())
    assert np.abs(d.dense(logits.size) - p / p.sum()).max() < 1e-7  # float32 exp, fine vs 1e-5


def test_greedy_is_argmax():
    rng = np.random.default_rng(2)
    for _ in range(20):
        logits = rng.standard_normal(5000).astype(np.float32)
        assert Sampler(SamplingParams(), 5000)(logits) == int(np.argmax(logits))


@pytest.mark.parametrize("case", [dict(temperature=1.0), dict(temperature=0.8, top_k=5, top_p=0.9)])
def test_draws_follow_the_distribution(case):
    """Chi-square goodness of fit over 20,000 draws (fails if draws are biased)."""
    logits = np.random.default_rng(3).standard_normal(30).astype(np.float32) * 1.5
    s = Sampler(SamplingParams(seed=7, **case), 30)
    d = s.dist(logits)
    p = d.dense(30)
    n = 20000
    counts = np.bincount([s.sample(d) for _ in range(n)], minlength=30)
    assert counts[p == 0].sum() == 0  # never draws a filtered token
    keep = p > 0
    chi2 = (((counts[keep] - n * p[keep]) ** 2) / (n * p[keep])).sum()
    dof = keep.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof)  # ~5 sigma bound


@pytest.mark.parametrize("via_dist", [False, True])
def test_temperature_draws_across_blocks_follow_the_softmax(via_dist):
    """A plain temperature draw over a vocabulary of several 4096-token blocks (the draw picks a
    block, then a token in it): heavy tokens on both sides of block edges, the rest pooled."""
    n = 3 * 4096 + 100
    logits = np.full(n, -3.0, dtype=np.float32)
    heavy = np.array([0, 17, 4095, 4096, 8191, 8192, 12287, n - 1])
    logits[heavy] = np.linspace(0.0, 2.0, heavy.size, dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.9, seed=11), n)
    draws = np.array([s.sample(s.dist(logits)) if via_dist else s(logits) for _ in range(20000)])
    z = logits.astype(np.float64) / 0.9
    p = np.exp(z - z.max())
    p /= p.sum()
    expected = np.append(p[heavy], 1 - p[heavy].sum())  # each heavy token, then the pool
    counts = np.append([(draws == h).sum() for h in heavy], (~np.isin(draws, heavy)).sum())
    chi2 = (((counts - 20000 * expected) ** 2) / (20000 * expected)).sum()
    dof = heavy.size
    assert chi2 < dof + 5 * np.sqrt(2 * dof)


def test_same_seed_same_draws():
    logits = np.random.default_rng(4).standard_normal(1000).astype(np.float32)

    def draw(seed):
        return Sampler(SamplingParams(temperature=1, seed=seed), 1000)(logits)

    a = Sampler(SamplingParams(temperature=1.0, seed=5), 1000)
    b = Sampler(SamplingParams(temperature=1.0, seed=5), 1000)
    assert [a(logits) for _ in range(50)] == [b(logits) for _ in range(50)]
    assert draw(1) == draw(1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-1),
        dict(temperature=float("inf")),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(min_p=1),
        dict(top_k=-3),
        dict(top_k=2.5),
        dict(seed="x"),
        dict(seed=-1),
        dict(seed=True),
    ],
)
def test_invalid_settings_are_rejected(kw):
    with pytest.raises(InvalidParameterError):
        SamplingParams(**kw)


@pytest.mark.parametrize("spike", [2.0, 6.0, 12.0])
def test_top_p_on_peaked_distributions(spike):
    """Peaked rows (as real models give) take the single-token shortcut when it is exact."""
    rng = np.random.default_rng(int(spike))
    logits = rng.standard_normal(5000).astype(np.float32)
    logits[123] += spike
    for top_p in (0.5, 0.9, 0.99):
        d = Sampler(SamplingParams(temperature=0.8, top_p=top_p), 5000).dist(logits)
        assert set(kept(d)) == set(reference_kept(logits, 0.8, 0, top_p, 0.0))


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_top_p_from_the_head_of_a_large_vocabulary(top_p):
    """A cluster of likely tokens over a long tail of unlikely ones (as real rows look): the
    nucleus found from the head alone equals the full-sort reference."""
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(151936) - 30).astype(np.float32)
    logits[rng.choice(151936, 50, replace=False)] = rng.standard_normal(50) + 10
    s = Sampler(SamplingParams(temperature=0.8, top_p=top_p), logits.size)
    assert s._nucleus_from_head(logits, float(logits.max()), 1 / 0.8) is not None
    d = s.dist(logits)
    ref = reference_kept(logits, 0.8, 0, top_p, 0.0)
    assert set(d.ids.tolist()) == set(ref)
    got = dict(zip(d.ids.tolist(), d.probs.tolist()))
    assert max(abs(got[i] - ref[i]) for i in ref) < 1e-9


STEP_CASES = [  # greedy, plain temperature, top-p, top-k
    dict(),
    dict(temperature=1.0),
    dict(temperature=0.8, top_p=0.9),
    dict(temperature=1.0, top_k=40),
]


@pytest.mark.parametrize("case", STEP_CASES)
def test_a_step_allocates_nothing_vocabulary_sized(case):
    """combine + sample reuse preallocated buffers: no 152k-sized temporaries per step (NumPy
    reports its array memory to tracemalloc)."""
    import tracemalloc

    from localeft.eft import Combiner, Term

    n = 151936
    rng = np.random.default_rng(5)
    rows = [(rng.standard_normal(n) * 2).astype(np.float32) for _ in range(3)]
    rows[0][:3] += 30  # a peaked row, like a language model's
    comb, s = Combiner(n, 0, [Term(1, 2, 1.0)]), Sampler(SamplingParams(seed=0, **case), n)
    s(comb.combine(rows))  # warm-up
    tracemalloc.start()
    for _ in range(5):
        s(comb.combine(rows))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n, peak  # the smallest vocabulary-sized array, a bool mask, is n bytes


def shaped_rows(n: int) -> dict[str, np.ndarray]:
    """Rows no language model writes but random-weight models and edge cases do: flat
    (Gaussian noise of a random model), plateaus of exactly tied logits, all equal, bimodal."""
    rng = np.random.default_rng(9)
    plateau = np.full(n, -5.0, dtype=np.float32)
    plateau[: n // 3] = 0.0
    plateau[n // 3 : n // 3 + 3] = 0.5
    bimodal = np.concatenate(
        [rng.standard_normal(n // 2) * 0.5 + 4, rng.standard_normal(n - n // 2) * 0.5]
    ).astype(np.float32)
    return {
        "flat": (rng.standard_normal(n) * 0.3).astype(np.float32),
        "plateau": plateau,
        "all equal": np.zeros(n, dtype=np.float32),
        "bimodal": bimodal[rng.permutation(n)],
    }


SHAPE_CASES = [
    dict(temperature=1.0, top_p=0.5),
    dict(temperature=0.8, top_p=0.9),
    dict(temperature=1.0, min_p=0.6),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=6000, top_p=0.7),
    dict(temperature=2.0, top_k=1000),
]


@pytest.mark.parametrize("case", SHAPE_CASES)
@pytest.mark.parametrize("shape", ["flat", "plateau", "all equal", "bimodal"])
def test_every_row_shape_keeps_exactly_the_right_tokens(shape, case):
    n = 151936
    logits = shaped_rows(n)[shape]
    assert_keeps_the_reference(logits, case)


@pytest.mark.parametrize("shape", ["flat", "plateau", "bimodal"])
@pytest.mark.parametrize(
    "case",
    [
        dict(temperature=1.0, top_p=0.5),
        dict(temperature=1.0, min_p=0.8),
        dict(temperature=0.9, top_k=6000, top_p=0.8),
    ],
)
def test_draws_on_flat_rows_follow_the_filtered_distribution(shape, case):
    """The sampling path for large kept sets draws without listing them (rejection from the
    tokens ranked before a rejected draw): draws pooled into 16 bins of equal expected mass
    pass a chi-square test, and never fall outside the kept set."""
    n = 12000
    logits = shaped_rows(n)[shape]
    s = Sampler(SamplingParams(seed=3, **case), n)
    p = s.dist(logits).dense(n)
    draws = np.array([s(logits) for _ in range(6000)])
    assert p[draws].min() > 0
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    bins = np.empty(n, dtype=int)
    bins[order] = np.minimum((cum - p[order] / 2) * 16, 15).astype(int)
    expected = np.bincount(bins, weights=p, minlength=16) * draws.size
    observed = np.bincount(bins[draws], minlength=16)
    keep = expected > 5
    chi2 = (((observed[keep] - expected[keep]) ** 2) / expected[keep]).sum()
    dof = keep.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * max(dof, 1)), (chi2, dof)
