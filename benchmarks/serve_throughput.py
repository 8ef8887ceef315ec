"""Tokens/s and time to first token through `localeft serve` (one client, streaming) against
the Emulator called directly, on real models, alternating the two in one run.

Both are timed from outside the same way: time to the first text piece (TTFT, the prompt's
evaluation included), then tokens after the first ÷ the time after the first piece. Each
measurement starts its prompt with a fresh number, so neither reuses the other's KV cache.
The server runs in this process (uvicorn in a thread, 127.0.0.1), the client is httpx. With
--worker, also a server whose Emulator runs in a supervised worker process (what
`localeft serve --rpc` does; server/supervisor.py): what the process boundary costs.

    .venv/bin/python benchmarks/serve_throughput.py L.gguf F.gguf B.gguf -n 48 --reps 5 [--worker]
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from trioargs import trio_parser  # noqa: E402

from localeft import Emulator  # noqa: E402
from localeft.bench import PROMPT  # noqa: E402
from localeft.server.app import create_app  # noqa: E402


def start(app) -> tuple[str, uvicorn.Server]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def direct(em: Emulator, messages, n: int) -> tuple[float, float, int, float]:
    t0 = time.perf_counter()
    stream = em.stream(messages, max_tokens=n, temperature=0)
    first = last = None
    for _ in stream:
        last = time.perf_counter()
        first = first or last
    g = stream.generation
    tokens = len(g.tokens)
    return first - t0, (tokens - 1) / (last - first), tokens, g.stats.tokens_per_second


def served(url: str, messages, n: int) -> tuple[float, float, int, float]:
    body = {
        "messages": messages,
        "max_tokens": n,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    tokens, engine = 0, 0.0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if "stats" in chunk.get("localeft", {}):
                engine = chunk["localeft"]["stats"]["tokens_per_second"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return first - t0, (tokens - 1) / (last - first), tokens, engine


def main() -> None:
    ap = trio_parser(__doc__, tokens=48, reps=5)
    ap.add_argument("-c", "--ctx-size", type=int, default=2048)
    ap.add_argument("--worker", action="store_true", help="also the supervised worker process")
    a = ap.parse_args()
    em = Emulator(a.large_base, a.small_ft, a.small_base, n_ctx=a.ctx_size)
    url, server = start(create_app(em))
    urls = {"server": url}
    remote = None
    if a.worker:
        from localeft.server.supervisor import RemoteEmulator, Supervisor

        trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
        supervisor = Supervisor({**trio, "n_ctx": a.ctx_size})
        supervisor.start()
        remote = RemoteEmulator(supervisor)
        urls["worker"], worker_server = start(create_app(remote))
    results: dict[str, list[tuple]] = {"direct": [], **{name: [] for name in urls}}
    k = 0
    for u in urls.values():  # warm-up, every path
        served(u, PROMPT, 4)
    direct(em, PROMPT, 4)
    names = list(results)
    for rep in range(a.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            k += 1
            messages = [{"role": "user", "content": f"{k}. {PROMPT[-1]['content']}"}]
            if name == "direct":
                r = direct(em, messages, a.tokens)
            else:
                r = served(urls[name], messages, a.tokens)
            results[name].append(r)
            print(
                f"{name:<7} ttft {r[0]:.3f} s  {r[1]:6.2f} tok/s  ({r[2]} tokens; "
                f"the engine's own count {r[3]:.2f} tok/s)",
                flush=True,
            )
    server.should_exit = True
    if remote is not None:
        worker_server.should_exit = True
        remote.close()
    med = {
        name: [statistics.median(x[i] for x in rs) for i in range(4)]
        for name, rs in results.items()
    }
    print(f"\nmedians over {a.reps} reps, {a.tokens} tokens, greedy, one client:")
    for name, (ttft, tps, _, engine) in med.items():
        print(
            f"  {name:<7} {tps:6.2f} tok/s (engine's own {engine:.2f})   "
            f"time to first token {ttft * 1000:6.0f} ms"
        )
    print(f"  server / direct tokens/s: {med['server'][1] / med['direct'][1]:.3f}")
    pairs = [s[1] / d[1] for s, d in zip(results["server"], results["direct"])]
    print(f"  median of the per-rep ratios: {statistics.median(pairs):.3f}")
    extra = (med["server"][0] - med["direct"][0]) * 1000
    print(f"  server - direct time to first token: {extra:+.0f} ms")
    if "worker" in med:
        print(f"  worker / server tokens/s: {med['worker'][1] / med['server'][1]:.3f}")
        pairs = [w[1] / s[1] for w, s in zip(results["worker"], results["server"])]
        print(f"  median of the per-rep ratios (worker / server): {statistics.median(pairs):.3f}")
        extra = (med["worker"][0] - med["server"][0]) * 1000
        print(f"  worker - server time to first token: {extra:+.0f} ms")


if __name__ == "__main__":
    main()
