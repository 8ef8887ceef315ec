"""`localeft generate --jsonl FILE|-`: many prompts, one model load.

Each input line is one request: `{"prompt": TEXT}` or `{"messages": [...]}`, optionally an
`"id"` (echoed) and settings that override the command line's for that line (`max_tokens`,
`temperature`, `seed`, `beta`, `mode`, `stop`, ... — `request.build`'s names; `mode` takes the
CLI's eft|large|small). A line may also be a bare JSON string: a prompt. Each output line is
what `generate --json` prints for that request, on one line with its `"line"` number, in input
order and written (flushed) as soon as it is done, so Ctrl-C keeps every finished line. A bad
line is answered with `{"line": N, "error": MESSAGE}` and the batch goes on.

Every line is checked (`request.build`, as every door checks a request) before the models load:
a sampled line without a seed gets one then, written into its settings, so the output says how
to repeat it.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import os
import stat
import sys
from dataclasses import dataclass

import click

from ..errors import ContextOverflowError, InvalidParameterError
from ..terminal import MODES, json_text, run
from .options import Failure, context_message

# request.build's settings (a line may set any), written out: request.py loads NumPy, which a
# batch sent to a server (--server) never needs before its first line is checked
SETTINGS = frozenset(
    ("max_tokens", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "beta")
    + ("speculative", "draft_tokens", "logprobs", "repeat_penalty", "repeat_last_n")
    + ("presence_penalty", "frequency_penalty", "logit_bias", "grammar", "json_schema")
    + ("tools", "tool_choice", "parallel_tool_calls")
)
FIELDS = SETTINGS | {"prompt", "messages", "id", "mode"}


@dataclass
class Line:
    """One valid input line: its prompt and every setting its request runs with."""

    number: int
    prompt: str | list
    settings: dict  # Emulator.stream keyword arguments, mode included (the engine's name)
    mode: str  # the CLI's name: eft | large | small
    id: object = None


@dataclass
class BadLine:
    number: int
    error: str
    id: object = None


def read(path: str) -> list[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line of FILE, or of stdin for '-' (a UTF-8
    byte order mark at the start, as some editors write, is not part of the first line)."""
    try:
        if path == "-":
            if sys.stdin is None:
                raise click.UsageError("--jsonl -: there is no standard input")
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise Failure(f"cannot read --jsonl {path}: {e.strerror or e}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    return [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]


def parse(number: int, raw: bytes, defaults: dict, mode: str, chat: bool, system) -> Line | BadLine:
    """A line as a request, checked; or why it is not one."""
    from .. import request as requests

    ident = None
    try:
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidParameterError("the line is not valid UTF-8 text") from None
        except (ValueError, RecursionError) as e:
            reason = e if isinstance(e, ValueError) else "nested too deep"
            raise InvalidParameterError(f"the line is not JSON ({reason})") from None
        if isinstance(d, str):
            d = {"prompt": d}
        if not isinstance(d, dict):
            raise InvalidParameterError('expected an object with "prompt" or "messages"')
        ident = d.get("id")
        unknown = sorted(set(d) - FIELDS)
        if unknown:
            raise InvalidParameterError(f"unknown field {unknown[0]!r}")
        prompt = _prompt(d, chat, system)
        line_mode = d.get("mode", mode)
        if not isinstance(line_mode, str) or line_mode not in MODES:
            raise InvalidParameterError(f"mode must be one of eft, large, small, got {line_mode!r}")
        own = {k: d[k] for k in SETTINGS & set(d)}  # logit_bias's text keys: request.build's
        settings = dict(defaults)
        if "grammar" in own or "json_schema" in own:  # the line's format replaces the flags'
            settings.pop("grammar", None)
        settings.update(own, mode=MODES[line_mode])
        req = requests.build(prompt, **settings)
        if settings.get("json_schema") is not None:  # converted once, here
            settings["grammar"] = req.grammar
            del settings["json_schema"]
        settings["seed"] = req.sampling.seed  # the seed a sampled line without one got
        return Line(number, prompt, settings, line_mode, ident)
    except InvalidParameterError as e:
        return BadLine(number, str(e), ident)


def _prompt(d: dict, chat: bool, system) -> str | list:
    if ("prompt" in d) == ("messages" in d):
        raise InvalidParameterError('give "prompt" (text) or "messages" (a list), one of them')
    if "messages" in d:
        messages = d["messages"]  # objects: a list of numbers would run as token ids
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise InvalidParameterError('"messages" must be a non-empty list of {role, content}')
        return messages
    text = d["prompt"]
    if not isinstance(text, str) or not text.strip():
        raise InvalidParameterError('"prompt" must be non-empty text')
    if not chat:
        return text
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": text}]


def write(record: dict) -> None:
    """One result line, flushed. Into a regular file the line is written in whole or not at
    all: if the file fills up (a full disk, a size limit) or Ctrl-C lands halfway through, the
    part written is cut off again, so the file ends with the last whole line."""
    text = json_text(record) + "\n"  # strict JSON that stdout's encoding can write
    try:
        data = text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except LookupError:  # an encoding Python does not know: json_text wrote escapes
        data = text.encode("ascii")
    fd = _regular_file(sys.stdout)
    if fd is None:
        click.echo(text, nl=False)
        sys.stdout.flush()
        return
    data = memoryview(data)
    appending = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND  # (>>: the offset says nothing)
    start = os.fstat(fd).st_size if appending else os.lseek(fd, 0, os.SEEK_CUR)
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except BaseException:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size == start + written:  # no other writer came in between
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
        raise


def _regular_file(stream) -> int | None:
    """The descriptor of `stream`, flushed, if it is a regular file (else None: a pipe, a
    terminal, CliRunner's stdout)."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        stream.flush()
        return fd
    except (OSError, ValueError, AttributeError):
        return None


def progress(n: int):
    """A bar on stderr when it is a terminal and the results go elsewhere (a file, a pipe)."""
    if not (sys.stderr.isatty() and not sys.stdout.isatty()):
        return contextlib.nullcontext(None)
    return click.progressbar(length=n, label="generating", file=sys.stderr, show_pos=True)


def run_lines(em, lines: list, result) -> int:
    """Run every line in order, writing one JSON line each; returns how many failed.
    `result(generation, settings, mode)` is what `generate --json` prints for a request."""
    failed = 0
    done = 0
    with progress(len(lines)) as bar:
        try:
            for line in lines:
                record = _run(em, line, result)
                failed += "error" in record
                write(record)
                done += 1
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            click.echo(f"\n(interrupted: {done} of {len(lines)} lines written)", err=True)
            raise
    return failed


def _run(em, line: Line | BadLine, result) -> dict:
    head = {"line": line.number, **({"id": line.id} if line.id is not None else {})}
    if isinstance(line, BadLine):
        return {**head, "error": line.error}
    try:
        g = run(em, line.prompt, echo=False, **line.settings)
    except InvalidParameterError as e:
        return {**head, "error": str(e)}
    except ContextOverflowError as e:
        return {**head, "error": context_message(e)}
    return {**head, **result(g, line.settings, line.mode)}
