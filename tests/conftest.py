"""Shared pytest fixtures.

``tiny``: session-scoped SimpleNamespace of Paths to tiny GGUF models written
once by tests/tinymodels.py (see TINY_SPECS there for what each one is):
large_base, small_ft, small_base, oracle_large_base, oracle_small_ft,
oracle_small_base, padded, incompatible, no_template, not_gguf, truncated.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from tinymodels import TINY_SPECS, lora_deltas, write_lora, write_model  # noqa: E402
from tinymodels import write_tiny_set  # noqa: E402

# Tiny models run fastest on one thread, and tests must not fight over a shared 2-core machine.
os.environ.setdefault("LOCALEFT_THREADS", "1")
os.environ.pop("LOCALEFT_SERVER", None)  # tests load their own models, never a running server


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def adapters(tiny, tmp_path_factory):
    """Random LoRA adapters for the tiny models, and the same adapters merged into the weights
    by hand: `a`, `b` (rank 4 and 2) and `embd` (token_embd and output only) for small_base,
    `large` for large_base; `merged_a` = small_base + a, `merged_stack` = small_base + a -
    0.5 b + embd."""
    from types import SimpleNamespace

    d = tmp_path_factory.mktemp("adapters")
    a = write_lora(d / "a.gguf", tiny.small_base, seed=1)
    b = write_lora(d / "b.gguf", tiny.small_base, seed=2, rank=2, alpha=0.0)
    embd = write_lora(
        d / "embd.gguf",
        tiny.small_base,
        seed=3,
        targets=(),
        extra=("token_embd.weight", "output.weight"),
    )
    large = write_lora(d / "large.gguf", tiny.large_base, seed=4)
    spec = TINY_SPECS["small_base"]
    stack = [(a, 1.0), (b, -0.5), (embd, 1.0)]
    return SimpleNamespace(
        a=a,
        b=b,
        embd=embd,
        large=large,
        stack=stack,
        merged_a=write_model(d / "merged_a.gguf", **spec, deltas=lora_deltas([(a, 1.0)])),
        merged_stack=write_model(d / "merged_stack.gguf", **spec, deltas=lora_deltas(stack)),
    )


@pytest.fixture(scope="session")
def em(tiny):
    """One up-scaling Emulator over the tiny trio, shared by the tests (KV caches and all)."""
    from localeft import Emulator

    e = Emulator(
        large_base=tiny.large_base, small_ft=tiny.small_ft, small_base=tiny.small_base, n_ctx=256
    )
    yield e
    e.close()


@pytest.fixture(scope="session")
def make_em(tiny):
    """Emulators over the tiny trio: `make_em(**overrides)`, n_ctx 256 unless given."""
    from localeft import Emulator

    made = []

    def make(**overrides):
        args = dict(
            large_base=tiny.large_base,
            small_ft=tiny.small_ft,
            small_base=tiny.small_base,
            n_ctx=256,
        )
        made.append(Emulator(**{**args, **overrides}))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.fixture
def run(tiny, tmp_path, monkeypatch):
    """`run(COMMAND, *args)`: the CLI in-process on the tiny trio, offline and isolated."""
    from click.testing import CliRunner
    from clitools import trio
    from hubcache import isolate

    from localeft.cli import cli

    isolate(tmp_path, monkeypatch)

    def invoke(*args):
        argv = [str(a) for a in (*args[:1], *trio(tiny), *args[1:])]
        return CliRunner().invoke(cli, argv)

    return invoke


@pytest.fixture
def tokenized(monkeypatch) -> list[int]:
    """The length of every text any model tokenizes during the test (Model.tokenize spied)."""
    from localeft.backend import Model

    lengths: list[int] = []
    real = Model.tokenize

    def spy(self, text, **kw):
        lengths.append(len(text))
        return real(self, text, **kw)

    monkeypatch.setattr(Model, "tokenize", spy)
    return lengths


@pytest.fixture(scope="module")
def servers():
    """Two `localeft rpc-server`s shared by a module's tests that leave them running (each
    closes its Emulator: a server serves one client at a time)."""
    from rpcservers import Server

    two = [Server(), Server()]
    yield two
    for s in two:
        s.stop()
