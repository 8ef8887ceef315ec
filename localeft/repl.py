"""The chat REPL behind `localeft chat`: messages, settings, /commands, streamed replies."""

from __future__ import annotations

import json
import math
import os

import click

from .engine import Emulator, Stats
from .errors import LocaleftError
from .terminal import MODES, SETTABLE, notes, run, stats_line, stdin_is_tty

CHAT_HELP = """Commands:
  /help                 this text
  /bye                  quit (also /exit, Ctrl-D, or Ctrl-C at the prompt)
  /clear                forget the conversation (keeps the system message)
  /set KEY VALUE        KEY: beta temp top_k top_p min_p seed max_tokens
  /set system TEXT      set (or with no TEXT, remove) the system message
  /mode eft|large|small generate with EFT, or with one model alone
  /stats                timings and KV-cache reuse of the last reply
  /save FILE            write the conversation and settings as JSON
  \"\"\"                   start and end a multi-line message
Ctrl-C during a reply stops it and keeps what was written."""


class ChatSession:
    """The REPL: messages, settings, and the stats of every reply."""

    def __init__(self, em: Emulator, kw: dict, mode: str, system: str | None, verbose: bool):
        self.em, self.kw, self.mode, self.system, self.verbose = em, kw, mode, system, verbose
        self.messages: list[dict] = []
        self.replies: list[Stats] = []
        self.tty = stdin_is_tty()

    def request(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def input(self, prompt: str) -> str:
        line = input(prompt)
        if not self.tty:  # echo scripted input, so the transcript reads like a session
            click.echo(line)
        return line

    def read(self) -> str | None:
        """The next message or command; None to quit (EOF, Ctrl-C at the prompt)."""
        try:
            line = self.input(">>> ").strip()
            if not line.startswith('"""'):
                return line
            lines, body = [], line[3:]
            while not body.rstrip().endswith('"""'):
                lines.append(body)
                body = self.input("... ")
            return "\n".join(lines + [body.rstrip()[:-3]]).strip()
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return None

    def loop(self) -> None:
        click.echo("localeft chat: /help for commands, /bye to quit.")
        while (text := self.read()) is not None:
            if text.startswith("/"):
                if not self.command(*text[1:].partition(" ")[::2]):
                    return
            elif text:
                self.reply(text)

    def reply(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        error = "\n(interrupted before the reply began)"
        try:
            g = run(
                self.em, self.request(), echo=True, partial=True, mode=MODES[self.mode], **self.kw
            )
        except LocaleftError as e:  # e.g. the conversation no longer fits the context
            g, error = None, f"localeft: error: {e}"
        if g is None:
            self.messages.pop()
            return click.echo(error, err=True)
        if g.finish_reason == "interrupted":
            click.echo("\n(interrupted; the partial reply is kept)", err=True)
        else:
            click.echo()
        self.messages.append({"role": "assistant", "content": g.text})
        self.replies.append(g.stats)
        notes(g, self.verbose)

    def command(self, name: str, arg: str) -> bool:
        """Run a /command; False means quit."""
        arg = arg.strip()
        if name in ("bye", "exit", "quit"):
            return False
        if name == "help":
            click.echo(CHAT_HELP)
        elif name == "clear":
            self.messages.clear()
            click.echo("(conversation cleared)")
        elif name == "set":
            self.set(*arg.partition(" ")[::2])
        elif name == "mode" and arg in MODES:
            self.mode = arg
            click.echo(f"(mode: {arg})")
        elif name == "stats":
            click.echo(stats_line(self.replies[-1], True) if self.replies else "(no reply yet)")
        elif name == "save" and arg:
            self.save(arg)
        else:
            usage = {"mode": "/mode eft|large|small", "save": "/save FILE"}.get(name)
            click.echo(
                f"usage: {usage}" if usage else f"unknown command /{name}; try /help", err=True
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
        except click.BadParameter as e:
            return click.echo(f"bad value for {key}: {e.message}", err=True)
        click.echo(f"({key} = {v})")

    def save(self, path: str) -> None:
        data = {
            "messages": self.request(),
            "settings": {
                **self.kw,
                "beta": self.em.beta,
                "mode": self.mode,
                "n_ctx": self.em.n_ctx,
            },
            "models": {label: str(m.path) for label, m in self.em.models.items()},
            "replies": [s.as_dict() for s in self.replies],
        }
        try:
            with open(os.path.expanduser(path), "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)
        except OSError as e:
            return click.echo(f"cannot save to {path}: {e.strerror or e}", err=True)
        click.echo(f"(saved {len(self.messages)} messages to {path})")
