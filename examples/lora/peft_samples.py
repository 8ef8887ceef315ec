"""The PEFT model's own greedy replies to a few held-out prompts (transformers, float32), for
evaluate.py to compare with the converted adapter in llama.cpp.

Runs in the training environment: python peft_samples.py MODEL.gguf PEFT_DIR OUT.json
"""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from prompts import chatml, held_out_prompts

N, TOKENS = 5, 12


def main(model: str, peft_dir: str, out: str) -> None:
    gguf = Path(model)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    base = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    m = PeftModel.from_pretrained(base, peft_dir).eval()
    result = {}
    for p in held_out_prompts()[:N]:
        ids = tok(chatml(p), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            g = m.generate(ids, max_new_tokens=TOKENS, do_sample=False)[0, ids.shape[1] :]
        result[p] = {"text": tok.decode(g, skip_special_tokens=True), "tokens": len(g)}
        print(p, repr(result[p]["text"]), flush=True)
    json.dump(result, open(out, "w", encoding="utf-8"), indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
