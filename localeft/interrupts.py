"""Ctrl-C deferred to the end of a block: for work that must not stop half done (a model load
that llama.cpp can only abort from its progress callback, a chat turn's bookkeeping)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


def interruptible() -> bool:
    """Can Ctrl-C reach Python here? (the main thread, and SIGINT not ignored, as under nohup)"""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    )


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list]:
    """Inside the block a Ctrl-C is only recorded, in the list it yields (so code that polls,
    such as a load's progress callback, can see it); KeyboardInterrupt is raised when the block
    ends. Where Ctrl-C cannot reach Python, the list stays empty and nothing changes."""
    hits: list = []
    if not interruptible():
        yield hits
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
    try:
        yield hits
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt
