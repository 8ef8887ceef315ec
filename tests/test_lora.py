"""LoRA adapters as the fine-tuned side of EFT: exact against two independent references
(llama-cpp-python's own `Llama(lora_path=...)`, and the adapter merged into the weights by
this test's code), one weight load per file, checks before any weights load, and speculative
decoding with an adapted drafter."""

from __future__ import annotations

import numpy as np
import pytest
from reference import eft_reference, model_logits
from test_speculative import exact_pair_distribution
from tinymodels import write_lora

import localeft.ensemble
from localeft import Emulator, Expert, InvalidParameterError, LoRA, ModelFileError
from localeft.sampling import SamplingParams

PROMPTS = ["hello world", "the cat is a dog", "Hello"]
TOL = 1e-5  # in probability, as tests/test_eft.py


@pytest.fixture(scope="module")
def lora_em(tiny, adapters):
    """The tiny trio with small_ft = small_base + adapter a."""
    e = Emulator(
        large_base=tiny.large_base,
        small_ft=LoRA(tiny.small_base, adapters.a),
        small_base=tiny.small_base,
        n_ctx=256,
    )
    yield e
    e.close()


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_eft_with_an_adapter_equals_the_formula_over_llama_cpp_pythons_lora(
    tiny, adapters, lora_em, beta, prompt
):
    toks = lora_em.models["base"].tokenize(prompt)
    ref = eft_reference(
        model_logits(tiny.large_base, toks),
        [
            (
                model_logits(tiny.small_base, toks, lora=adapters.a),
                model_logits(tiny.small_base, toks),
                beta,
            )
        ],
    )
    got = np.exp(lora_em.logprobs(prompt, beta=beta))
    assert np.abs(got - ref).max() <= TOL
    # and the adapter matters: without it EFT would be the large base alone
    assert np.abs(got - np.exp(lora_em.logprobs(prompt, beta=0.0))).max() > 0.01


def test_eft_with_an_adapter_equals_the_merged_trio(tiny, adapters, lora_em, make_em):
    merged = make_em(small_ft=adapters.merged_a)
    for prompt in PROMPTS:
        for beta in (0.5, 1.0, 2.0):
            a = np.exp(lora_em.logprobs(prompt, beta=beta))
            b = np.exp(merged.logprobs(prompt, beta=beta))
            assert np.abs(a - b).max() <= TOL
    # scores of a continuation too, per model
    s, t = (e.score("the cat", " is a dog") for e in (lora_em, merged))
    for key in s.totals:
        assert s.totals[key].logprob == pytest.approx(t.totals[key].logprob, abs=1e-4)


def test_stacked_adapters_with_scales_equal_their_merge(tiny, adapters, make_em):
    # a: rank 4, alpha 8; b: rank 2, alpha unset (llama.cpp then applies the scale alone),
    # subtracted at half strength; embd: token_embd (the flipped pair) and output
    stacked = make_em(small_ft=LoRA(tiny.small_base, adapters.stack))
    merged = make_em(small_ft=adapters.merged_stack)
    for prompt in PROMPTS:
        a = np.exp(stacked.logprobs(prompt))
        b = np.exp(merged.logprobs(prompt))
        assert np.abs(a - b).max() <= TOL


def test_the_scale_argument_scales_a_bare_adapter(tiny, adapters):
    assert LoRA(tiny.small_base, adapters.a, scale=0.5).adapters[0][1] == 0.5
    pair = LoRA(tiny.small_base, [adapters.a, (adapters.b, 2.0)], scale=0.5).adapters
    assert [s for _, s in pair] == [0.5, 2.0]
    toks = [1, *range(40, 46)]
    e = Emulator(
        large_base=tiny.large_base,
        small_ft=LoRA(tiny.small_base, adapters.a, scale=0.5),
        small_base=tiny.small_base,
        n_ctx=64,
    )
    with e:
        ref = eft_reference(
            model_logits(tiny.large_base, toks),
            [
                (
                    model_logits(tiny.small_base, toks, lora=adapters.a, lora_scale=0.5),
                    model_logits(tiny.small_base, toks),
                    1.0,
                )
            ],
        )
        assert np.abs(np.exp(e.logprobs(toks)) - ref).max() <= TOL


def test_each_file_is_loaded_once(tiny, adapters, lora_em):
    # the adapted and the plain small model are two contexts of one Model
    assert len(lora_em.group.models) == 2
    assert lora_em.models["ft"] is lora_em.models["ref"]
    assert lora_em.group.roles[lora_em.group.drafter].ctx.adapters
    assert lora_em.sources["ft"].adapters == ((adapters.a.resolve(), 1.0),)
    assert lora_em.sources["ref"].adapters == ()


def test_several_adapters_on_one_base_are_experts_over_one_load(tiny, adapters):
    experts = [
        Expert(ft=LoRA(tiny.small_base, adapters.a), ref=tiny.small_base, weight=0.7),
        Expert(ft=LoRA(tiny.small_base, adapters.b), ref=tiny.small_base, weight=-0.4),
    ]
    with Emulator(base=tiny.large_base, experts=experts, n_ctx=128) as e:
        assert len(e.group.models) == 2
        assert len(e.group.roles) == 4  # base, ft0, the shared ref, ft1
        toks = e.models["base"].tokenize("the cat is a dog")
        ref_logits = model_logits(tiny.small_base, toks)
        ref = eft_reference(
            model_logits(tiny.large_base, toks),
            [
                (model_logits(tiny.small_base, toks, lora=adapters.a), ref_logits, 0.7),
                (model_logits(tiny.small_base, toks, lora=adapters.b), ref_logits, -0.4),
            ],
        )
        assert np.abs(np.exp(e.logprobs("the cat is a dog")) - ref).max() <= TOL


def test_an_adapter_on_the_large_base(tiny, adapters):
    # down-scaling-style use: any role may be adapted
    with Emulator(
        base=LoRA(tiny.large_base, adapters.large),
        experts=[Expert(ft=tiny.small_ft, ref=tiny.small_base)],
        n_ctx=64,
    ) as e:
        toks = e.models["base"].tokenize("hello world")
        ref = eft_reference(
            model_logits(tiny.large_base, toks, lora=adapters.large),
            [(model_logits(tiny.small_ft, toks), model_logits(tiny.small_base, toks), 1.0)],
        )
        assert np.abs(np.exp(e.logprobs("hello world")) - ref).max() <= TOL


# --- speculative decoding with an adapted drafter ------------------------------------------
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("k", [None, 1, 3, 8])
def test_greedy_speculative_with_an_adapted_drafter_equals_plain(lora_em, prompt, k):
    plain = lora_em.generate(prompt, max_tokens=24, speculative=False)
    spec = lora_em.generate(prompt, max_tokens=24, speculative=True, draft_tokens=k)
    assert spec.tokens == plain.tokens
    assert spec.stats.drafted > 0


def test_sampled_speculative_with_an_adapted_drafter_follows_the_exact_distribution(lora_em):
    settings = dict(temperature=1.5, top_k=4)
    exact = exact_pair_distribution(lora_em, "the cat", SamplingParams(**settings))
    runs = 1500
    counts: dict = {}
    for seed in range(runs):
        g = lora_em.generate(
            "the cat", max_tokens=2, seed=seed, speculative=True, draft_tokens=3, **settings
        )
        assert tuple(g.tokens) in exact
        counts[tuple(g.tokens)] = counts.get(tuple(g.tokens), 0) + 1
    big = [k for k in exact if exact[k] * runs >= 5]
    obs = np.array([counts.get(k, 0) for k in big] + [runs - sum(counts.get(k, 0) for k in big)])
    exp = np.array([exact[k] * runs for k in big] + [runs * (1 - sum(exact[k] for k in big))])
    if exp[-1] < 1:
        obs, exp = obs[:-1], exp[:-1]
    chi2 = ((obs - exp) ** 2 / exp).sum()
    dof = len(obs) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


# --- checks before any weights load --------------------------------------------------------
@pytest.fixture
def no_weights(monkeypatch):
    """Fails the test if any model's weights start to load."""
    real = localeft.ensemble.Model

    def model(path, *args, vocab_only=False, **kw):
        assert vocab_only, f"weights of {path} loaded before the checks failed"
        return real(path, *args, vocab_only=vocab_only, **kw)

    monkeypatch.setattr(localeft.ensemble, "Model", model)


def bad_adapters(tiny, adapters, tmp_path):
    return {
        "a model given as an adapter": (
            LoRA(tiny.small_base, tiny.small_ft),
            [str(tiny.small_ft), "is a model, not a LoRA adapter"],
        ),
        "another architecture": (
            LoRA(
                tiny.small_base,
                write_lora(tmp_path / "qwen.gguf", tiny.small_base, seed=5, arch="qwen2"),
            ),
            ["is for qwen2 models", str(tiny.small_base), "llama"],
        ),
        "another model's shapes": (
            LoRA(tiny.small_base, adapters.large),
            [str(adapters.large), str(tiny.small_base), "does not fit", "blk.0.attn_k.weight"],
        ),
        "a missing file": (
            LoRA(tiny.small_base, tmp_path / "nope.gguf"),
            ["LoRA adapter file not found", "nope.gguf"],
        ),
        "not a GGUF file": (LoRA(tiny.small_base, tiny.not_gguf), ["not a GGUF file"]),
        "a truncated adapter": (LoRA(tiny.small_base, tmp_path / "cut.gguf"), ["truncated"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "a model given as an adapter",
        "another architecture",
        "another model's shapes",
        "a missing file",
        "not a GGUF file",
        "a truncated adapter",
    ],
)
def test_a_bad_adapter_is_refused_before_any_weights_load(
    tiny, adapters, tmp_path, no_weights, case
):
    data = adapters.a.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:200])
    value, needles = bad_adapters(tiny, adapters, tmp_path)[case]
    with pytest.raises(ModelFileError) as e:
        Emulator(large_base=tiny.large_base, small_ft=value, small_base=tiny.small_base, n_ctx=64)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_an_adapter_given_as_a_model_is_refused_before_any_weights_load(tiny, adapters, no_weights):
    with pytest.raises(ModelFileError, match="is a LoRA adapter, not a model") as e:
        Emulator(
            large_base=tiny.large_base, small_ft=adapters.a, small_base=tiny.small_base, n_ctx=64
        )
    assert str(adapters.a) in str(e.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (("m.gguf", []), "non-empty list"),
        (("m.gguf", 5), "LoRA adapter must be a path"),
        (("m.gguf", "a.gguf", "1"), "LoRA scale must be a number"),
        (("m.gguf", [("a.gguf", float("nan"))]), "scale must be finite"),
        ((None, "a.gguf"), "LoRA model must be a file path"),
    ],
)
def test_bad_lora_arguments_are_invalid_parameters(args, message):
    with pytest.raises(InvalidParameterError, match=message):
        LoRA(*args)


def test_an_adapted_base_over_rpc_is_refused_before_connecting(tiny, adapters):
    with pytest.raises(InvalidParameterError, match="not supported with RPC servers"):
        Emulator(
            large_base=LoRA(tiny.large_base, adapters.large),
            small_ft=tiny.small_ft,
            small_base=tiny.small_base,
            rpc=["127.0.0.1:9"],
        )


def test_the_server_names_the_adapters_it_serves(lora_em):
    """/v1/models lists the adapters beside the model files (what a client checks against)."""
    import httpx
    from liveserver import running

    from localeft.server.app import create_app

    with running(create_app(lora_em, model="tiny")) as url:
        info = httpx.get(url + "/v1/models").json()["data"][0]["localeft"]
    assert info["adapters"] == {k: [list(a) for a in v] for k, v in lora_em.adapters.items()}
    assert info["adapters"]["ft"] and set(info["files"]) >= {"base", "ft", "ref"}
