"""Checks of the tiny GGUF test models themselves (tests/tinymodels.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import llama_cpp
from tinymodels import (
    BASE_VOCAB_SIZE,
    BOS_ID,
    CHATML,
    EOS_ID,
    IM_END_ID,
    IM_START_ID,
    SWAPPED_PIECES,
    TINY_SPECS,
    oracle_logits,
    token_id,
    write_model,
)

MODEL_NAMES = list(TINY_SPECS)


def _load(path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=256,
        n_threads=1,
        n_threads_batch=1,
        logits_all=False,
        verbose=False,
    )


@pytest.fixture(scope="module")
def llms(tiny):
    cache: dict[str, llama_cpp.Llama] = {}

    def get(name: str) -> llama_cpp.Llama:
        if name not in cache:
            cache[name] = _load(getattr(tiny, name))
        return cache[name]

    yield get
    for llm in cache.values():
        llm.close()


def _last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)


def _vocab(llm: llama_cpp.Llama):
    return llama_cpp.llama_model_get_vocab(llm.model)


def _text(llm: llama_cpp.Llama, tok: int) -> bytes:
    return llama_cpp.llama_vocab_get_text(_vocab(llm), tok)


# ---------------------------------------------------------------- writer only


def test_write_is_deterministic(tmp_path):
    variants = [
        dict(seed=7),
        dict(seed=7, zero_blocks=True),
        dict(seed=7, pad_to=BASE_VOCAB_SIZE + 16),
        dict(seed=7, vocab_variant="incompatible", chat_template=None),
    ]
    for i, kw in enumerate(variants):
        a = write_model(tmp_path / f"a{i}.gguf", **kw).read_bytes()
        b = write_model(tmp_path / f"b{i}.gguf", **kw).read_bytes()
        assert a == b, kw
    c = write_model(tmp_path / "c.gguf", seed=8).read_bytes()
    assert c != write_model(tmp_path / "d.gguf", seed=7).read_bytes()


def test_write_is_fast(tmp_path):
    write_model(tmp_path / "warmup.gguf", seed=1)
    t0 = time.perf_counter()
    write_model(tmp_path / "m.gguf", seed=1, n_embd=64, n_layer=3, n_ff=128)
    assert time.perf_counter() - t0 < 0.5


def test_vocab_size_in_range():
    assert 400 <= BASE_VOCAB_SIZE <= 600


def test_oracle_refuses_random_blocks(tiny):
    with pytest.raises(ValueError):
        oracle_logits(tiny.small_ft, 10)


def test_oracle_logits_have_a_spread(tiny):
    lg = oracle_logits(tiny.oracle_small_ft, token_id("\u2581hello"))
    assert lg.dtype == np.float64 and lg.shape == (BASE_VOCAB_SIZE,)
    assert 1.0 < lg.std() < 4.0
    p = np.exp(lg - lg.max())
    p /= p.sum()
    assert 0.02 < p.max() < 0.9  # neither uniform nor one-hot


# ---------------------------------------------------------------- llama.cpp


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_llama_cpp_loads(llms, name):
    llm = llms(name)
    assert llm.n_ctx() == 256
    expected = TINY_SPECS[name].get("pad_to") or BASE_VOCAB_SIZE
    assert llm.n_vocab() == expected
    template = llm.metadata.get("tokenizer.chat_template")
    if name == "no_template":
        assert template is None
    else:
        assert template == CHATML


@pytest.mark.parametrize("name", ["not_gguf", "truncated"])
def test_broken_files_do_not_load(tiny, name):
    with pytest.raises(ValueError):
        _load(getattr(tiny, name))


def test_hello_world_round_trip(llms):
    llm = llms("small_ft")
    toks = llm.tokenize(b"hello world")
    assert toks == [BOS_ID, token_id("\u2581hello"), token_id("\u2581world")]
    assert llm.detokenize(toks[1:]).strip() == b"hello world"


def test_non_ascii_goes_through_byte_tokens(llms):
    llm = llms("small_ft")
    text = "日本€"
    toks = llm.tokenize(text.encode(), add_bos=False)
    assert len(toks) > len(text)
    vocab = _vocab(llm)
    byte_toks = [
        t
        for t in toks
        if llama_cpp.llama_vocab_get_attr(vocab, t) & llama_cpp.LLAMA_TOKEN_ATTR_BYTE
    ]
    assert len(byte_toks) == len(text.encode())  # 3 + 3 + 3 bytes
    assert llm.detokenize(toks).decode().strip() == text
    # "é" is two bytes -> two tokens: a multi-byte char spans several tokens
    assert len(llm.tokenize("é".encode(), add_bos=False)) >= 2


def test_chat_special_tokens(llms):
    llm = llms("small_ft")
    toks = llm.tokenize(b"<|im_start|>user\nhi<|im_end|>", add_bos=False, special=True)
    assert toks[0] == IM_START_ID and toks[-1] == IM_END_ID


def test_eog_tokens(llms):
    llm = llms("small_ft")
    vocab = _vocab(llm)
    assert llama_cpp.llama_vocab_is_eog(vocab, EOS_ID)
    assert llama_cpp.llama_vocab_is_eog(vocab, IM_END_ID)
    assert not llama_cpp.llama_vocab_is_eog(vocab, BOS_ID)
    assert not llama_cpp.llama_vocab_is_eog(vocab, IM_START_ID)
    assert not llama_cpp.llama_vocab_is_eog(vocab, token_id("\u2581hello"))
    assert llama_cpp.llama_vocab_bos(vocab) == BOS_ID
    assert llama_cpp.llama_vocab_eos(vocab) == EOS_ID
    assert llama_cpp.llama_vocab_eot(vocab) == IM_END_ID


@pytest.mark.parametrize("name", ["oracle_small_ft", "oracle_small_base", "oracle_large_base"])
def test_oracle_matches_llama_cpp(tiny, llms, name):
    llm = llms(name)
    path = getattr(tiny, name)
    a, b, c = token_id("\u2581hello"), token_id("\u2581world"), token_id("\u2581cat")
    worst = 0.0
    for tok in [a, b, c, IM_START_ID, token_id("<0xC3>")]:
        llm.reset()
        llm.eval([BOS_ID, tok])  # position 1
        worst = max(worst, np.abs(_last_logits(llm) - oracle_logits(path, tok)).max())
        llm.eval([c, b, tok])  # positions 2..4, after other context
        worst = max(worst, np.abs(_last_logits(llm) - oracle_logits(path, tok)).max())
    assert worst <= 1e-4


def test_random_blocks_depend_on_context(llms):
    llm = llms("small_ft")
    a, b, c = token_id("\u2581hello"), token_id("\u2581world"), token_id("\u2581cat")
    llm.reset()
    llm.eval([BOS_ID, a, c])
    x = _last_logits(llm).copy()
    llm.reset()
    llm.eval([BOS_ID, b, c])
    y = _last_logits(llm)
    assert np.abs(x - y).max() > 0.05


def test_padded_vocab(llms):
    base, padded = llms("large_base"), llms("padded")
    assert padded.n_vocab() == base.n_vocab() + 16
    for t in range(base.n_vocab()):
        assert _text(padded, t) == _text(base, t)
    pad = base.n_vocab()
    assert _text(padded, pad) == f"[PAD{pad}]".encode()
    assert llama_cpp.llama_vocab_get_attr(_vocab(padded), pad) & llama_cpp.LLAMA_TOKEN_ATTR_UNUSED
    # same seed: identical logits on the shared ids
    toks = base.tokenize(b"hello world the cat")
    base.reset()
    base.eval(toks)
    x = _last_logits(base).copy()
    padded.reset()
    padded.eval(toks)
    y = _last_logits(padded)
    assert np.abs(x - y[:pad]).max() <= 1e-4


def test_incompatible_vocab(llms):
    ft, bad = llms("small_ft"), llms("incompatible")
    assert ft.n_vocab() == bad.n_vocab()
    diff = [t for t in range(ft.n_vocab()) if _text(ft, t) != _text(bad, t)]
    assert sorted(diff) == sorted(token_id(p) for p in SWAPPED_PIECES)
    vocab = _vocab(bad)
    assert all(
        llama_cpp.llama_vocab_get_attr(vocab, t) & llama_cpp.LLAMA_TOKEN_ATTR_NORMAL for t in diff
    )
