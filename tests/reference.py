"""Independent float64 references: each model evaluated alone by llama-cpp-python's own `Llama`
class (not localeft's backend), combined with the EFT formula over per-model log-softmaxes."""

from __future__ import annotations

import numpy as np
from llama_cpp import Llama


def model_logits(path, tokens: list[int], lora=None, lora_scale: float = 1.0) -> np.ndarray:
    """Next-token logits after `tokens`, from a fresh llama.cpp context (float64); with
    `lora`, that LoRA adapter GGUF applied by llama-cpp-python's own `Llama(lora_path=...)`.

    Flash attention on, as llama.cpp chooses by default for localeft's contexts (with it off the
    attention numerics differ by ~1e-3 in the logits: a different, equally valid kernel)."""
    llm = Llama(
        model_path=str(path),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        n_threads=1,
        flash_attn=True,
        lora_path=None if lora is None else str(lora),
        lora_scale=lora_scale,
    )
    llm.eval(tokens)
    out = np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    llm.close()
    return out


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def eft_reference(base, experts, n_shared: int | None = None) -> np.ndarray:
    """Probabilities of log p_base + Σ w (log p_ft − log p_ref), renormalised, in float64.

    `base` and each ft/ref are logits vectors; experts = [(ft, ref, weight), ...].
    """
    n = n_shared or min(len(base), *(len(v) for f, r, _ in experts for v in (f, r)))
    total = log_softmax64(base)[:n].copy()
    for ft, ref, w in experts:
        total += w * (log_softmax64(ft)[:n] - log_softmax64(ref)[:n])
    p = np.exp(total - total.max())
    return p / p.sum()
