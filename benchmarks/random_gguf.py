#!/usr/bin/env python3
"""Write random-weight F16 llama-architecture GGUF models of realistic shapes, for speed
measurements where no real weights can be downloaded (the GPU machine). Speed does not depend on
the weights' values; the vocabulary is the test tokenizer padded to Qwen2.5's 151,936 ids.

    python benchmarks/random_gguf.py OUT_DIR [--shapes 7b,0.5b]   # ~15 GB + 2 x 1 GB
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tinymodels import CHATML, build_vocab  # noqa: E402

# hidden, layers, heads, kv heads, feed-forward (Qwen2.5 shapes)
SHAPES = {
    "7b": (3584, 28, 28, 4, 18944),
    "1.5b": (1536, 28, 12, 2, 8960),
    "0.5b": (896, 24, 14, 2, 4864),
    "tiny": (128, 2, 4, 2, 256),
}


def write(path: Path, shape: str, n_vocab: int = 151936, seed: int = 0) -> Path:
    import gguf

    n_embd, n_layer, n_head, n_kv, n_ff = SHAPES[shape]
    head = n_embd // n_head
    tokens, scores, types = build_vocab(pad_to=n_vocab)
    block = (np.random.default_rng(seed).standard_normal(1 << 20) * 0.02).astype(np.float16)

    def weight(rows: int, cols: int) -> np.ndarray:  # random-looking, made by tiling one block
        return np.resize(block, (rows, cols))

    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"random-{shape}")
    w.add_context_length(32768)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHATML)
    ones = np.ones(n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", weight(n_embd, n_embd))
        w.add_tensor(p + "attn_k.weight", weight(n_kv * head, n_embd))
        w.add_tensor(p + "attn_v.weight", weight(n_kv * head, n_embd))
        w.add_tensor(p + "attn_output.weight", weight(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", weight(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", weight(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", weight(n_embd, n_ff))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", weight(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shapes", default="7b,0.5b", help="large,small (see SHAPES)")
    a = ap.parse_args()
    large, small = a.shapes.split(",")
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, shape, seed in (
        ("large_base", large, 0),
        ("small_ft", small, 1),
        ("small_base", small, 2),
    ):
        print(write(out / f"{name}.gguf", shape, seed=seed), flush=True)


if __name__ == "__main__":
    main()
