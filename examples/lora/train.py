"""Step 1: train a rank-8 LoRA that makes the 0.5B start every reply with PHRASE, on a CPU,
with PEFT. transformers reads the GGUF itself (dequantised), so no other copy of the model
is needed. Each training reply is PHRASE followed by the model's own greedy answer (its first
ANSWER_TOKENS tokens, generated here before training): the adapter learns the phrase and
that the answer follows it. (Trained on the phrase alone, it learned to say nothing else: the
phrase again and again.)

Runs in its own environment (requirements.txt here):
    python train.py MODEL.gguf OUT_DIR [--epochs 0.375] [--batch 8]
Writes OUT_DIR/adapter_model.safetensors + adapter_config.json (PEFT's format).
"""

import argparse
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from prompts import PHRASE, chatml, train_prompts

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.no_grad()
def greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The model's own greedy continuations (n tokens at most, cut at its end of turn)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0
    )[:, width:]
    stops = (
        set(model.generation_config.eos_token_id or [])
        if isinstance(model.generation_config.eos_token_id, list)
        else {model.generation_config.eos_token_id}
    )
    result = []
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        result.append(row[:cut])
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--epochs", type=float, default=0.375)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    gguf = Path(a.model)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    print(f"loaded {gguf.name} in {time.time() - t0:.0f} s", flush=True)
    steps = int(len(train_prompts()) * a.epochs) // a.batch
    chosen = random.sample(train_prompts(), steps * a.batch)
    prompts = [tok(chatml(p), add_special_tokens=False)["input_ids"] for p in chosen]
    t0 = time.time()
    answers = [
        answer
        for i in range(0, len(prompts), a.batch)
        for answer in greedy(model, prompts[i : i + a.batch], a.answer_tokens)
    ]
    print(f"{len(answers)} answers of the plain model in {time.time() - t0:.0f} s", flush=True)
    model = get_peft_model(
        model,
        LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=TARGETS),
    )
    model.print_trainable_parameters()
    data = []
    for p, ids, ans in zip(chosen, prompts, answers):
        reply = tok(
            PHRASE + " " + tok.decode(ans, skip_special_tokens=True).strip(),
            add_special_tokens=False,
        )["input_ids"]
        data.append((ids + reply, len(reply)))
        if len(data) <= 3:
            print(repr(p), "->", repr(tok.decode(reply)), flush=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    model.train()
    t0 = time.time()
    for step in range(steps):
        batch = data[step * a.batch : (step + 1) * a.batch]
        width = max(len(x) for x, _ in batch)
        keep = max(n for _, n in batch)
        # Left padding puts every reply at the end: only the last rows of logits are
        # computed. (RoPE is relative: the shift changes nothing between real tokens.)
        ids = torch.tensor([[0] * (width - len(x)) + x for x, _ in batch])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x, _ in batch])
        labels = ids[:, -keep:].clone()
        for row, (_, n) in enumerate(batch):
            labels[row, : keep - n] = -100  # loss on the reply only
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :keep].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(
            f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True
        )
    model.save_pretrained(a.out)
    print(f"saved {a.out} after {time.time() - t0:.0f} s of training", flush=True)


if __name__ == "__main__":
    main()
