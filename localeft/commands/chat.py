"""`localeft chat`: the REPL (repl.py) over the Emulator the options describe."""

from __future__ import annotations

import contextlib
import os

import click

from .. import rpc
from ..repl import CHAT_HELP, ChatSession, history_dir, latest_history
from ..terminal import stdin_is_tty
from .options import MODE, MODEL_OPTIONS, SAMPLING_OPTIONS, Failure, open_emulator, opt, sampling
from .remote import SERVER


@click.command(
    help="""Chat interactively; replies stream as they are generated. The KV cache is
reused between turns, so each turn evaluates only its new tokens (-v or /stats shows it).

\b
Examples:
  localeft chat
  localeft chat --preset gemma3-1b --temp 0.7 --system "You are terse."
  localeft chat --large-base big.gguf --small-ft ft.gguf --small-base base.gguf -v

\b
"""
    + CHAT_HELP
)
@MODEL_OPTIONS
@SAMPLING_OPTIONS
@MODE
@opt(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[FILE]",
    help="Continue the latest conversation of the history (or one saved with /save).",
)
@SERVER
def chat(mode, resume, **o):
    history = None
    if resume == "latest":
        history = latest_history()
        if history is None:
            raise Failure(f"no conversation to resume in {history_dir()}")
    elif resume is not None and not os.path.isfile(os.path.expanduser(resume)):
        raise Failure(f"cannot resume: no such file {resume}")
    em, settings = open_emulator(o)
    with em:
        if stdin_is_tty():
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
        session = ChatSession(
            em, sampling(o, settings), mode, o["system"], o["verbose"], history=history
        )
        rpc.at_fault(session.fault_note)  # a lost RPC server ends the process: say what is kept
        if resume is not None and not session.load(history or resume):
            raise Failure(f"cannot resume from {history or resume}")
        session.loop()
