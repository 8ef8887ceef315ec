#!/usr/bin/env python3
"""What the gate of `localeft rpc-server` (localeft/rpcgate.py: handshake and stall timeouts, a
Python forwarder in front of llama.cpp's server) costs: the large base over two gated servers vs
two bare llama.cpp servers, decode ms/token and prompt tok/s, alternating, medians and ratios;
and, without models, the round trip and bandwidth rpclink measures through each (best of 5 small
requests, then a 16 MB read; medians of 10, alternating).

    python benchmarks/rpcgate_cost.py LARGE_BASE SMALL_FT SMALL_BASE [-n 32] [--reps 5]
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import llama_cpp  # noqa: E402,F401  (before numpy)

from rpcservers import free_port, wait_ready  # noqa: E402  (tests/)
from trioargs import trio_parser  # noqa: E402

from localeft import Emulator, rpclink  # noqa: E402
from localeft.bench import PROMPT  # noqa: E402

LONG_PROMPT = "def fibonacci(n):\n    " * 60  # ~300 tokens
BARE = (
    "import sys; from localeft import rpcserver; "
    "rpcserver.serve(rpcserver.listen('127.0.0.1', int(sys.argv[1])), 1, None, gate=False)"
)


def start(gated: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if gated:
        cmd = [sys.executable, "-m", "localeft", "rpc-server", "--port", str(port), "-t", "1"]
    else:
        cmd = [sys.executable, "-c", BARE, str(port)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    if not wait_ready(p, endpoint):
        raise SystemExit(f"no rpc-server on {endpoint}")
    return p, endpoint


def main() -> None:
    ap = trio_parser(__doc__, tokens=32, reps=5)
    a = ap.parse_args()
    procs = {k: [start(k == "gate") for _ in range(2)] for k in ("gate", "bare")}
    trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
    ems = {}
    decode: dict[str, list[float]] = {"gate": [], "bare": []}
    prompt: dict[str, list[float]] = {"gate": [], "bare": []}
    links: dict[str, list[rpclink.Link]] = {"gate": [], "bare": []}
    try:
        for _ in range(10):
            for k, pair in procs.items():
                links[k].append(rpclink.measure(pair[0][1]))
        for k, pair in procs.items():
            eps = [e for _, e in pair]
            ems[k] = Emulator(**trio, n_ctx=2048, n_threads=1, rpc=eps, rpc_output="remote")
            ems[k].chat(PROMPT, max_tokens=2, mode="base", speculative=False)
        for rep in range(a.reps):
            for k in ("gate", "bare") if rep % 2 == 0 else ("bare", "gate"):
                em = ems[k]
                g = em.chat(PROMPT, max_tokens=a.tokens, mode="base", speculative=False)
                decode[k].append(1000 * g.stats.decode_seconds / g.stats.generated_tokens)
                for r in em.group.roles:
                    r.ctx.truncate(0)
                g = em.generate(LONG_PROMPT, max_tokens=1, mode="base", speculative=False)
                prompt[k].append(g.stats.prompt_evaluated / g.stats.prompt_seconds)
                print(f"rep {rep + 1} {k}: {decode[k][-1]:.1f} ms/token", file=sys.stderr)
    finally:
        for em in ems.values():
            em.close()
        for pair in procs.values():
            for p, _ in pair:
                p.send_signal(signal.SIGINT)
        for pair in procs.values():
            for p, _ in pair:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    med = {k: statistics.median(v) for k, v in decode.items()}
    pp = {k: statistics.median(v) for k, v in prompt.items()}
    print(
        json.dumps(
            {
                "decode_ms_per_token": med,
                "prompt_tokens_per_second": pp,
                "gate_vs_bare_decode_time": med["gate"] / med["bare"],
                "gate_vs_bare_prompt_speed": pp["gate"] / pp["bare"],
                "round_trip_us": {
                    k: statistics.median(x.rtt * 1e6 for x in v) for k, v in links.items()
                },
                "bandwidth_mbit_s": {
                    k: statistics.median(x.down * 8e-6 for x in v) for k, v in links.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
