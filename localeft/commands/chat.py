"""`localeft chat`: the REPL (repl.py) over the Emulator the options describe."""

from __future__ import annotations

import contextlib

import click
from click.core import ParameterSource

from .. import rpc
from ..chatfiles import ChatFileError, history_dir, latest_history, read_chat
from ..repl import CHAT_HELP, ChatSession
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
    history = saved = None
    if resume == "latest":
        history = latest_history()
        if history is None:
            raise Failure(f"no conversation to resume in {history_dir()}")
    if resume is not None:  # read before the models load: a bad file fails at once
        try:
            saved = read_chat(history or resume)
        except ChatFileError as e:
            raise Failure(f"cannot resume from {e}") from None
    em, settings = open_emulator(o)
    with em:
        if stdin_is_tty():
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
        session = ChatSession(
            em,
            sampling(o, settings),
            mode,
            o["system"],
            o["verbose"],
            history=history,
            pinned=_given_settings(),
        )
        rpc.at_fault(session.fault_note)  # a lost RPC server ends the process: say what is kept
        if saved is not None:
            session.restore(saved, history or resume)
        session.loop()


def _given_settings() -> frozenset[str]:
    """The settings given on the command line (or the environment): a resumed chat keeps
    them instead of its saved ones."""
    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    names = {"temp": "temperature"}
    return frozenset(
        names.get(p, p)
        for p in ("beta", "mode", "temp", "top_k", "top_p", "min_p", "seed", "max_tokens")
        if ctx.get_parameter_source(p) in given
    )
