"""EFT with a LoRA adapter on real models against an independent reference: each role's
next-token logits from llama-cpp-python's own `Llama` (the fine-tuned role as
`Llama(SMALL, lora_path=ADAPTER)`), combined by the EFT formula in float64.

    python benchmarks/lora_exactness.py LARGE.gguf SMALL.gguf ADAPTER.gguf [--beta 0.5,1,1.5]

Prints, per prompt and beta, the largest difference in probability and in log-probability
over the 20 most likely tokens (localeft's contexts run llama.cpp's defaults: flash
attention on, as `Llama(flash_attn=True)`, and the reference decodes in the same call shapes:
each model's logits are then bit-identical, and what remains is localeft combining in float32).
"""

from __future__ import annotations

import argparse

import numpy as np
from llama_cpp import Llama

from localeft import Emulator, LoRA
from localeft.layout import SCORE_CHUNK

PROMPTS = [
    "Tell me something interesting about wolves.",
    "What should a beginner know about sandwiches?",
    "What is the capital of Australia?",
]


def logits(path: str, tokens: list[int], lora: str | None = None) -> np.ndarray:
    """In the layout `Emulator.logprobs` reads its rows in (layout.py's scoring layout: calls
    of 16 tokens from position 0, every row asked for): quantised kernels round differently
    for other batch shapes, by up to 0.4 in a logit."""
    llm = Llama(
        model_path=path,
        n_ctx=512,
        n_batch=SCORE_CHUNK,
        n_ubatch=SCORE_CHUNK,
        logits_all=True,
        verbose=False,
        flash_attn=True,
        lora_path=lora,
    )
    llm.eval(tokens)
    out = np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    llm.close()
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("large")
    p.add_argument("small")
    p.add_argument("adapter")
    p.add_argument("--beta", default="0.5,1,1.5")
    a = p.parse_args()
    betas = [float(b) for b in a.beta.split(",")]
    em = Emulator(
        large_base=a.large, small_ft=LoRA(a.small, a.adapter), small_base=a.small, n_ctx=512
    )
    worst = 0.0
    for prompt in PROMPTS:
        toks = em.prompt_tokens([{"role": "user", "content": prompt}])
        assert toks["base"] == toks["ft"] == toks["ref"]
        t = toks["base"]
        n = em.vocab.n_shared
        base = log_softmax(logits(a.large, t))[:n]
        ft = log_softmax(logits(a.small, t, a.adapter))[:n]
        ref = log_softmax(logits(a.small, t))[:n]
        for beta in betas:
            want = base + beta * (ft - ref)
            want = want - want.max() - np.log(np.exp(want - want.max()).sum())
            got = em.logprobs([{"role": "user", "content": prompt}], beta=beta)
            top = np.argsort(want)[-20:]
            dp = np.abs(np.exp(got) - np.exp(want)).max()
            dl = np.abs(got[top] - want[top]).max()
            worst = max(worst, dp)
            print(f"{prompt[:40]:<42} beta {beta:<4g} max |dp| {dp:.2e}  top-20 |dlogp| {dl:.2e}")
    print(f"largest difference in probability: {worst:.2e}")
    em.close()


if __name__ == "__main__":
    main()
