"""How long `localeft serve` takes to exit on SIGTERM in the middle of a long reply, on real
models: a streaming chat with no max_tokens (the whole context), SIGTERM after the 10th chunk;
prints the seconds from the signal to the process's exit, how the stream ended and how many
tokens it had. `--twice` sends a second SIGTERM 0.5 s after the first.

    .venv/bin/python benchmarks/serve_shutdown.py L.gguf F.gguf B.gguf [--reps 2] [--twice]
    (--source DIR runs another checkout's server, to compare)
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from hostile_prompt import ROOT, free_port, start_server  # noqa: E402
from trioargs import trio_parser  # noqa: E402


def one(args) -> dict:
    port = free_port()
    proc = start_server(args, port)
    body = {
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
        "temperature": 0,
        "stream": True,
    }
    events: list[str] = []
    sent = {}

    def stream():
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            with httpx.stream("POST", url, json=body, timeout=600) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                    if len(events) == 10 and not sent:
                        sent["t"] = time.perf_counter()
                        proc.send_signal(signal.SIGTERM)
                        if args.twice:
                            time.sleep(0.5)
                            proc.send_signal(signal.SIGTERM)
        except httpx.HTTPError as e:
            events.append(f"(connection: {type(e).__name__})")

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    proc.wait(600)
    seconds = time.perf_counter() - sent["t"]
    t.join(5)
    last = next((json.loads(e) for e in reversed(events) if e.startswith("{")), {})
    ext = last.get("localeft", {})
    return {
        "exit_s": round(seconds, 2),
        "returncode": proc.returncode,
        "done": bool(events) and events[-1] == "[DONE]",
        "finish_reason": ext.get("finish_reason"),
        "tokens": ext.get("stats", {}).get("generated_tokens"),
    }


def main() -> None:
    ap = trio_parser(__doc__, tokens=0, reps=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--source", default=str(ROOT), help="run the server from this checkout")
    ap.add_argument("--twice", action="store_true", help="a second SIGTERM after 0.5 s")
    args = ap.parse_args()
    for _ in range(args.reps):
        print(json.dumps(one(args)), flush=True)


if __name__ == "__main__":
    main()
