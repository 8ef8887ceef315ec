"""Step 3: does EFT carry the adapter's behaviour to the large model? Greedy replies to the
held-out prompts (other topics, other phrasings than training) from the large model alone,
the small model alone (with and without the adapter) and EFT at several betas, the share that
start with PHRASE; and factual questions, to see the large model's knowledge kept.

Runs in localeft's environment:
    python evaluate.py LARGE.gguf SMALL.gguf ADAPTER.gguf OUT.json [--peft peft_samples.json]
One Emulator (large + small, the small loaded once: plain and adapted are two contexts).
"""

import argparse
import json
import time

from localeft import Emulator, LoRA
from prompts import FACTS, PHRASE, held_out_prompts

BETAS = (0.5, 1.0, 1.5)
FACT_CONFIGS = ("1.5B alone", "0.5B + LoRA alone", "EFT beta 1")


def configs():
    """(name, mode, beta): the models alone, then EFT."""
    yield "1.5B alone", "base", None
    yield "0.5B + LoRA alone", "ft", None
    for b in BETAS:
        yield f"EFT beta {b:g}", "eft", b


def shows(text: str) -> bool:
    return text.lstrip().startswith(PHRASE)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("large")
    ap.add_argument("small")
    ap.add_argument("adapter")
    ap.add_argument("out")
    ap.add_argument("--peft", help="peft_samples.json: the PEFT model's own greedy replies")
    ap.add_argument("-n", type=int, default=8, help="tokens per behaviour reply")
    ap.add_argument("--prompts", type=int, default=30, help="held-out prompts (of 40)")
    ap.add_argument("--facts", type=int, default=5, help="factual questions (of 10)")
    ap.add_argument("--fact-tokens", type=int, default=20)
    a = ap.parse_args()
    t0 = time.time()
    em = Emulator(
        large_base=a.large, small_ft=LoRA(a.small, a.adapter), small_base=a.small, n_ctx=512
    )
    plain = Emulator(large_base=a.small, small_ft=a.small, small_base=a.small, n_ctx=512)
    result = {"phrase": PHRASE, "behaviour": {}, "facts": {}, "replies": {}, "peft": None}

    def reply(e, question, mode, beta, n):
        msgs = [{"role": "user", "content": question}]
        return e.chat(msgs, max_tokens=n, mode=mode, beta=beta).text

    prompts = held_out_prompts()[: a.prompts]
    names = [name for name, _, _ in configs()]
    counts = {n: 0 for n in names[:1] + ["0.5B alone (no adapter)"] + names[1:]}
    for i, p in enumerate(prompts):
        row = {name: reply(em, p, mode, b, a.n) for name, mode, b in configs()}
        row["0.5B alone (no adapter)"] = reply(plain, p, "base", None, a.n)
        for name, text in row.items():
            counts[name] += shows(text)
        result["replies"][p] = row
        print(i, p, {k: v[:40] for k, v in row.items()}, flush=True)
    result["behaviour"] = {k: {"shows": v, "of": len(prompts)} for k, v in counts.items()}
    for q, answer in FACTS[: a.facts]:
        row = {
            name: reply(em, q, mode, b, a.fact_tokens)
            for name, mode, b in configs()
            if name in FACT_CONFIGS
        }
        result["facts"][q] = {
            name: {"text": t, "correct": answer.lower() in t.lower(), "shows": shows(t)}
            for name, t in row.items()
        }
        print(q, {k: (answer.lower() in v.lower(), v[:60]) for k, v in row.items()}, flush=True)
    if a.peft:  # the adapter in llama.cpp against the PEFT model it came from
        peft = json.load(open(a.peft, encoding="utf-8"))
        same = {p: reply(em, p, "ft", None, t["tokens"]) == t["text"] for p, t in peft.items()}
        result["peft"] = {"same_greedy_text": sum(same.values()), "of": len(same), "each": same}
    result["seconds"] = round(time.time() - t0)
    json.dump(result, open(a.out, "w", encoding="utf-8"), indent=1, ensure_ascii=False)
    print(table(result))


def table(r: dict) -> str:
    n_facts = len(r["facts"])
    lines = [
        "| configuration | replies starting with the phrase | factual answers correct |",
        "|---|---|---|",
    ]
    for name, c in r["behaviour"].items():
        facts = [f[name] for f in r["facts"].values() if name in f]
        fact = f"{sum(x['correct'] for x in facts)}/{n_facts}" if facts else "not asked"
        share = c["shows"] / c["of"]
        lines.append(f"| {name} | {c['shows']}/{c['of']} ({share:.0%}) | {fact} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
