#!/usr/bin/env python3
"""The large base over RPC vs local: tok/s of the model alone and of EFT, and bytes per token.

    python benchmarks/rpc_bench.py LARGE_BASE SMALL_FT SMALL_BASE [-n 32] [--reps 5] [--json]

Starts two `localeft rpc-server` processes on free loopback ports, loads the trio twice in this
process (all local; the large base split over the two servers, every layer remote), and measures
in one run, variants alternating: the large base alone and EFT (plain, and speculative over RPC)
as median decode ms/token, and the bytes each RPC token costs, read from the kernel's TCP
counters of llama.cpp's own sockets (TCP_INFO: bytes acked and received; Linux). Also: the
log-probability difference RPC vs local (with and without this machine's repacked weights: the
servers do not repack, so the un-repacked local model isolates the protocol's cost), and prompt
processing speed. On one machine the servers share its cores with the client: this
measures the protocol's cost, not the gain of more machines (benchmarks/net_bench.py measures
emulated LAN, Wi-Fi and far links). --rpc-output sets where the base's output layer runs.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import llama_cpp  # noqa: E402,F401  (before numpy; see localeft/__init__.py)
import numpy as np  # noqa: E402

from rpcservers import free_port, tcp_counters, traffic, wait_ready  # noqa: E402  (tests/)
from trioargs import trio_parser  # noqa: E402

from localeft import Emulator
from localeft.native import default_threads
from localeft.bench import PROMPT

LONG_PROMPT = "def fibonacci(n):\n    " * 60  # ~300 tokens


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "localeft", "rpc-server", "--port", str(port), "-t", str(threads)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    if not wait_ready(p, endpoint):
        raise SystemExit(f"rpc-server on {endpoint} did not start")
    return p, endpoint


def main() -> None:
    ap = trio_parser(__doc__, tokens=32, reps=5)
    ap.add_argument("-c", "--ctx-size", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int, help="client threads (default: all)")
    ap.add_argument("--server-threads", type=int, help="threads per server (default: all)")
    ap.add_argument("--rpc-output", default="remote", choices=["auto", "local", "remote"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cores = default_threads()
    servers = [start_server(a.server_threads or cores) for _ in range(2)]
    endpoints = [e for _, e in servers]
    ports = {int(e.rsplit(":", 1)[1]) for e in endpoints}
    trio = dict(
        large_base=a.large_base,
        small_ft=a.small_ft,
        small_base=a.small_base,
        n_ctx=a.ctx_size,
        n_threads=a.threads,
    )
    result: dict = {"endpoints": endpoints, "cores": cores}
    try:
        log("loading: local, local without repacking, and over RPC")
        here = Emulator(**trio, repack=True)
        plain = Emulator(**trio, repack=False)
        there = Emulator(**trio, rpc=endpoints, rpc_output=a.rpc_output)
        result["placement"] = there.placement
        result["rpc_output"] = there.rpc_output_choice
        result["overlap"] = {"local": here.overlap, "rpc": there.overlap}

        # exactness: the next-token distribution after a few prompts (the -inf of masked ids
        # must match; differences over the finite ones, and of the probabilities)
        diffs: dict[str, dict[str, float]] = {}
        for prompt in ["def fibonacci(n):", "The capital of France is", PROMPT, "import numpy"]:
            lp = there.logprobs(prompt)
            for key, em in (("rpc_vs_local", here), ("rpc_vs_local_no_repack", plain)):
                other = em.logprobs(prompt)
                finite = np.isfinite(lp)
                assert (finite == np.isfinite(other)).all() and lp.argmax() == other.argmax()
                d = diffs.setdefault(key, {"max_abs_logprob": 0.0, "max_abs_prob": 0.0})
                d["max_abs_logprob"] = max(
                    d["max_abs_logprob"], float(np.abs(lp[finite] - other[finite]).max())
                )
                d["max_abs_prob"] = max(
                    d["max_abs_prob"], float(np.abs(np.exp(lp) - np.exp(other)).max())
                )
        result["max_diff"] = diffs

        # prompt processing, the large base alone, fresh caches
        prompt_tps: dict[str, list[float]] = {"local": [], "local_no_repack": [], "rpc": []}
        for _ in range(2):
            for name, em in (("local", here), ("local_no_repack", plain), ("rpc", there)):
                for r in em.group.roles:
                    r.ctx.truncate(0)
                g = em.generate(LONG_PROMPT, max_tokens=1, mode="base", speculative=False)
                prompt_tps[name].append(g.stats.prompt_evaluated / g.stats.prompt_seconds)
        result["prompt_tokens_per_second_large"] = {
            k: statistics.median(v) for k, v in prompt_tps.items()
        }

        variants = {
            "large_local": (here, dict(mode="base", speculative=False)),
            "large_local_no_repack": (plain, dict(mode="base", speculative=False)),
            "large_rpc": (there, dict(mode="base", speculative=False)),
            "eft_local": (here, dict(speculative=False)),
            "eft_rpc": (there, dict(speculative=False)),
            "eft_rpc_sequential": (there, dict(speculative=False)),
            "eft_rpc_speculative": (there, dict(speculative=True)),
        }
        for em in (here, plain, there):  # warm-up: caches hold the prompt
            em.chat(PROMPT, max_tokens=2, speculative=False)
        times: dict[str, list[float]] = {k: [] for k in variants}
        per_token: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        accept = []
        for rep in range(a.reps):
            order = list(variants)
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for name in order:
                em, kw = variants[name]
                before = tcp_counters(ports)
                if name == "eft_rpc_sequential":
                    with em.group.sequential():
                        g = em.chat(PROMPT, max_tokens=a.tokens, **kw)
                else:
                    g = em.chat(PROMPT, max_tokens=a.tokens, **kw)
                sent, received = traffic(before, tcp_counters(ports))
                n = max(g.stats.generated_tokens, 1)
                times[name].append(g.stats.decode_seconds / n)
                per_token[name].append((sent / n, received / n))
                if g.stats.speculative:
                    accept.append(g.stats.acceptance_rate)
                log(f"rep {rep + 1}/{a.reps} {name}: {1000 * times[name][-1]:.1f} ms/token")
        med = {k: statistics.median(v) for k, v in times.items()}
        result["ms_per_token"] = {k: 1000 * v for k, v in med.items()}
        result["tokens_per_second"] = {k: 1 / v for k, v in med.items()}
        result["ratios"] = {
            "large_rpc_vs_local_speed": med["large_local"] / med["large_rpc"],
            "large_rpc_vs_local_no_repack_speed": med["large_local_no_repack"] / med["large_rpc"],
            "eft_rpc_vs_local_speed": med["eft_local"] / med["eft_rpc"],
            "eft_rpc_speculative_vs_plain_speed": med["eft_rpc"] / med["eft_rpc_speculative"],
            "eft_rpc_overlap_vs_sequential_speed": med["eft_rpc_sequential"] / med["eft_rpc"],
        }
        result["bytes_per_token"] = {
            k: {
                "sent": statistics.median(s for s, _ in v),
                "received": statistics.median(r for _, r in v),
            }
            for k, v in per_token.items()
            if "rpc" in k
        }
        if accept:
            result["speculative_acceptance"] = statistics.median(accept)
        for em in (there, here, plain):
            em.close()
    finally:
        for p, _ in servers:
            p.send_signal(signal.SIGINT)
        for p, _ in servers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"servers: {', '.join(endpoints)} (loopback), {cores} cores shared with the client")
    print("placement: " + " | ".join(f"{r['device']} {r['layers']}" for r in result["placement"]))
    print(f"{'variant':<22}{'ms/token':>10}{'tok/s':>9}{'sent B/tok':>12}{'recv B/tok':>12}")
    for k, v in result["ms_per_token"].items():
        b = result["bytes_per_token"].get(k)
        extra = f"{b['sent']:>12.0f}{b['received']:>12.0f}" if b else ""
        print(f"{k:<22}{v:>10.1f}{result['tokens_per_second'][k]:>9.2f}{extra}")
    for k, v in result["ratios"].items():
        print(f"{k:<40}{v:>8.3f}")
    print(f"prompt tok/s (large alone): {result['prompt_tokens_per_second_large']}")
    print(f"max differences: {result['max_diff']}")
    if accept:
        print(f"speculative acceptance: {result['speculative_acceptance']:.2f}")


if __name__ == "__main__":
    main()
