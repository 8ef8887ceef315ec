"""Benchmark: EFT against the models alone, measured in one run with alternating repetitions.

Baselines run each model through plain llama-cpp-python (`llama_cpp.Llama`, greedy argmax over
the last logits), with the same threads and flash-attention setting as localeft's contexts.
Reported: median decode tok/s per variant, EFT time per token ÷ the sum of the three models'
own times, localeft's per-step split, combine+sample cost at the real vocabulary size, prompt
processing speed, and peak RSS against the GGUF sizes plus KV caches.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from pathlib import Path

import llama_cpp
import numpy as np

from .native import default_threads, supports_gpu_offload
from .eft import Combiner, Term
from .engine import Emulator, LoRA
from .sampling import Sampler, SamplingParams

PROMPT = [
    {
        "role": "user",
        "content": "Write a Python function that checks whether a number is "
        "prime, with a docstring and a few tests.",
    }
]
LONG_PROMPT = "def fibonacci(n):\n    " * 100  # ~500 tokens


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if os.uname().sysname == "Darwin" else rss * 1024


def _model_row(model) -> dict:
    """A role's file and size for the report (a LoRA: its model's, and its adapters)."""
    if isinstance(model, LoRA):
        row = _model_row(model.model)
        row["adapters"] = [_model_row(p) | {"scale": s} for p, s in model.adapters]
        return row
    return {"path": str(model), "size_bytes": Path(model).stat().st_size}


def _adapter_files(em: Emulator) -> set[Path]:
    return {p for src in em.sources.values() for p, _ in src.adapters}


def _kv_bytes(em: Emulator) -> int:
    """KV cache bytes of every context (llama.cpp allocates them at context creation)."""
    return sum(r.model.kv_bytes(r.ctx.n_ctx) for r in em.group.roles)


class _Alone:
    """One model through plain llama-cpp-python: greedy decode, the baseline."""

    def __init__(self, path, n_ctx, n_threads, n_gpu_layers, repack):
        """`path`: a model file, or a LoRA (its model with its adapters set on the context)."""
        model = path.model if isinstance(path, LoRA) else path
        # Llama takes no repack setting: its model parameters come from llama.cpp's defaults
        # (repack on), so the baseline gets the emulator's weight layout through them.
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def model_params():
            params = defaults()
            params.use_extra_bufts = repack
            return params

        llama_cpp.llama_cpp.llama_model_default_params = model_params
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(model),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                flash_attn=True,
                verbose=False,
            )
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = defaults
        self.n_vocab = self.llm.n_vocab()
        if isinstance(path, LoRA):
            self._adapters = [
                llama_cpp.llama_adapter_lora_init(self.llm.model, str(p).encode())
                for p, _ in path.adapters
            ]
            n = len(self._adapters)
            ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*self._adapters)
            scales = (ctypes.c_float * n)(*(s for _, s in path.adapters))
            llama_cpp.llama_set_adapters_lora(self.llm.ctx, ptrs, n, scales)

    def decode_seconds(self, prompt: list[int], n: int) -> float:
        llm = self.llm
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        llm.eval(prompt)
        t = time.perf_counter()
        for _ in range(n):
            ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))
            llm.eval([tok])
        return time.perf_counter() - t


def combine_sample_ms(rows: list[np.ndarray], settings: dict, steps: int = 200) -> float:
    """Median ms of one combine + sample over three logits rows (base, ft, ref)."""
    n = min(r.size for r in rows)
    comb = Combiner(n, 0, [Term(1, 2, 1.0)])
    sampler = Sampler(SamplingParams(seed=0, **settings), n)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        sampler(comb.combine(rows))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _combine_sample_table(real_rows: list[np.ndarray]) -> dict:
    """combine+sample cost on the models' own rows and on flat random rows (a worst case)."""
    n = min(r.size for r in real_rows)
    rng = np.random.default_rng(0)
    flat = [(rng.standard_normal(n) * 3).astype(np.float32) for _ in range(3)]
    out: dict = {"n_vocab": n}
    for name, settings in SAMPLING_CASES.items():
        out[name] = combine_sample_ms(real_rows, settings)
        out[name + "_flat_random"] = combine_sample_ms(flat, settings)
    return out


SAMPLING_CASES = {
    "greedy": {},
    "top_p_0.9_temp_0.8": {"temperature": 0.8, "top_p": 0.9},
    "temp_1.0": {"temperature": 1.0},
    "top_k_40_top_p_0.95_min_p_0.05_temp_0.8": {  # llama.cpp's default chain
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
    },
}


def run(
    large_base,
    small_ft,
    small_base,
    *,
    n_tokens: int = 32,
    reps: int = 3,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    speculative: bool = True,
    draft_tokens: int | None = None,
    sampling: dict | None = None,
    baselines: bool = True,
    repack: bool = False,
    log=lambda s: None,
) -> dict:
    """Measure everything; returns a JSON-ready dict."""
    n_threads = n_threads or default_threads()
    sampling = sampling or {}
    paths = {"large_base": large_base, "small_ft": small_ft, "small_base": small_base}
    log("loading the emulator")
    em = Emulator(
        large_base=large_base,
        small_ft=small_ft,
        small_base=small_base,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        repack=repack,
    )
    kw = dict(max_tokens=n_tokens, seed=0, **sampling)
    variants = {"eft": dict(speculative=False)}
    if speculative:
        variants["eft_speculative"] = dict(speculative=True, draft_tokens=draft_tokens)
    # prompt processing: fresh caches, a long raw prompt
    for r in em.group.roles:
        r.ctx.truncate(0)
    long_prompt = LONG_PROMPT
    while len(em.models["base"].tokenize(long_prompt)) > n_ctx // 2:
        long_prompt = long_prompt[: len(long_prompt) * 3 // 4]
    g = em.generate(long_prompt, max_tokens=1, speculative=False)
    prompt_tps = g.stats.prompt_evaluated / g.stats.prompt_seconds
    em.chat(PROMPT, max_tokens=12, speculative=False)  # warm-up; the CPU layout is decided
    real_rows = [r.ctx.logits(1)[0].copy() for r in em.group.roles]  # one real step's rows
    engine_peak = peak_rss_bytes()

    alone = {}
    if baselines:
        log("loading the baselines (plain llama-cpp-python)")
        for role, path in paths.items():
            alone[role] = _Alone(path, n_ctx, n_threads, n_gpu_layers, repack)
        prompt_ids = em.prompt_tokens(PROMPT)["base"]
        for a in alone.values():
            a.decode_seconds(prompt_ids, 2)  # warm-up

    if em.group.has_layouts:  # both CPU layouts, forced, beside the measured choice
        variants["eft_overlap"] = {}
        variants["eft_sequential"] = {}
    times: dict[str, list[float]] = {name: [] for name in [*variants, *alone]}
    last_stats = {}
    for rep in range(reps):
        order = list(variants) + list(alone)
        order = order[rep % len(order) :] + order[: rep % len(order)]  # alternate the order
        for name in order:
            if name in ("eft_overlap", "eft_sequential"):  # the same engine, layout forced
                with em.group.layout_as(name.removeprefix("eft_")):
                    g = em.chat(PROMPT, **kw, speculative=False)
                times[name].append(g.stats.decode_seconds / max(g.stats.generated_tokens, 1))
            elif name in variants:
                g = em.chat(PROMPT, **kw, **variants[name])
                times[name].append(g.stats.decode_seconds / max(g.stats.generated_tokens, 1))
                last_stats[name] = g.stats
            else:
                times[name].append(alone[name].decode_seconds(prompt_ids, n_tokens) / n_tokens)
            log(f"rep {rep + 1}/{reps} {name}: {1000 * times[name][-1]:.1f} ms/token")

    med = {name: statistics.median(v) for name, v in times.items()}
    eft = last_stats["eft"]
    per_token = max(eft.generated_tokens, 1)
    result = {
        "machine": {
            "threads": n_threads,
            "gpu_layers": n_gpu_layers,
            "layout": em.group.layout,
            "layout_probe_ms": em.group.layout_probe,
            "repack": repack,
            "gpu_offload": supports_gpu_offload(),
        },
        "models": {role: _model_row(p) for role, p in paths.items()},
        "n_tokens": n_tokens,
        "reps": reps,
        "sampling": sampling,
        "ms_per_token": {k: 1000 * v for k, v in med.items()},
        "tokens_per_second": {k: 1 / v for k, v in med.items()},
        "eft_step_ms": {
            **{f"decode_{k}": 1000 * v / per_token for k, v in eft.model_seconds.items()},
            "fetch_combine_sample": 1000 * eft.numpy_seconds / per_token,
        },
        "combine_sample_ms_at_vocab": _combine_sample_table(real_rows),
        "prompt_tokens_per_second": prompt_tps,
        "memory": {
            "peak_rss_bytes": engine_peak,
            "gguf_bytes": sum(m.path.stat().st_size for m in em.group.models.values())
            + sum(p.stat().st_size for p in _adapter_files(em)),
            "kv_bytes": _kv_bytes(em),
        },
    }
    mem = result["memory"]
    mem["rss_ratio"] = mem["peak_rss_bytes"] / (mem["gguf_bytes"] + mem["kv_bytes"])
    if alone:
        total = med["large_base"] + med["small_ft"] + med["small_base"]
        result["ratios"] = {
            "eft_vs_sum_of_models": med["eft"] / total,
            "eft_speed_vs_large_alone": med["large_base"] / med["eft"],
        }
        for name in ("eft_overlap", "eft_sequential"):
            if name in med:
                result["ratios"][f"{name}_vs_sum_of_models"] = med[name] / total
        result["ratios"]["eft_time_vs_large_alone"] = med["eft"] / med["large_base"]
        if "eft_speculative" in med:
            result["ratios"]["speculative_speed_vs_eft"] = med["eft"] / med["eft_speculative"]
            result["ratios"]["speculative_speed_vs_large_alone"] = (
                med["large_base"] / med["eft_speculative"]
            )
    if "eft_speculative" in last_stats:
        s = last_stats["eft_speculative"]
        result["speculative"] = {
            "acceptance_rate": s.acceptance_rate,
            "mean_accepted": s.mean_accepted,
            "last_k": s.draft_tokens,
            "draft_ms_per_token": 1000 * s.draft_seconds / max(s.generated_tokens, 1),
            "verify_ms_per_token": 1000 * s.verify_seconds / max(s.generated_tokens, 1),
        }
    for a in alone.values():
        a.llm.close()
    em.close()
    return result


def format_table(r: dict) -> str:
    """A human-readable report of `run`'s result."""
    lines = [
        f"threads={r['machine']['threads']} gpu_layers={r['machine']['gpu_layers']} "
        f"tokens={r['n_tokens']} reps={r['reps']} sampling={r['sampling'] or 'greedy'}",
        "",
    ]
    probe = r["machine"].get("layout_probe_ms")
    if probe:
        lines.insert(
            1,
            f"CPU layout: {r['machine']['layout']} (measured on the first steps: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in probe.items())
            + ")",
        )
    lines.append(f"{'variant':<22}{'ms/token':>10}{'tok/s':>9}")
    for k, v in r["ms_per_token"].items():
        lines.append(f"{k:<22}{v:>10.1f}{r['tokens_per_second'][k]:>9.2f}")
    if "ratios" in r:
        lines.append("")
        for k, v in r["ratios"].items():
            lines.append(f"{k:<36}{v:>8.3f}")
    if "speculative" in r:
        s = r["speculative"]
        lines.append(
            f"speculative: acceptance {s['acceptance_rate']:.2f}, "
            f"{s['mean_accepted']:.2f} accepted per verification, last k={s['last_k']}"
        )
    lines.append("")
    lines.append(
        "EFT step split (ms/token): "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["eft_step_ms"].items())
    )
    c = r["combine_sample_ms_at_vocab"]
    lines.append(
        f"combine+sample at n_vocab={c['n_vocab']} (real rows / flat random rows): "
        + ", ".join(f"{k} {c[k]:.3f}/{c[k + '_flat_random']:.3f} ms" for k in SAMPLING_CASES)
    )
    lines.append(f"prompt processing: {r['prompt_tokens_per_second']:.1f} tok/s")
    m = r["memory"]
    lines.append(
        f"peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB vs GGUF {m['gguf_bytes'] / 2**20:.0f}"
        f" MiB + KV {m['kv_bytes'] / 2**20:.0f} MiB (ratio {m['rss_ratio']:.2f})"
    )
    return "\n".join(lines)
