"""Generation through the Emulator: stops, streaming, chat, seeds, KV reuse, bad input."""

import pytest
from tinymodels import CHATML, IM_END_ID  # noqa: F401

from localeft import (
    ContextOverflowError,
    Emulator,
    InvalidParameterError,
    LocaleftError,
    ModelFileError,
)
from localeft.prompts import render_template, render_transcript
from localeft.textstream import TextStream


def test_max_tokens_and_stream_pieces_add_up(em):
    s = em.stream("hello world", max_tokens=17, speculative=False)
    pieces = list(s)
    g = s.generation
    assert g.finish_reason == "length" and len(g.tokens) == 17
    assert "".join(pieces) == g.text
    assert g.stats.generated_tokens == 17 and g.stats.ms_per_token > 0


def test_stop_string_cuts_output_and_is_never_streamed(em):
    full = em.generate("the cat", max_tokens=40, temperature=0.0, speculative=False).text
    stop = full[10:13]
    assert len(stop) == 3 and stop in full
    s = em.stream("the cat", max_tokens=40, stop=[stop], speculative=False)
    streamed = "".join(s)
    g = s.generation
    assert g.finish_reason == "stop"
    assert g.text == full[: full.index(stop)] == streamed


def test_end_of_generation_token_stops(em, monkeypatch):
    greedy = em.generate("hello", max_tokens=10, speculative=False).tokens
    ft = em.models["ft"]
    monkeypatch.setattr(ft, "is_eog", lambda t: t == greedy[4])
    g = em.generate("hello", max_tokens=10, speculative=False)
    assert g.finish_reason == "eog"
    assert g.tokens == greedy[:4]  # the EOG token itself is not part of the output


def test_utf8_is_streamed_whole_characters(em):
    model = em.models["ft"]
    toks = model.tokenize("日本€ ok", add_bos=False)
    assert len(toks) > len("日本€ ok")  # multi-byte characters span several byte tokens
    ts = TextStream()
    pieces = [ts.feed(model.piece(t)) for t in toks] + [ts.finish()]
    assert "".join(pieces).lstrip(" ") == "日本€ ok"  # SentencePiece adds a leading space
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # a lone leading byte of 日 shows nothing until the character is whole


def test_stop_string_split_across_tokens_is_held_back():
    ts = TextStream(stops=["END"])
    out = [ts.feed(b) for b in [b"abc E", b"N", b"D more"]]
    assert out == ["abc ", "", ""] and ts.stopped and ts.text == "abc "


def test_seeded_sampling_repeats_and_seeds_differ(em):
    kw = dict(max_tokens=20, temperature=1.0, top_p=0.95, speculative=False)
    a = em.generate("hello", seed=11, **kw).tokens
    assert a == em.generate("hello", seed=11, **kw).tokens
    assert a != em.generate("hello", seed=12, **kw).tokens


def test_chat_uses_the_fine_tuned_template_for_every_role(em):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    text = render_template(em.models["ft"], msgs)
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    prompts = list(em.prompt_tokens(msgs).values())
    ft = em.models["ft"].tokenize(text, add_bos=False)
    assert prompts[1][-len(ft) :] == ft and em.models["ft"].detokenize(prompts[0]).endswith("")
    assert len(set(map(tuple, prompts))) == 1  # same templated text for base and ref
    g = em.chat(msgs, max_tokens=8)
    assert g.stats.prompt_tokens == len(prompts[0]) and len(g.tokens) <= 8


def test_chat_transcript_rendering_for_base_models(make_em):
    em = make_em(base_prompt="transcript")
    msgs = [{"role": "user", "content": "hello"}]
    prompts = list(em.prompt_tokens(msgs).values())
    assert em.models["base"].detokenize(prompts[0]).strip() == render_transcript(msgs).strip()
    assert "<|im_start|>" not in render_transcript(msgs) and prompts[0] != prompts[1]
    assert em.chat(msgs, max_tokens=5).finish_reason in ("length", "eog")


def test_model_without_template_falls_back_to_transcript(tiny, make_em):
    em = make_em(small_ft=tiny.no_template)
    assert em.chat([{"role": "user", "content": "hi"}], max_tokens=3).tokens


def test_second_chat_turn_evaluates_only_new_tokens(em):
    turn1 = [{"role": "user", "content": "hello"}]
    g1 = em.chat(turn1, max_tokens=8, speculative=False)
    turn2 = turn1 + [
        {"role": "assistant", "content": g1.text},
        {"role": "user", "content": "the cat is a dog"},
    ]
    g2 = em.chat(turn2, max_tokens=4, speculative=False)
    n_roles = len(em.group.roles)
    new_tokens = g2.stats.prompt_tokens - g1.stats.prompt_tokens
    # The whole first-turn prompt is reused from every KV cache; only what follows it is decoded.
    assert 0 < g2.stats.prompt_evaluated <= n_roles * new_tokens
    assert g2.stats.prompt_evaluated < n_roles * g2.stats.prompt_tokens
    # Asking again for the same conversation decodes (at most) one token per context.
    g3 = em.chat(turn2, max_tokens=4, speculative=False)
    assert g3.stats.prompt_evaluated <= n_roles and g3.tokens == g2.tokens


def test_generation_stops_when_the_context_is_full(make_em):
    em = make_em(n_ctx=16)
    for spec in (False, True):
        g = em.generate("hello", max_tokens=100, speculative=spec)
        assert g.finish_reason == "context" and 0 < len(g.tokens) <= 16


def test_prompt_longer_than_context_is_a_clear_error(make_em):
    em = make_em(n_ctx=16)
    with pytest.raises(
        ContextOverflowError, match="the prompt is .* tokens but the context holds 16"
    ):
        em.generate("the cat is a dog " * 10)


@pytest.mark.parametrize(
    "field,match", [("not_gguf", "not a GGUF file"), ("truncated", "cannot load")]
)
def test_bad_model_files_are_clear_errors(tiny, field, match):
    with pytest.raises(ModelFileError, match=match):
        Emulator(
            large_base=getattr(tiny, field),
            small_ft=tiny.small_ft,
            small_base=tiny.small_base,
            n_ctx=64,
        )


def test_missing_model_file(tiny, tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        Emulator(
            large_base=tmp_path / "nope.gguf", small_ft=tiny.small_ft, small_base=tiny.small_base
        )


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-0.5),
        dict(top_p=2),
        dict(min_p=-1),
        dict(max_tokens=0),
        dict(mode="medium"),
        dict(beta=-2),
        dict(draft_tokens=0),
        dict(draft_tokens=16),  # verification would need 17 logits rows in one decode
    ],
)
def test_bad_settings_raise_before_any_work(em, kw):
    with pytest.raises(InvalidParameterError):
        em.stream("hello", **kw)


def test_empty_prompt_and_bad_construction(tiny, em, make_em):
    with pytest.raises(InvalidParameterError, match="empty"):
        em.generate("")
    with pytest.raises(InvalidParameterError):
        Emulator(large_base=tiny.large_base, small_ft=tiny.small_ft)
    with pytest.raises(InvalidParameterError):
        make_em(n_ctx=0)
    with pytest.raises(LocaleftError):
        em.chat([])


def test_single_model_modes(em):
    base = em.generate("hello", mode="base", max_tokens=6)
    ft = em.generate("hello", mode="ft", max_tokens=6)
    assert set(base.stats.model_seconds) == {"base"} and set(ft.stats.model_seconds) == {"ft"}
    assert len(base.tokens) == len(ft.tokens) == 6


def test_overlapped_cpu_steps_give_the_same_tokens(make_em):
    together, apart = make_em(n_threads=2, overlap=True), make_em(n_threads=2, overlap=False)
    assert together.overlap and not apart.overlap
    # the larger base model gets the larger share of the cores for single-token steps
    assert [r.ctx.n_threads_step for r in together.group.roles] == [1, 1, 1]
    for kw in (dict(), dict(temperature=0.9, seed=4), dict(mode="base"), dict(draft_tokens=3)):
        a = together.generate("the cat", max_tokens=20, **kw)
        b = apart.generate("the cat", max_tokens=20, **kw)
        assert a.tokens == b.tokens, kw
    assert [r.ctx.n_threads_step for r in together.group.roles] == [
        1,
        1,
        1,
    ]  # restored after mode=base


def test_step_thread_split_follows_model_size():
    from localeft.ensemble import step_threads as _step_threads

    assert _step_threads([4700, 680, 530], 8, enabled=True) == [6, 2, 2]
    assert _step_threads([1100, 490, 490], 2, enabled=True) == [1, 1, 1]
    assert _step_threads([100, 5000, 5000], 4, enabled=True) == [1, 3, 3]
    assert _step_threads([1, 1], 1, enabled=True) is None
    assert _step_threads([1, 1], 8, enabled=False) is None


def test_the_cpu_layout_is_measured_on_the_first_steps_and_kept(make_em):
    em = make_em(n_threads=2)
    assert em.group.has_layouts and em.group.layout_probe is None
    g = em.generate("the cat", max_tokens=12, speculative=False)
    probe = em.group.layout_probe
    assert set(probe) == {"overlap", "sequential"} and all(v > 0 for v in probe.values())
    assert em.group.layout == min(probe, key=probe.get)
    assert g.stats.layout == em.group.layout and g.stats.layout_probe == probe
    threads = [r.ctx.n_threads_step for r in em.group.roles]
    assert threads == ([1, 1, 1] if em.overlap else [2, 2, 2])
    # the choice changes no token: both layouts compute the same steps
    again = em.generate("the cat", max_tokens=12, speculative=False)
    with em.group.layout_as("sequential"):
        seq = em.generate("the cat", max_tokens=12, speculative=False)
    with em.group.layout_as("overlap"):
        ovl = em.generate("the cat", max_tokens=12, speculative=False)
    assert g.tokens == again.tokens == seq.tokens == ovl.tokens
    assert em.group.layout_probe == probe  # decided once, kept
    forced = make_em(n_threads=2, overlap=False)
    forced.generate("the cat", max_tokens=12, speculative=False)
    assert forced.group.layout == "sequential" and forced.group.layout_probe is None
    single = make_em(n_threads=1)
    assert not single.group.has_layouts
    assert single.generate("the cat", max_tokens=3).stats.layout == ""
