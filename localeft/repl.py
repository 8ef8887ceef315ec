"""The chat REPL behind `localeft chat`: messages, settings, /commands, streamed replies.

Nothing the user wrote is lost: every finished turn is written at once to a history file under
the XDG state directory (`localeft chat --resume` continues the latest), Ctrl-C stops a reply
and keeps it, cancels a multi-line message, and quits only when pressed twice at the prompt.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .chatfiles import ChatFileError, SavedChat, existing, history_dir, read_chat, restorable
from .chatfiles import write_json
from .errors import ContextOverflowError, LocaleftError
from .interrupts import deferred_interrupts
from .results import Stats
from .terminal import EXPLAIN_TOP, MODES, SETTABLE, explained, notes, run
from .terminal import stats_line, stdin_is_tty

if TYPE_CHECKING:
    from .engine import Emulator

CHAT_HELP = """Commands:
  /help                 this text
  /bye                  quit (also /exit, Ctrl-D, or Ctrl-C twice at the prompt)
  /clear                forget the conversation (keeps the system message)
  /retry                write the last reply again (or send a message that was interrupted)
  /set KEY VALUE        KEY: beta temp top_k top_p min_p seed max_tokens
  /set system TEXT      set (or with no TEXT, remove) the system message
  /mode eft|large|small generate with EFT, or with one model alone
  /stats                timings and KV-cache reuse of the last reply
  /explain on|off       show where fine-tuning changed the large base's choice
  /save FILE            write the conversation and settings as JSON (asks before replacing
                        a file; /save -f FILE replaces it without asking)
  /load FILE            continue a conversation saved with /save (or from the history),
                        with its settings
  \"\"\"                   start and end a multi-line message (Ctrl-C cancels it)
  //TEXT                send a message that starts with "/"
Ctrl-C during a reply stops it and keeps what was written. Every turn is saved in the history
(localeft chat --resume continues the latest conversation)."""

COMMANDS = (
    "help",
    "bye",
    "exit",
    "quit",
    "clear",
    "retry",
    "set",
    "mode",
    "stats",
    "explain",
    "save",
    "load",
)


class ChatSession:
    """The REPL: messages, settings, and the record of every reply."""

    def __init__(
        self,
        em: Emulator,
        kw: dict,
        mode: str,
        system: str | None,
        verbose: bool,
        history: Path | None = None,
        pinned: frozenset[str] = frozenset(),
    ):
        self.em, self.kw, self.mode, self.system, self.verbose = em, kw, mode, system, verbose
        self.pinned = pinned  # settings given on the command line: a loaded chat keeps them
        self.messages: list[dict] = []
        self.replies: list[dict] = []  # per reply: mode, beta, sampling, seed, stats
        self.unsent: str | None = None  # a message whose reply was interrupted before it began
        self.explain = False  # replies shown as the token view
        self.tty = stdin_is_tty()
        self.history = history or history_dir() / time.strftime("%Y%m%d-%H%M%S.json")

    def request(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    # --- input -----------------------------------------------------------------------------
    def input(self, prompt: str) -> str:
        line = input(prompt)
        if not self.tty:  # echo scripted input, so the transcript reads like a session
            click.echo(line)
        return line

    def read(self) -> str | None:
        """The next message or command; None to quit (EOF, or Ctrl-C twice at the prompt)."""
        warned = False
        while True:
            try:
                line = self.input(">>> ").strip()
            except EOFError:
                click.echo()
                return None
            except KeyboardInterrupt:
                click.echo()
                if warned:
                    return None
                click.echo("(Ctrl-C again, /bye or Ctrl-D to quit)", err=True)
                warned = True
                continue
            if not line.startswith('"""'):
                return line
            block = self.read_block(line[3:])
            if block is not None:
                return block

    def read_block(self, first: str) -> str | None:
        """The rest of a \"\"\" message; None if Ctrl-C cancelled it (EOF ends it)."""
        lines, body = [], first
        try:
            while not body.rstrip().endswith('"""'):
                lines.append(body)
                body = self.input("... ")
        except EOFError:
            return "\n".join(lines).strip()
        except KeyboardInterrupt:
            click.echo("\n(message cancelled)", err=True)
            return None
        return "\n".join(lines + [body.rstrip()[:-3]]).strip()

    def loop(self) -> None:
        click.echo("localeft chat: /help for commands, /bye to quit.")
        while True:
            try:
                text = self.read()
                if text is None:
                    return
                if text.startswith("//"):
                    self.reply(text[1:])
                elif text.startswith("/") and self.is_command(text):
                    if not self.command(*text[1:].partition(" ")[::2]):
                        return
                elif text:
                    self.reply(text)
            except KeyboardInterrupt:  # between the reply and the next prompt: nothing is lost
                click.echo("\n(interrupted)", err=True)

    @staticmethod
    def is_command(text: str) -> bool:
        """Known /commands, and unknown single words (a typo, not a message); "/usr/bin is
        ..." is a message."""
        name, _, rest = text[1:].partition(" ")
        return name in COMMANDS or (name.isalpha() and not rest.strip())

    # --- replies ---------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        self.unsent = None
        self.messages.append({"role": "user", "content": text})
        try:
            g = self._generate(text)
        except KeyboardInterrupt:  # before the reply began (waiting in a --server's line, say)
            with deferred_interrupts():
                self.messages.pop()
                self.unsent = text
                click.echo(
                    "\n(interrupted before the reply began; /retry sends the message again)",
                    err=True,
                )
            return
        if g is False:  # did not fit, or an error said in one line
            self.messages.pop()
            return
        with deferred_interrupts():  # the bookkeeping of a turn is never half done
            if g is None or (g.finish_reason == "interrupted" and not g.tokens):
                self.messages.pop()
                self.unsent = text
                click.echo(
                    "\n(interrupted before the reply began; /retry sends the message "
                    "again, reusing the prompt evaluated so far)",
                    err=True,
                )
                return
            if self.explain and g.logprobs is not None:
                click.echo(explained(g.logprobs), nl=False, color=True)
            if g.finish_reason == "interrupted":
                click.echo("\n(interrupted; the partial reply is kept)", err=True)
            else:
                click.echo()
            self.messages.append({"role": "assistant", "content": g.text})
            self.replies.append(
                {
                    **g.stats.as_dict(),
                    "mode": self.mode,
                    "beta": self.em.beta,
                    "sampling": {k: v for k, v in self.kw.items() if k != "seed"},
                    "seed": g.seed,
                    "finish_reason": g.finish_reason,
                }
            )
            self.save_history()
        notes(g, self.verbose)

    def _generate(self, text: str):
        """The reply's Generation (None: interrupted before it began); False when the message
        does not fit or the engine (a --server) failed, said in one line and kept for /retry."""
        try:
            if not self.fit():
                return False
            extra = {"logprobs": EXPLAIN_TOP} if self.explain else {}
            return run(
                self.em,
                self.request(),
                echo=not self.explain,
                partial=True,
                mode=MODES[self.mode],
                **self.kw,
                **extra,
            )
        except LocaleftError as e:  # a --server that went away: the chat goes on
            self.unsent = text  # /retry sends it once the server is back
            click.echo(f"localeft: error: {e}", err=True)
            return False

    def fit(self) -> bool:
        """Drop the oldest turns (never the system message) until the conversation leaves room
        for a reply in the context; False if the newest message alone does not fit."""
        n_ctx = self.em.n_ctx
        room = min(self.kw.get("max_tokens", 256), n_ctx // 4)
        dropped = 0
        while True:
            try:
                longest = max(map(len, self.em.prompt_tokens(self.request()).values()))
                at_least = False
            except ContextOverflowError as e:
                longest, at_least = e.tokens or n_ctx, e.at_least
            if longest + room <= n_ctx or (longest < n_ctx and len(self.messages) == 1):
                break
            if len(self.messages) == 1:
                click.echo(
                    f"localeft: error: this message is {'at least ' * at_least}{longest} tokens "
                    f"but the context holds {n_ctx}; shorten it or restart with a larger "
                    "-c/--ctx-size",
                    err=True,
                )
                return False
            del self.messages[: 2 if self.messages[1]["role"] == "assistant" else 1]
            dropped += 1
        if dropped:
            click.echo(
                f"(the conversation outgrew the {n_ctx}-token context: the oldest {dropped} "
                "turn(s) were dropped; /clear starts over, -c/--ctx-size gives more room)",
                err=True,
            )
        return True

    def retry(self) -> None:
        if self.unsent is not None:
            return self.reply(self.unsent)
        if not self.messages or self.messages[-1]["role"] != "assistant":
            return click.echo("(nothing to retry)", err=True)
        self.messages.pop()
        if self.replies:
            self.replies.pop()
        text = self.messages.pop()["content"]
        self.reply(text)

    # --- commands --------------------------------------------------------------------------
    def command(self, name: str, arg: str) -> bool:
        """Run a /command; False means quit."""
        arg = arg.strip()
        if name in ("bye", "exit", "quit"):
            return False
        if name == "help":
            click.echo(CHAT_HELP)
        elif name == "clear":
            self.messages.clear()
            self.unsent = None
            click.echo("(conversation cleared)")
        elif name == "retry":
            self.retry()
        elif name == "set":
            self.set(*arg.partition(" ")[::2])
        elif name == "mode" and arg in MODES:
            self.mode = arg
            click.echo(f"(mode: {arg})")
        elif name == "stats":
            click.echo(
                stats_line(_stats(self.replies[-1]), True) if self.replies else "(no reply yet)"
            )
        elif name == "explain" and arg in ("on", "off"):
            self.explain = arg == "on"
            click.echo(f"(explain: {arg})")
        elif name == "save" and arg and arg != "-f":
            self.save(arg)
        elif name == "load" and arg:
            self.load(arg)
        else:
            usage = {
                "mode": "/mode eft|large|small",
                "save": "/save FILE",
                "load": "/load FILE",
                "explain": "/explain on|off",
            }
            click.echo(
                f"usage: {usage[name]}"
                if name in usage
                else f"unknown command /{name}; try /help (//TEXT sends a message starting with /)",
                err=True,
            )
        return True

    def set(self, key: str, value: str) -> None:
        value = value.strip()
        if key == "system":
            self.system = value or None
            return click.echo("(system message " + ("set)" if value else "removed)"))
        if key not in SETTABLE:
            return click.echo(
                f"cannot set {key!r}; settable: system, {', '.join(SETTABLE)}", err=True
            )
        name, kind = SETTABLE[key]
        try:
            v = (
                None
                if key == "seed" and value in ("none", "random")
                else kind.convert(value, None, None)
            )
            if isinstance(v, float) and not math.isfinite(v):
                raise click.BadParameter(f"{value} is not a finite number")
            if name == "beta":
                self.em.beta = v
            else:
                self.kw[name] = v
        except (click.BadParameter, LocaleftError) as e:
            return click.echo(f"bad value for {key}: {getattr(e, 'message', e)}", err=True)
        click.echo(f"({key} = {v})")

    # --- files -----------------------------------------------------------------------------
    def data(self) -> dict:
        return {
            "messages": self.request(),
            "settings": {
                **self.kw,
                "beta": self.em.beta,
                "mode": self.mode,
                "n_ctx": self.em.n_ctx,
            },
            "models": {label: str(m.path) for label, m in self.em.models.items()},
            **({"adapters": self.em.adapters} if self.em.adapters else {}),
            "replies": self.replies,
        }

    def fault_note(self) -> str:
        """What is kept when a fault ends the process mid-reply (a lost RPC server)."""
        if self.history.exists():
            return (
                f"every finished turn is saved in {self.history}; "
                f"`localeft chat --resume {self.history}` continues the conversation"
            )
        return "no turn had finished: nothing to resume"

    def save_history(self) -> None:
        try:
            write_json(self.history, self.data(), replace=True, mkdir=True)
        except ChatFileError as e:
            click.echo(f"(the history file: {e})", err=True)
        except OSError as e:
            click.echo(
                f"(cannot write the history file {self.history}: {e.strerror or e})", err=True
            )

    def save(self, arg: str) -> None:
        """/save FILE: a new file, or an existing regular file once the user agrees (on a
        terminal it asks; otherwise `/save -f FILE` says so). Nothing else is ever replaced."""
        force = arg.startswith("-f ")
        name = arg[3:].strip() if force else arg
        path = Path(os.path.expanduser(name))
        try:
            replace = existing(path)
            if replace and not force and not self.confirm(f"{name} exists: replace it?"):
                return click.echo(
                    f"(not saved: {name} exists; /save -f {name} replaces it)", err=True
                )
            write_json(path, self.data(), replace=replace)
        except ChatFileError as e:
            return click.echo(str(e), err=True)
        click.echo(f"(saved {len(self.messages)} messages to {name})")

    def confirm(self, question: str) -> bool:
        """Yes or no from the terminal; no when the input is not one (a script's next line
        is a message, not an answer)."""
        if not self.tty:
            return False
        try:
            return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return False

    def load(self, path: str | Path) -> bool:
        """/load FILE: continue a saved conversation; one line if it cannot be read."""
        try:
            saved = read_chat(path)
        except ChatFileError as e:
            click.echo(f"cannot load {e}", err=True)
            return False
        self.restore(saved, path)
        return True

    def restore(self, saved: SavedChat, path: str | Path) -> None:
        """Continue `saved`: its system message, turns, and the settings /set and /mode change
        (except those given on the command line); the ones that are not valid are named."""
        messages = saved.messages
        system = [m["content"] for m in messages if m["role"] == "system"]
        self.system = system[0] if system else self.system
        self.messages = [m for m in messages if m["role"] != "system"]
        self.replies = saved.replies
        self.unsent = None
        restore, dropped = restorable(saved.settings, self.kw, self.pinned)
        for name, value in restore.items():
            if name == "beta":
                self.em.beta = value
            elif name == "mode":
                self.mode = value
            else:
                self.kw[name] = value
        click.echo(f"(loaded {len(self.messages)} messages from {path})")
        if dropped:
            click.echo(
                "(settings of the saved chat not restored: " + "; ".join(dropped) + ")", err=True
            )
        for m in self.messages[-2:]:
            click.echo(f"{m['role']}: {m['content']}")


def _stats(reply: dict) -> Stats:
    return Stats(**{k: v for k, v in reply.items() if k in Stats.__dataclass_fields__})
