"""How often does greedy speculative decoding give other tokens than plain greedy decoding, and
how often does a reply survive the round trip text -> tokens (the next turn's history)?

Speculative decoding verifies drafted tokens in one batch, whose kernels round differently from
the single-token decodes of plain generation; at a near-tie of the top two tokens the argmax can
flip. Both outputs are exact for their own computation and repeat in every history; this
measures how often they differ from each other.

    .venv/bin/python benchmarks/spec_identity.py L.gguf F.gguf B.gguf -n 32 --prompts 50
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trioargs import trio_parser  # noqa: E402

from localeft import Emulator  # noqa: E402

TOPICS = [
    "reverse a string",
    "check if a number is prime",
    "read a CSV file",
    "merge two dicts",
    "flatten a nested list",
    "count words in a text",
    "compute a factorial",
    "sort by a key",
    "remove duplicates from a list",
    "parse JSON",
    "find the max of a list",
    "a binary search",
    "a fibonacci generator",
    "download a web page",
    "write a file atomically",
    "time a function",
    "a simple class for a point",
    "a decorator that caches",
    "a context manager",
    "a regex for emails",
    "transpose a matrix",
    "a stack with push and pop",
    "a queue with two stacks",
    "the gcd of two numbers",
    "check a palindrome",
    "convert Celsius to Fahrenheit",
    "list files in a directory",
    "a unit test",
    "a command-line argument parser",
    "an HTTP GET with urllib",
    "a dataclass",
    "zip two lists",
    "chunk a list",
    "a random password",
    "a countdown timer",
    "a linked list",
    "bubble sort",
    "merge sort",
    "quick sort",
    "a dictionary comprehension",
    "a generator expression",
    "read lines lazily",
    "an enum",
    "a thread pool",
    "an async function",
    "a SQLite query",
    "a histogram of letters",
    "a Caesar cipher",
    "an LRU cache",
    "a matrix product",
    "the median of a list",
    "a set intersection",
    "a string template",
]


def main() -> None:
    ap = trio_parser(__doc__, tokens=32, reps=1)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--draft", type=int, help="fixed draft length (default: adaptive)")
    a = ap.parse_args()
    em = Emulator(a.large_base, a.small_ft, a.small_base, n_ctx=1024)
    same, first_diff, trips, accepted, drafted = 0, [], 0, 0, 0
    for topic in TOPICS[: a.prompts]:
        msgs = [{"role": "user", "content": f"Write Python code for {topic}. Be brief."}]
        kw = dict(max_tokens=a.tokens, temperature=0.0)
        plain = em.chat(msgs, speculative=False, **kw)
        spec = em.chat(msgs, speculative=True, draft_tokens=a.draft, **kw)
        accepted += spec.stats.accepted
        drafted += spec.stats.drafted
        if spec.tokens == plain.tokens:
            same += 1
        else:
            at = next(i for i, (x, y) in enumerate(zip(spec.tokens, plain.tokens)) if x != y)
            first_diff.append(at)
        history = msgs + [{"role": "assistant", "content": plain.text}]
        ids = em.prompt_tokens(history)["ft"]
        prompt = em.prompt_tokens(msgs)["ft"]
        trips += ids[len(prompt) : len(prompt) + len(plain.tokens)] == plain.tokens
        print(f"{topic}: identical {spec.tokens == plain.tokens}", file=sys.stderr, flush=True)
    n = min(a.prompts, len(TOPICS))
    print(f"prompts: {n}, {a.tokens} tokens each, greedy")
    print(f"speculative output identical to plain: {same}/{n} ({same / n:.0%})")
    if first_diff:
        med = statistics.median(first_diff)
        print(
            f"  where they differ, the first differing token: median {med}"
            f", range {min(first_diff)}-{max(first_diff)}"
        )
    print(f"  acceptance {accepted}/{drafted} ({accepted / max(drafted, 1):.0%})")
    print(f"replies whose tokens survive text -> tokens in the next turn: {trips}/{n}")


if __name__ == "__main__":
    main()
