"""What the benchmark scripts share: the command line naming a trio of GGUF files."""

from __future__ import annotations

import argparse


def trio_parser(doc: str, tokens: int, reps: int) -> argparse.ArgumentParser:
    """LARGE_BASE SMALL_FT SMALL_BASE, -n/--tokens and --reps; the script adds the rest."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("large_base")
    ap.add_argument("small_ft")
    ap.add_argument("small_base")
    ap.add_argument("-n", "--tokens", type=int, default=tokens)
    ap.add_argument("--reps", type=int, default=reps)
    return ap
