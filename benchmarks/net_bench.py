#!/usr/bin/env python3
"""The large base over two RPC servers behind emulated links (LAN, Wi-Fi, far; netlab.py) vs
local: ms/token and bytes/token with the output layer on its server and kept here, overlap on
and off, speculative on and off; what rpc_output="auto" picks on each link; exactness.

    sudo python benchmarks/net_bench.py LARGE_BASE SMALL_FT SMALL_BASE [-n 16] [--reps 3]
        [--profiles loopback,lan,wifi,far] [--outputs remote,local] [--json FILE]

Needs root (network namespaces, tc). The servers (`localeft rpc-server`, one thread each) run
in a namespace of their own behind a veth pair shaped with tc tbf and the delay proxy of
tests/linkproxy.py; this process re-runs itself in the client's namespace. One Emulator per
output placement (a server serves one client): it loads over the unshaped link, then the link
is re-shaped between runs, so profiles and variants interleave (rotated each rep) within a load;
the loads alternate (remote, local, remote, local with --rounds 2). Bytes per token are the
kernel's TCP counters of llama.cpp's sockets. Everything shares this machine's cores: the
network's cost shows as the difference between profiles; --pin puts the servers on a core of
their own (the client on the rest) so that what runs here meanwhile (overlap) shows as on
separate machines; the local load then runs with the client's threads on any core (on this
loaded 2-core VM, two threads per llama.cpp context ran 3-6x slower than one).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import llama_cpp  # noqa: E402,F401  (before numpy)
import numpy as np  # noqa: E402

from netlab import PROFILES, Lab  # noqa: E402
from rpcservers import tcp_counters, traffic  # noqa: E402

from localeft import Emulator, outputcost, placement, rpc, rpclink  # noqa: E402
from localeft.backend import Model  # noqa: E402
from localeft.bench import PROMPT  # noqa: E402
from localeft.native import default_threads  # noqa: E402

PORTS = (50052, 50053)
EXACT_PROMPTS = ["def fibonacci(n):", "The capital of France is", "import numpy"]
RPC_VARIANTS = ("base", "eft_overlap", "eft_sequential", "eft_speculative")
LOCAL_VARIANTS = ("base", "eft", "eft_speculative")


def log(m: str) -> None:
    print(m, file=sys.stderr, flush=True)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for role in ("large_base", "small_ft", "small_base"):
        ap.add_argument(role)
    ap.add_argument("-n", "--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="loads of each placement, alternating")
    ap.add_argument("--profiles", default="loopback,lan,wifi,far")
    ap.add_argument("--outputs", default="remote,local")
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("-t", "--threads", type=int, default=1, help="client threads")
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(RPC_VARIANTS))
    ap.add_argument(
        "--pin",
        action="store_true",
        help="servers on the last core, this client on the others while RPC runs (as if on "
        "other machines)",
    )
    ap.add_argument("--no-local", action="store_true", help="skip the all-local load")
    ap.add_argument("--exactness", action="store_true", help="also a local load, no repacking")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--inside", nargs=2, metavar=("CLIENT_NS", "SERVER_NS"), help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    a = parse()
    if a.inside:
        return inside(a)
    if os.geteuid() != 0:
        raise SystemExit("net_bench.py needs root (network namespaces and tc)")
    lab = Lab()
    try:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--inside", lab.client_ns, lab.server_ns]
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        raise SystemExit(subprocess.run(lab.client_cmd(cmd), env=env).returncode)
    finally:
        lab.close()


def start_servers(lab: Lab, threads: int, cores: set[int] | None) -> list[subprocess.Popen]:
    procs = []
    for port in PORTS:
        cmd = [sys.executable, "-m", "localeft", "rpc-server", "--port", str(port)]
        cmd += ["-t", str(threads)]
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        procs.append(
            subprocess.Popen(
                lab.server_cmd(cmd),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=pin,
            )
        )
    return procs


def wait_for(endpoints: list[str]) -> None:
    for e in endpoints:
        for _ in range(600):
            try:
                rpc.probe(e, timeout=2.0)
                break
            except rpc.RpcError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"no rpc-server at {e}")


def run_variant(em: Emulator, name: str, tokens: int):
    if name == "base":
        return em.chat(PROMPT, max_tokens=tokens, mode="base", speculative=False)
    if name == "eft_speculative":
        return em.chat(PROMPT, max_tokens=tokens, speculative=True)
    layout = {"eft_overlap": "overlap", "eft_sequential": "sequential"}.get(name)
    if layout and em.group.has_layouts:
        with em.group.layout_as(layout):
            return em.chat(PROMPT, max_tokens=tokens, speculative=False)
    return em.chat(PROMPT, max_tokens=tokens, speculative=False)


def exact_rows(em: Emulator) -> list[np.ndarray]:
    return [em.logprobs(p) for p in EXACT_PROMPTS]


def links_per_profile(lab: Lab, endpoints: list[str], profiles, a) -> dict:
    """Each profile's link to the server with the output layer, as rpc_output="auto" measures
    it, and what auto picks there (the layer's time here measured once)."""
    head = Model(a.large_base, vocab_only=True)
    n_embd, n_vocab = head.n_embd, head.n_vocab
    head.close()
    layer = outputcost.output_layer(a.large_base, n_embd)
    local = outputcost.matvec_seconds(layer, a.threads, reps=5)
    out = {"output_layer_ms_here": 1000 * local, "output_layer_mib": layer.nbytes / 2**20}
    for p in profiles:
        lab.shape(PROFILES[p])
        link = rpclink.measure(endpoints[-1])
        saved = (n_vocab - n_embd) * 4
        choice = placement.output_here("auto", endpoints[-1], link, saved, local)
        out[p] = {"link": link.as_dict(), "auto": choice.where, "why": choice.why}
        log(f"{p}: {link.describe()}; auto: {choice.where}")
    lab.shape(PROFILES["loopback"])
    return out


def measure_rpc(lab, em, profiles, a, result, key) -> None:
    ports = set(PORTS)
    chosen = a.variants.split(",")
    for name in chosen:  # warm-up: caches hold the prompt, the layouts exist
        run_variant(em, name, 2)
    for rep in range(a.reps):
        order = profiles[rep % len(profiles) :] + profiles[: rep % len(profiles)]
        for p in order:
            lab.shape(PROFILES[p])
            variants = chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]
            for name in variants:
                before = tcp_counters(ports)
                g = run_variant(em, name, a.tokens)
                sent, received = traffic(before, tcp_counters(ports))
                n = max(g.stats.generated_tokens, 1)
                row = result.setdefault(key, {}).setdefault(p, {}).setdefault(name, [])
                row.append(
                    {
                        "ms": 1000 * g.stats.decode_seconds / n,
                        "sent": sent / n,
                        "received": received / n,
                        "accept": g.stats.acceptance_rate if g.stats.speculative else None,
                    }
                )
                log(f"{key} rep {rep + 1} {p:8} {name:16} {row[-1]['ms']:8.1f} ms/token "
                    f"{received / n:10.0f} B/token in")  # fmt: skip
    lab.shape(PROFILES["loopback"])


def measure_local(em, a, result) -> None:
    chosen = [v for v in LOCAL_VARIANTS if v == "eft" or v in a.variants.split(",")]
    for name in chosen:
        run_variant(em, name, 2)
    for rep in range(a.reps):
        k = rep % len(chosen)
        for name in chosen[k:] + chosen[:k]:
            g = run_variant(em, name, a.tokens)
            n = max(g.stats.generated_tokens, 1)
            result.setdefault("local", {}).setdefault(name, []).append(
                {"ms": 1000 * g.stats.decode_seconds / n}
            )
            log(f"local rep {rep + 1} {name:16} {1000 * g.stats.decode_seconds / n:8.1f} ms/token")


def summarise(result: dict) -> dict:
    out: dict = {}
    for key, per in result.items():
        if key == "local":
            out[key] = {v: statistics.median(r["ms"] for r in rows) for v, rows in per.items()}
            continue
        out[key] = {}
        for p, variants in per.items():
            out[key][p] = {}
            for v, rows in variants.items():
                accept = [r["accept"] for r in rows if r["accept"] is not None]
                out[key][p][v] = {
                    "ms": statistics.median(r["ms"] for r in rows),
                    "sent": statistics.median(r["sent"] for r in rows),
                    "received": statistics.median(r["received"] for r in rows),
                    **({"accept": statistics.median(accept)} if accept else {}),
                }
    return out


def inside(a: argparse.Namespace) -> None:
    profiles = a.profiles.split(",")
    outputs = a.outputs.split(",")
    lab = Lab(attach=tuple(a.inside))
    every = os.sched_getaffinity(0)
    server_cores = {max(every)} if a.pin and len(every) > 1 else None
    servers = start_servers(lab, a.server_threads, server_cores)
    if server_cores:
        os.sched_setaffinity(0, every - server_cores)
    raw: dict = {}
    info: dict = {"uptime_start": os.getloadavg(), "cores": default_threads(), "pin": a.pin}
    exact: dict[str, list[np.ndarray]] = {}
    trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
    trio.update(n_ctx=a.ctx_size, n_threads=a.threads)
    try:
        endpoints = lab.expose(*PORTS)
        wait_for(endpoints)
        info["links"] = links_per_profile(lab, endpoints, profiles, a)
        for _ in range(a.rounds):
            for output in outputs:
                log(f"loading: large base over RPC, output layer {output}")
                t = time.perf_counter()
                with Emulator(**trio, rpc=endpoints, rpc_output=output) as em:
                    info.setdefault("load_seconds", {})[output] = time.perf_counter() - t
                    info.setdefault("placement", {})[output] = em.placement
                    exact.setdefault(f"rpc_output_{output}", exact_rows(em))
                    measure_rpc(lab, em, profiles, a, raw, f"rpc_output_{output}")
        os.sched_setaffinity(0, every)
        local = trio  # this machine alone, with the client's threads
        if not a.no_local:
            log("loading: all local")
            with Emulator(**local) as em:
                exact["local"] = exact_rows(em)
                measure_local(em, a, raw)
        if a.exactness:
            with Emulator(**local, repack=False) as em:
                exact["local_no_repack"] = exact_rows(em)
    finally:
        for p in servers:
            p.send_signal(signal.SIGINT)
        for p in servers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        lab.close()
    info["uptime_end"] = os.getloadavg()
    diffs = {}
    names = list(exact)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            diffs[f"{x} vs {y}"] = max(
                float(np.abs(np.exp(u) - np.exp(v)).max()) for u, v in zip(exact[x], exact[y])
            )
    summary = summarise(raw)
    report = {"info": info, "summary": summary, "max_abs_prob_diff": diffs, "raw": raw}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    print_table(report, profiles)


def print_table(report: dict, profiles: list[str]) -> None:
    s, info = report["summary"], report["info"]
    print(f"load average at start/end: {info['uptime_start']} / {info['uptime_end']}")
    print(f"output layer here: {info['links']['output_layer_ms_here']:.1f} ms per token")
    for p in profiles:
        link = info["links"][p]
        print(f"{PROFILES[p].describe():32} measured {link['link']}  auto -> {link['auto']}")
    if "local" in s:
        print("local: " + ", ".join(f"{k} {v:.1f} ms/token" for k, v in s["local"].items()))
    head = f"{'placement':20}{'profile':10}{'variant':18}{'ms/tok':>9}{'B/tok in':>11}"
    print(head + f"{'B/tok out':>11}{'accept':>8}")
    for key in (k for k in s if k != "local"):
        for p in profiles:
            for v, m in s[key].get(p, {}).items():
                acc = f"{m['accept']:8.2f}" if "accept" in m else ""
                print(f"{key:20}{p:10}{v:18}{m['ms']:9.1f}{m['received']:11.0f}{m['sent']:11.0f}"
                      + acc)  # fmt: skip
    for k, v in report["max_abs_prob_diff"].items():
        print(f"max |dp| {k}: {v:.2e}")


if __name__ == "__main__":
    main()
