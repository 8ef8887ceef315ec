"""Step 2: a PEFT LoRA (adapter_model.safetensors + adapter_config.json) as a llama.cpp LoRA
adapter GGUF, checked against the base model's GGUF. llama.cpp's convert_lora_to_gguf.py does
this from the base model's Hugging Face config; when only the GGUF exists (as here), the
mapping is short enough to write out: per layer, PEFT's lora_A (rank, n_in) and lora_B
(n_out, rank) become `blk.N.<tensor>.weight.lora_a` / `.lora_b` with the same numpy shapes.

    python peft_to_gguf.py PEFT_DIR BASE.gguf OUT.gguf

Architectures whose GGUF keeps Hugging Face's row order (qwen2, qwen3). llama-family GGUFs
permute the rows of Q and K (for their rope layout), and so would lora_B: use llama.cpp's
converter for those. Needs numpy, safetensors and gguf (requirements.txt).
"""

import json
import math
import re
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
ARCHS = ("qwen2", "qwen3")
PATTERN = re.compile(r".*\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def convert(peft_dir: Path, base: Path, out: Path) -> None:
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    if config.get("use_dora"):
        sys.exit("DoRA adapters are not LoRA adapters: llama.cpp cannot apply them")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r
        alpha *= math.sqrt(rank)
    reader = gguf.GGUFReader(base)
    arch = str(reader.fields["general.architecture"].contents())
    if arch not in ARCHS:
        sys.exit(f"{base} is {arch}: use llama.cpp's convert_lora_to_gguf.py for it")
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    w = gguf.GGUFWriter(out, arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    w.add_name(f"{peft_dir.name} (LoRA rank {rank} for {base.name})")
    count = 0
    for name in sorted(tensors, key=_order):
        m = PATTERN.match(name)
        if not m or m.group(2) not in NAMES:
            sys.exit(f"{name}: not a LoRA tensor this script maps")
        layer, module, ab = m.groups()
        target = f"blk.{layer}.{NAMES[module]}.weight"
        n_out, n_in = shapes[target]
        t = tensors[name].astype(np.float32)
        want = (rank, n_in) if ab == "A" else (n_out, rank)
        if t.shape != want:
            sys.exit(f"{name} is {t.shape}, but {target} of {base.name} needs {want}")
        w.add_tensor(f"{target}.lora_{ab.lower()}", t)
        count += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}: {count} tensors, rank {rank}, alpha {alpha:g}, {arch}")


def _order(name: str):
    m = PATTERN.match(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else (10**9, name, "")


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
