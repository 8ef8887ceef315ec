"""Deterministic generator of TINY GGUF models for the test suite.

Every model is a real (if tiny) llama-architecture GGUF that llama.cpp loads:
F32 tensors, a SentencePiece-style ("llama") tokenizer with byte fallback,
ChatML special tokens and (optionally) a ChatML chat template.

Public API
----------
write_model(path, *, seed, ...) -> Path
    Write one model.  Same arguments -> byte-identical file.
oracle_logits(path, token_id) -> np.ndarray (float64)
    Exact next-token logits of a ``zero_blocks=True`` model, computed in NumPy.
build_vocab(vocab_variant="default", pad_to=None) -> (tokens, scores, types)
    The tokenizer written by write_model (useful to predict ids in tests).
token_id(text, vocab_variant="default") -> int
    Id of a token text in the (unpadded) vocabulary, e.g. token_id("▁hello").
CHATML
    The standard ChatML Jinja chat template (honours ``add_generation_prompt``).

Useful properties
-----------------
* The first ``BASE_VOCAB_SIZE`` ids are the same for every model with
  ``vocab_variant="default"`` (padded or not), so all such models are
  vocabulary-compatible.
* For a fixed ``seed`` (and fixed shapes), all tensors except the padding rows
  are identical whatever ``pad_to``, ``zero_blocks``, ``vocab_variant`` and
  ``chat_template`` are: a padded model with the same seed as an unpadded one
  gives the same logits on the shared ids, and ``zero_blocks=True`` only zeroes
  ``attn_output`` / ``ffn_down`` of the otherwise identical model.
* ``zero_blocks=True``: every transformer block adds exactly zero to the
  residual stream, so the next-token logits depend ONLY on the last input token:
  ``logits = output @ (rmsnorm(token_embd[tok]) * output_norm)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "CHATML",
    "BASE_VOCAB_SIZE",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "IM_START_ID",
    "IM_END_ID",
    "RMS_NORM_EPS",
    "SWAPPED_PIECES",
    "build_vocab",
    "token_id",
    "write_model",
    "oracle_logits",
    "TINY_SPECS",
    "write_tiny_set",
]

# Standard ChatML template (as shipped by Qwen2 / many HF models, minus the
# Qwen default-system-prompt extras).
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

RMS_NORM_EPS = 1e-6
ROPE_FREQ_BASE = 10000.0

# --------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------

SPACE = "\u2581"  # "▁", SentencePiece's whitespace marker

# gguf.TokenType values (kept literal so build_vocab does not need gguf)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = 0, 1, 2, 3, 4
_SPECIALS = [
    ("<unk>", _UNKNOWN),
    ("<s>", _CONTROL),
    ("</s>", _CONTROL),
    ("<|im_start|>", _CONTROL),
    ("<|im_end|>", _CONTROL),
]

_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-()[]/&%$#@*+=_"

_WORDS = [
    "the",
    "a",
    "is",
    "hello",
    "world",
    "cat",
    "dog",
    "and",
    "of",
    "to",
    "in",
    "it",
    "you",
    "that",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "be",
    "at",
    "this",
    "have",
    "from",
    "or",
    "one",
    "not",
    "what",
    "all",
    "we",
    "can",
    "there",
    "yes",
    "no",
    "good",
    "bad",
    "my",
    "name",
    "how",
    "Hello",
    "The",
    "I",
    "user",
    "assistant",
    "system",
    "answer",
    "question",
    "Paris",
    "capital",
    "France",
    "red",
    "blue",
    "sun",
    "moon",
]
# Role names also appear right after "<|im_start|>", without a space.
_BARE_WORDS = ["user", "assistant", "system"]

# vocab_variant="incompatible" swaps the texts of these two NORMAL pieces.
SWAPPED_PIECES = (SPACE + "cat", SPACE + "dog")


def _base_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = []
    types: list[int] = []
    seen: set[str] = set()

    def add(text: str, ttype: int) -> None:
        if text in seen:
            return
        seen.add(text)
        tokens.append(text)
        types.append(ttype)

    for text, ttype in _SPECIALS:
        add(text, ttype)
    for b in range(256):
        add(f"<0x{b:02X}>", _BYTE)
    add(SPACE, _NORMAL)
    for c in _CHARS:
        add(c, _NORMAL)
    for c in _CHARS:
        add(SPACE + c, _NORMAL)
    # llama.cpp's SPM tokenizer only merges adjacent symbols whose concatenation
    # is in the vocabulary, so every whole-word piece needs its chain of
    # prefixes ("▁h", "▁he", "▁hel", "▁hell", "▁hello") to be reachable.
    for w in _WORDS:
        piece = SPACE + w
        for n in range(2, len(piece) + 1):
            add(piece[:n], _NORMAL)
    for w in _BARE_WORDS:
        for n in range(2, len(w) + 1):
            add(w[:n], _NORMAL)

    # SentencePiece-like scores: control/byte pieces 0, normal pieces by rank,
    # longer pieces slightly preferred (only matters for tie-breaking).
    scores: list[float] = []
    rank = 0
    for ttype in types:
        if ttype == _NORMAL:
            scores.append(float(-rank))
            rank += 1
        else:
            scores.append(0.0)
    return tokens, scores, types


_BASE_TOKENS, _BASE_SCORES, _BASE_TYPES = _base_vocab()
BASE_VOCAB_SIZE = len(_BASE_TOKENS)
_BASE_INDEX = {t: i for i, t in enumerate(_BASE_TOKENS)}


def build_vocab(
    vocab_variant: str = "default", pad_to: int | None = None
) -> tuple[list[str], list[float], list[int]]:
    """Return ``(tokens, scores, token_types)`` as written into the GGUF."""
    tokens = list(_BASE_TOKENS)
    scores = list(_BASE_SCORES)
    types = list(_BASE_TYPES)
    if vocab_variant == "incompatible":
        i, j = (_BASE_INDEX[p] for p in SWAPPED_PIECES)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    elif vocab_variant != "default":
        raise ValueError(f"unknown vocab_variant {vocab_variant!r}")
    if pad_to is not None:
        if pad_to < len(tokens):
            raise ValueError(f"pad_to={pad_to} is smaller than the vocabulary ({len(tokens)})")
        for i in range(len(tokens), pad_to):
            # same convention as llama.cpp's convert_hf_to_gguf.py
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(_UNUSED)
    return tokens, scores, types


def token_id(text: str, vocab_variant: str = "default") -> int:
    """Id of the token whose text is ``text`` (e.g. ``token_id("▁hello")``)."""
    tokens, _, _ = build_vocab(vocab_variant)
    return tokens.index(text)


# --------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------


def _weights(
    seed: int,
    n_vocab: int,
    n_vocab_total: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    zero_blocks: bool,
) -> list[tuple[str, np.ndarray]]:
    """All tensors, in file order, as float32 numpy arrays (numpy shape =
    reversed ggml ne, i.e. (rows=out_features, cols=in_features))."""
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    # logits std ~= 2: the normed hidden state has RMS ~1, so a row std of
    # 2/sqrt(n_embd) gives logits with std ~2.
    tok_embd = normal((n_vocab, n_embd), 1.0)
    out_norm = norm_weight(n_embd)
    out_std = 2.0 / np.sqrt(n_embd)
    output = normal((n_vocab, n_embd), out_std)

    blocks = []
    for il in range(n_layer):
        p = f"blk.{il}."
        attn_norm = norm_weight(n_embd)
        wq = normal((n_head * head_dim, n_embd), 2.0 / np.sqrt(n_embd))
        wk = normal((n_embd_kv, n_embd), 2.0 / np.sqrt(n_embd))
        wv = normal((n_embd_kv, n_embd), 1.0 / np.sqrt(n_embd))
        wo = normal((n_embd, n_head * head_dim), 1.0 / np.sqrt(n_head * head_dim))
        ffn_norm = norm_weight(n_embd)
        gate = normal((n_ff, n_embd), 1.0 / np.sqrt(n_embd))
        up = normal((n_ff, n_embd), 1.0 / np.sqrt(n_embd))
        down = normal((n_embd, n_ff), 1.0 / np.sqrt(n_ff))
        if zero_blocks:
            wo = np.zeros_like(wo)
            down = np.zeros_like(down)
        blocks += [
            (p + "attn_norm.weight", attn_norm),
            (p + "attn_q.weight", wq),
            (p + "attn_k.weight", wk),
            (p + "attn_v.weight", wv),
            (p + "attn_output.weight", wo),
            (p + "ffn_norm.weight", ffn_norm),
            (p + "ffn_gate.weight", gate),
            (p + "ffn_up.weight", up),
            (p + "ffn_down.weight", down),
        ]

    n_pad = n_vocab_total - n_vocab
    if n_pad:
        # separate stream, so the unpadded part does not depend on pad_to
        prng = np.random.default_rng([seed, 0x706164])
        tok_embd = np.concatenate(
            [tok_embd, (prng.standard_normal((n_pad, n_embd))).astype(np.float32)]
        )
        output = np.concatenate(
            [output, (prng.standard_normal((n_pad, n_embd)) * out_std).astype(np.float32)]
        )

    return [
        ("token_embd.weight", tok_embd),
        *blocks,
        ("output_norm.weight", out_norm),
        ("output.weight", output),
    ]


def write_model(
    path: str | os.PathLike[str],
    *,
    seed: int,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 64,
    n_ctx_train: int = 256,
    zero_blocks: bool = False,
    pad_to: int | None = None,
    vocab_variant: str = "default",
    chat_template: str | None = CHATML,
    n_head_kv: int | None = None,
    name: str | None = None,
    deltas: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a tiny llama-architecture GGUF model to ``path`` and return it.

    Deterministic: the same arguments always produce a byte-identical file. ``deltas`` (tensor
    name -> array of its numpy shape) are added to the weights: a LoRA merged by hand.
    """
    import gguf  # test-only dependency

    if n_embd % n_head:
        raise ValueError("n_embd must be a multiple of n_head")
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if n_head % n_head_kv:
        raise ValueError("n_head must be a multiple of n_head_kv")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = build_vocab(vocab_variant, pad_to)

    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name or f"localeft-tiny-s{seed}")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(RMS_NORM_EPS)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_eot_token_id(IM_END_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    for tname, arr in _weights(
        seed, BASE_VOCAB_SIZE, len(tokens), n_embd, n_layer, n_head, n_head_kv, n_ff, zero_blocks
    ):
        if deltas and tname in deltas:
            arr = (arr.astype(np.float64) + deltas[tname]).astype(np.float32)
        w.add_tensor(tname, arr)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------
# LoRA adapters
# --------------------------------------------------------------------------

LORA_TARGETS = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


def write_lora(
    path: str | os.PathLike[str],
    model: str | os.PathLike[str],
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = LORA_TARGETS,
    extra: tuple[str, ...] = ("output.weight",),
    strength: float = 0.5,
    arch: str = "llama",
    general_type: str = "adapter",
) -> Path:
    """Write a random rank-`rank` LoRA adapter GGUF for `model` (tensor names and shapes read
    from it), as llama.cpp's convert_lora_to_gguf.py lays one out: `NAME.lora_a` of numpy
    shape (rank, n_in) and `NAME.lora_b` (n_out, rank); for token_embd the pair is flipped
    (lora_a (n_vocab, rank), lora_b (n_embd, rank)). Adapts every block's `targets` and the
    `extra` whole-model tensors. Returns the path."""
    import gguf

    reader = gguf.GGUFReader(model)
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    names = [n for n in shapes if any(n.endswith(f".{t}.weight") for t in targets)]
    names += [n for n in extra if n in shapes]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch)
    w.add_type(general_type)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for name in names:
        rows, cols = shapes[name]  # numpy shape of the weight: (n_out, n_in)
        if name == "token_embd.weight":  # (n_vocab, n_embd): A by token, B into the embedding
            a = rng.standard_normal((rows, rank)) * strength
            b = rng.standard_normal((cols, rank)) / np.sqrt(rank)
        else:
            a = rng.standard_normal((rank, cols)) / np.sqrt(cols)
            b = rng.standard_normal((rows, rank)) * strength / np.sqrt(rank)
        w.add_tensor(f"{name}.lora_a", a.astype(np.float32))
        w.add_tensor(f"{name}.lora_b", b.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def lora_deltas(adapters: list[tuple[str | os.PathLike[str], float]]) -> dict[str, np.ndarray]:
    """What the adapters add to each weight, `scale * alpha / rank * B @ A` summed (numpy
    shapes of the weights), computed in float64 from the adapter files: the merge a user
    would do by hand."""
    import gguf

    out: dict[str, np.ndarray] = {}
    for path, scale in adapters:
        reader = gguf.GGUFReader(path)
        alpha = float(reader.fields["adapter.lora.alpha"].contents())
        t = {x.name: np.asarray(x.data, dtype=np.float64) for x in reader.tensors}
        for name in {n[: -len(".lora_a")] for n in t if n.endswith(".lora_a")}:
            a, b = t[f"{name}.lora_a"], t[f"{name}.lora_b"]
            if name == "token_embd.weight":
                delta, rank = a @ b.T, a.shape[1]
            else:
                delta, rank = b @ a, a.shape[0]
            factor = scale * alpha / rank if alpha else scale  # llama.cpp: alpha 0 = unset
            out[name] = out.get(name, 0.0) + factor * delta
    return out


# --------------------------------------------------------------------------
# oracle
# --------------------------------------------------------------------------


def _read(path: str | os.PathLike[str]):
    import gguf

    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    arch = reader.fields["general.architecture"].contents()
    eps = float(reader.fields[f"{arch}.attention.layer_norm_rms_epsilon"].contents())
    n_layer = int(reader.fields[f"{arch}.block_count"].contents())
    return tensors, eps, n_layer


def oracle_logits(path: str | os.PathLike[str], token_id: int) -> np.ndarray:
    """Exact next-token logits (float64, shape (n_vocab,)) of a
    ``zero_blocks=True`` model after ``token_id``, whatever came before it.

    Raises ValueError if the model's blocks are not all zero.
    """
    tensors, eps, n_layer = _read(path)
    for il in range(n_layer):
        for t in ("attn_output", "ffn_down"):
            if np.any(tensors[f"blk.{il}.{t}.weight"]):
                raise ValueError(f"{path} is not a zero_blocks model (blk.{il}.{t} != 0)")
    embd = tensors["token_embd.weight"]  # (n_vocab, n_embd)
    x = embd[token_id]
    x = x / np.sqrt(np.mean(x * x) + eps) * tensors["output_norm.weight"]
    return tensors["output.weight"] @ x  # (n_vocab, n_embd) @ (n_embd,)


# --------------------------------------------------------------------------
# the standard set used by tests/conftest.py (fixture ``tiny``)
# --------------------------------------------------------------------------

_LARGE = dict(seed=101, n_embd=64, n_layer=3, n_head=4, n_ff=128)
_SMALL_FT = dict(seed=202)
_SMALL_BASE = dict(seed=303)

# name -> write_model keyword arguments (file name is f"{name}.gguf")
TINY_SPECS: dict[str, dict] = {
    # compatible trio (random blocks: logits depend on the whole context)
    "large_base": dict(_LARGE),
    "small_ft": dict(_SMALL_FT),
    "small_base": dict(_SMALL_BASE),
    # same trio, zero_blocks=True: exact NumPy oracle via oracle_logits()
    "oracle_large_base": dict(_LARGE, zero_blocks=True),
    "oracle_small_ft": dict(_SMALL_FT, zero_blocks=True),
    "oracle_small_base": dict(_SMALL_BASE, zero_blocks=True),
    # large_base with 16 padding ids appended (Qwen2.5-7B style); on ids
    # < BASE_VOCAB_SIZE its logits equal large_base's exactly.
    "padded": dict(_LARGE, pad_to=BASE_VOCAB_SIZE + 16),
    # small_ft with two NORMAL pieces swapped (ids of "▁cat" / "▁dog")
    "incompatible": dict(_SMALL_FT, vocab_variant="incompatible"),
    # small_ft without tokenizer.chat_template
    "no_template": dict(_SMALL_FT, chat_template=None),
}


def write_tiny_set(directory: str | os.PathLike[str]):
    """Write every model of TINY_SPECS plus two broken files into
    ``directory``; return a SimpleNamespace name -> Path.

    Extra fields: ``not_gguf`` (a text file named *.gguf) and ``truncated``
    (large_base cut to half its size).
    """
    from types import SimpleNamespace

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {name: write_model(d / f"{name}.gguf", **kw) for name, kw in TINY_SPECS.items()}

    not_gguf = d / "not_gguf.gguf"
    not_gguf.write_text("this is not a GGUF model, just text\n")
    paths["not_gguf"] = not_gguf

    data = paths["large_base"].read_bytes()
    truncated = d / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    paths["truncated"] = truncated
    return SimpleNamespace(**paths)
