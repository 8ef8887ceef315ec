"""Scripting with the CLI, whole processes timed from outside, in one run: what a shell script
that calls `localeft` pays per call.

    .venv/bin/python benchmarks/scripting.py L.gguf F.gguf B.gguf [--reps 3] [--prompts 20] \
        [-n 16] [--only one_shot,n64,batch,server] [--json]

1. one_shot: `generate -n 1 --json "Hello"` with the weights repacked (`--repack`, the old
   default) and mmap'd (the default now), alternating A B A B ...; also the time outside the
   generation (start-up and load: wall time less the generation's `stats.seconds`).
2. n64: the same with `-n 64` (where repacking's faster decoding starts to count).
3. batch: PROMPTS prompts through one `generate --jsonl` against PROMPTS `generate` calls (the
   default load), alternating; and the batch's time outside its generations (wall time less
   their `stats.seconds`): start-up, one load, rendering prompts, writing results.
4. decode: ms per generated token of the two layouts, two Emulators in this process taking
   turns (greedy, 48 tokens of a chat reply); with one_shot, how many tokens repacking's faster
   decoding needs to pay its slower load back.
5. server: PROMPTS `generate --server` calls to a `localeft serve` of the same trio, each against
   the same request sent by a plain HTTP client from this process (the server's own time),
   alternating; the difference is what the CLI as a client adds.

Medians of each, ratios of pairs taken in the same repetition. The page cache is warm (one
unmeasured run of each first; the batch's runs follow the one-shot ones). Run on a quiet
machine, or read the load averages it prints.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPICS = "rain,chess,rivers,bread,stars,glass,cats,trains,salt,winter,bees,maps,clocks,iron,"
TOPICS += "moss,kites,ink,tides,owls,ferns,dust,bells,wool,sand"


def cli(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOCALEFT_SERVER", None)
    # as installed: byte code written once and reused (an environment that forbids it, as some
    # sandboxes do, compiles every module on every start: ~30 ms more a call here)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    r = subprocess.run(
        [sys.executable, "-m", "localeft", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        **kw,
    )
    if check and r.returncode:
        raise SystemExit(f"localeft {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def children_cpu() -> float:
    """User + system seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pairs(a, b, reps: int, log, warm: bool = True) -> dict:
    """A and B alternating (B first on odd repetitions): medians and the pairs' ratio A/B."""
    ta, tb, ca, cb, la, lb = [], [], [], [], [], []
    if warm:
        a(), b()  # warm the page cache; unmeasured
    for rep in range(reps):
        order = [(a, ta, ca, la), (b, tb, cb, lb)]
        for fn, times, cpu, outside in order if rep % 2 == 0 else order[::-1]:
            c = children_cpu()
            seconds, r = timed(fn)
            times.append(seconds)
            cpu.append(children_cpu() - c)
            if isinstance(r, subprocess.CompletedProcess) and r.stdout.startswith("{"):
                results = (
                    [json.loads(x) for x in r.stdout.splitlines()]
                    if "\n{" in r.stdout
                    else [json.loads(r.stdout)]
                )
                outside.append(seconds - sum(d["stats"]["seconds"] for d in results))
        log(f"  rep {rep + 1}/{reps}: A {ta[-1]:.2f} s, B {tb[-1]:.2f} s (wall)")
    out = {
        "a_median_s": statistics.median(ta),
        "b_median_s": statistics.median(tb),
        "ratio_a_b": statistics.median(x / y for x, y in zip(ta, tb)),
        "a_cpu_median_s": statistics.median(ca),
        "b_cpu_median_s": statistics.median(cb),
        "a_s": ta,
        "b_s": tb,
    }
    for key, outside in (("a", la), ("b", lb)):  # --json output: the time outside generating
        if outside:
            out[f"{key}_outside_median_s"] = statistics.median(outside)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_generate(port: int, prompt: str, n: int) -> float:
    """The server's own time for one request: sent and read to its end from this process."""
    settings = {"max_tokens": n, "temperature": 0.0, "beta": 1.0}
    body = json.dumps({"prompt": [{"role": "user", "content": prompt}], "settings": settings})
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", "/localeft/v1/generate", body, {"Content-Type": "application/json"})
    data = conn.getresponse().read()
    conn.close()
    assert b'"generation"' in data, data[:300]
    return time.perf_counter() - t


def decode(a, reps: int, log) -> dict:
    """Median ms per token of each layout, alternating, in this process."""
    import llama_cpp  # noqa: F401  (before numpy)

    sys.path.insert(0, str(ROOT))
    from localeft import Emulator

    trio = dict(large_base=a.large_base, small_ft=a.small_ft, small_base=a.small_base)
    ems = {
        "repacked": Emulator(**trio, n_ctx=a.ctx_size, repack=True),
        "mmap": Emulator(**trio, n_ctx=a.ctx_size),
    }
    chat = [{"role": "user", "content": "Explain how a hash map works, in detail."}]
    times: dict[str, list[float]] = {k: [] for k in ems}
    for em in ems.values():
        em.chat(chat, max_tokens=8)  # warm-up; the CPU layout of EFT steps is decided
    for rep in range(reps):
        for name in list(ems)[:: 1 if rep % 2 == 0 else -1]:
            g = ems[name].chat(chat, max_tokens=48)
            times[name].append(g.stats.ms_per_token)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in times.items()))
    for em in ems.values():
        em.close()
    out = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    out["mmap_vs_repacked"] = statistics.median(
        m / r for m, r in zip(times["mmap"], times["repacked"])
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for role in ("large_base", "small_ft", "small_base"):
        ap.add_argument(role)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("-n", "--tokens", type=int, default=16, help="tokens per prompt (3, 4)")
    ap.add_argument("-c", "--ctx-size", type=int, default=2048)
    ap.add_argument("--only", default="one_shot,n64,batch,decode,server")
    ap.add_argument(
        "--no-warmup",
        action="store_true",
        help="the page cache is warm already: no unmeasured runs",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    log = (lambda m: None) if a.json else (lambda m: print(m, file=sys.stderr, flush=True))
    trio = ["--large-base", a.large_base, "--small-ft", a.small_ft, "--small-base", a.small_base]
    trio += ["-c", a.ctx_size]
    only = set(a.only.split(","))
    prompts = [f"Write one sentence about {t}." for t in TOPICS.split(",")][: a.prompts]
    out: dict = {"models": trio[1:6:2], "load_before": load(), "results": {}}
    res = out["results"]

    for name, n in (("one_shot", 1), ("n64", 64)):
        if name in only:
            log(f"{name}: generate -n {n}, A --repack, B mmap (default)")
            res[name] = pairs(
                lambda n=n: cli("generate", *trio, "-n", n, "--json", "--repack", "Hello"),
                lambda n=n: cli("generate", *trio, "-n", n, "--json", "Hello"),
                a.reps,
                log,
                not a.no_warmup,
            )

    lines: list = []
    if "batch" in only:
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

        def batch():
            r = cli("generate", *trio, "-n", a.tokens, "--jsonl", f.name)
            lines[:] = [json.loads(x) for x in r.stdout.splitlines()]
            return r

        def calls():
            for p in prompts:
                cli("generate", *trio, "-n", a.tokens, p)

        log(f"batch: {len(prompts)} prompts, A one --jsonl, B one call each")
        warm = not ({"one_shot", "n64"} & only or a.no_warmup)  # else it is warm already
        res["batch"] = pairs(batch, calls, max(1, a.reps - 1), log, warm)
        os.unlink(f.name)

    if "decode" in only:
        log("decode: two Emulators, repacked and mmap'd, taking turns")
        res["decode"] = decode(a, max(3, a.reps), log)
        if "one_shot" in res:
            saved = res["decode"]["mmap_ms"] - res["decode"]["repacked_ms"]
            extra = res["one_shot"]["a_median_s"] - res["one_shot"]["b_median_s"]
            res["decode"]["payback_tokens"] = 1000 * extra / saved if saved > 0 else None

    if "server" in only:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [sys.executable, "-m", "localeft", "serve", *map(str, trio), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            t0 = time.perf_counter()
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.perf_counter() - t0 > 600:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.2)
            log(f"server: up in {time.perf_counter() - t0:.1f} s; {len(prompts)} prompts each way")
            raw, client = {}, {}  # by prompt index
            texts: dict[int, str] = {}
            raw_generate(port, prompts[0], a.tokens)  # warm
            cli("generate", "--server", url, "-n", a.tokens, prompts[0])
            # Each side gets a prompt the other did not just send (a repeated prompt would find
            # its tokens in the KV caches), and every prompt once each way: the sums compare
            # the same requests.
            n = len(prompts)
            for i in range(n):
                j = (i + 1) % n
                pair = [
                    (raw, i, lambda i=i: raw_generate(port, prompts[i], a.tokens)),
                    (
                        client,
                        j,
                        lambda j=j: cli("generate", "--server", url, "-n", a.tokens, prompts[j]),
                    ),
                ]
                for times, k, fn in pair if i % 2 == 0 else pair[::-1]:
                    seconds, r = timed(fn)
                    times[k] = seconds
                    if times is client:
                        texts[k] = r.stdout
            order = range(n)
            raw, client = [raw[k] for k in order], [client[k] for k in order]
            texts = [texts[k] for k in order]
            res["server"] = {
                "server_own_median_s": statistics.median(raw),
                "cli_median_s": statistics.median(client),
                "cli_adds_median_s": statistics.median(c - r for c, r in zip(client, raw)),
                "cli_adds_mean_s": (sum(client) - sum(raw)) / len(raw),
                "server_own_total_s": sum(raw),
                "cli_total_s": sum(client),
            }
            if lines:  # the same requests ran locally in the batch: the same bytes?
                local = [d["text"] + ("" if d["text"].endswith("\n") else "\n") for d in lines]
                res["server"]["same_text_as_local"] = sum(x == y for x, y in zip(texts, local))
        finally:
            server.terminate()
            server.wait(30)
    out["load_after"] = load()
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"load averages: before {out['load_before']}, after {out['load_after']}")
    for name in ("one_shot", "n64"):
        if name in res:
            r = res[name]
            print(
                f"{name:9} repack {r['a_median_s']:7.2f} s   mmap {r['b_median_s']:7.2f} s   "
                f"repack/mmap {r['ratio_a_b']:.2f}x   (CPU {r['a_cpu_median_s']:.1f} vs "
                f"{r['b_cpu_median_s']:.1f} s"
                + (
                    f"; start and load {r['a_outside_median_s']:.2f} vs "
                    f"{r['b_outside_median_s']:.2f} s)"
                    if "b_outside_median_s" in r
                    else ")"
                )
            )
    if "batch" in res:
        r = res["batch"]
        print(
            f"batch     --jsonl {r['a_median_s']:7.2f} s   {len(prompts)} calls "
            f"{r['b_median_s']:7.2f} s   ({r['ratio_a_b']:.2f}x); the --jsonl process outside "
            f"its generations (start-up, load, rendering): {r['a_outside_median_s']:.2f} s"
        )
    if "decode" in res:
        r = res["decode"]
        payback = r.get("payback_tokens")
        print(
            f"decode    repacked {r['repacked_ms']:.1f} ms/token, mmap {r['mmap_ms']:.1f} "
            f"({r['mmap_vs_repacked']:.2f}x)"
            + (f"; repacking pays its load back after ~{payback:.0f} tokens" if payback else "")
        )
    if "server" in res:
        r = res["server"]
        print(
            f"server    per call: server's own {r['server_own_median_s']:.3f} s, "
            f"generate --server {r['cli_median_s']:.3f} s (adds {r['cli_adds_median_s']:.3f} s); "
            f"{len(prompts)} calls {r['cli_total_s']:.2f} s"
            + (
                f"; {r['same_text_as_local']} of {len(prompts)} texts equal the local batch's"
                if "same_text_as_local" in r
                else ""
            )
        )


if __name__ == "__main__":
    main()
