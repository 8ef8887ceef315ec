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

from tinymodels import write_tiny_set  # noqa: E402

# Tiny models run fastest on one thread, and tests must not fight over a shared 2-core machine.
os.environ.setdefault("LOCALEFT_THREADS", "1")
os.environ.pop("LOCALEFT_SERVER", None)  # tests load their own models, never a running server


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("tiny_models"))


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
