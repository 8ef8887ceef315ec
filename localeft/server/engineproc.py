"""The engine worker process of `localeft serve` (supervisor.py starts it): it owns the Emulator,
so when llama.cpp ends a process (a lost RPC server aborts it; the RPC watchdog ends it when a
server freezes) it ends this one, and the server in the parent goes on.

It answers the parent over a multiprocessing connection, one message per call:

    parent -> here: (id, op, args)   op: "stream" (request.Request) -> (sid, tool_family)
                                         "next" (sid) -> (piece | None, new tokens, new records,
                                                          Generation when finished)
                                         "close" (sid) -> Generation | None
                                         "call" (name, args, kwargs) -> an Emulator method's result
    here -> parent: ("ready", info) once loaded, or ("failed", message) and the end;
                    ("reply", id, ok, value); ("fault", reason) just before llama.cpp's end

"stream" runs beside generation (a prompt is rendered and checked while another request
generates, as in one process); everything else runs in order in one thread, the parent's
worker line having already put requests one at a time.
"""

from __future__ import annotations

import itertools
import pickle
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import rpc
from ..engine import Emulator
from ..errors import LocaleftError

CALLS = ("prompt_tokens", "score")  # the Emulator methods the server's jobs call


class _Engine:
    def __init__(self, conn, em: Emulator):
        self.conn, self.em = conn, em
        self.send_lock = threading.Lock()
        self.streams: dict[int, list] = {}  # sid -> [stream, tokens sent, records sent]
        self.ids = itertools.count(1)

    def send(self, message, block: bool = True) -> None:
        if not self.send_lock.acquire(timeout=-1 if block else 1.0):
            return  # a fault while another thread is sending: the parent sees the end anyway
        try:
            self.conn.send(message)
        finally:
            self.send_lock.release()

    def reply(self, mid: int, fn, *args) -> None:
        try:
            value, ok = fn(*args), True
        except LocaleftError as e:
            value, ok = e, False
        except Exception as e:  # noqa: BLE001 - reported to the request, the engine goes on
            value, ok = LocaleftError(f"internal error: {type(e).__name__}: {e}"), False
        if not ok:
            try:
                pickle.dumps(value)
            except Exception:  # noqa: BLE001
                value = LocaleftError(str(value))
        self.send(("reply", mid, ok, value))

    def stream(self, req):
        s = self.em.stream(req)
        sid = next(self.ids)
        self.streams[sid] = [s, 0, 0]
        return sid, s.tool_family

    def next(self, sid: int):
        entry = self.streams[sid]
        s = entry[0]
        try:
            piece = next(s)
        except StopIteration:
            piece = None
        tokens, records = s.tokens[entry[1] :], s.records[entry[2] :]
        entry[1], entry[2] = len(s.tokens), len(s.records)
        if piece is None:
            del self.streams[sid]
        return piece, list(tokens), list(records), s.generation if piece is None else None

    def close(self, sid: int):
        entry = self.streams.pop(sid, None)
        if entry is None:
            return None
        entry[0].close()
        return entry[0].generation

    def call(self, name: str, args, kwargs):
        if name not in CALLS:
            raise LocaleftError(f"no such engine call: {name}")
        return getattr(self.em, name)(*args, **kwargs)


def info(em: Emulator) -> dict:
    """What the parent serves without asking: sizes, files, where the layers are."""
    return {
        "n_ctx": em.n_ctx,
        "beta": em.beta,
        "files": {label: str(m.path) for label, m in em.models.items()},
        "adapters": em.adapters,
        "expert_weights": em.expert_weights,
        "weights": em.weights,
        "repack": em.repack,
        "base_prompt": em.base_prompt,
        "placement": em.placement,
        "rpc_output": em.rpc_output_choice,
    }


def main(conn, kwargs: dict) -> None:
    """Load the Emulator `kwargs` describe and serve the parent until it hangs up. Ctrl-C in a
    terminal reaches the whole process group: the parent decides how the server stops (the
    reply so far, then the end), so this process ignores it and ends when the parent does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        em = Emulator(**kwargs)
    except LocaleftError as e:
        conn.send(("failed", str(e)))
        return
    em.prompts.measure_tokens()  # for refusing huge prompts at once, as the app does at start
    engine = _Engine(conn, em)
    rpc.at_fault(lambda: engine.send(("fault", rpc.last_fault), block=False))
    engine.send(("ready", info(em)))
    ordered: queue.Queue = queue.Queue()
    opener = ThreadPoolExecutor(2, thread_name_prefix="engine-open")

    def run_in_order() -> None:
        while (item := ordered.get()) is not None:
            engine.reply(*item)

    worker = threading.Thread(target=run_in_order, name="engine", daemon=True)
    worker.start()
    ops = {"next": engine.next, "close": engine.close, "call": engine.call}
    try:
        while True:
            try:
                mid, op, args = conn.recv()
            except (EOFError, OSError):
                break
            if op == "stream":
                opener.submit(engine.reply, mid, engine.stream, *args)
            elif op in ops:
                ordered.put((mid, ops[op], *args))
            elif op == "exit":
                break
    finally:
        ordered.put(None)
        worker.join()
        opener.shutdown()
        em.close()
