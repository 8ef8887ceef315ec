"""What one huge prompt does to everyone else on `localeft serve`: /health latency and the
stall of another client's running stream while a 7.5 MB chat message (under the 8 MiB body
limit) is answered, on real models.

The server is a separate process (`python -m localeft serve`, as users run it), so the client's
timings do not share its GIL. Another client streams a long greedy reply; once it is running,
/health is polled every 50 ms and the huge message is sent (after one warm-up generation: the
first one measures the CPU layout); what is printed: the huge request's
status and time, the worst /health latency while it was in flight, and the longest gap between
the other stream's chunks then, against its median gap before.

    .venv/bin/python benchmarks/hostile_prompt.py L.gguf F.gguf B.gguf [--mb 7.5] [--reps 3]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from trioargs import trio_parser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VERBOSE = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "localeft", "serve", "--port", str(port)]
    cmd += ["--large-base", args.large_base, "--small-ft", args.small_ft]
    cmd += ["--small-base", args.small_base, "-c", str(args.ctx)]
    env = {**os.environ, "PYTHONPATH": args.source}
    proc = subprocess.Popen(
        cmd, env=env, cwd=args.source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read().decode()) from None
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def other_stream(url: str, arrivals: list, tokens: int) -> None:
    body = {
        "messages": [{"role": "user", "content": "Count from 1 to 500, one number a line."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter())


def poll_health(url: str, stop: threading.Event, latencies: list) -> None:
    with httpx.Client(timeout=900) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get(url + "/health")
            latencies.append((t, time.perf_counter() - t))
            time.sleep(0.05)


def one(url: str, mb: float, tokens: int) -> dict:
    arrivals: list[float] = []
    streamer = threading.Thread(target=other_stream, args=(url, arrivals, tokens))
    streamer.start()
    while len(arrivals) < 8:
        time.sleep(0.05)
    content = "word " * int(mb * 1e6 / 5)
    payload = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 8})
    stop, latencies = threading.Event(), []
    poller = threading.Thread(target=poll_health, args=(url, stop, latencies))
    poller.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/v1/chat/completions",
        content=payload,
        headers={"Content-Type": "application/json"},
        timeout=600,
    )
    t1 = time.perf_counter()
    time.sleep(0.3)
    stop.set()
    poller.join()
    streamer.join()
    before = [b - a for a, b in zip(arrivals, arrivals[1:]) if b < t0]
    during = [b - a for a, b in zip(arrivals, arrivals[1:]) if b >= t0 and a <= t1]
    worst = max((lat for t, lat in latencies if t0 - 0.2 <= t <= t1), default=0.0)
    code = r.json().get("error", {}).get("code") if r.status_code != 200 else "ok"
    if VERBOSE:
        print("arrivals after t0:", [round(a - t0, 2) for a in arrivals if a >= t0 - 1][:12])
    return {
        "status": r.status_code,
        "code": code,
        "answer_s": t1 - t0,
        "health_worst_s": worst,
        "stream_gap_s": max(during, default=0.0),
        "stream_gap_before_s": statistics.median(before) if before else 0.0,
    }


def main() -> None:
    ap = trio_parser(__doc__, tokens=400, reps=3)
    ap.add_argument("--mb", type=float, default=7.5)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--source", default=str(ROOT), help="run the server from this checkout")
    ap.add_argument("-v", "--verbose", action="store_true", help="the stream's arrival times")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    port = free_port()
    proc = start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        other_stream(url, [], 16)  # warm up: the first generation measures the CPU layout
        rows = [one(url, args.mb, args.tokens) for _ in range(args.reps)]
    finally:
        proc.terminate()
        proc.wait(30)
    for r in rows:
        print(json.dumps(r))
    for k in ("answer_s", "health_worst_s", "stream_gap_s", "stream_gap_before_s"):
        print(f"median {k}: {statistics.median(r[k] for r in rows):.3f}")


if __name__ == "__main__":
    main()
