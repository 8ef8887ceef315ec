"""The `localeft` command line: the group of commands (localeft/commands/, one module per
family) and how every command ends: a deliberate error as one line `localeft: error: ...` and exit
status 1; click's usage errors exit 2; Ctrl-C exits 130 ("interrupted"); a closed stdout pipe
exits quietly.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import warnings

import click

from . import __version__
from .commands.options import Failure, context_message
from .errors import ContextOverflowError, LocaleftError, LocaleftWarning

# command -> (module of localeft/commands, function): a command's module is imported when it
# runs, so `localeft generate --server URL` reads no other command's code
COMMANDS = {
    "generate": ("generate", "generate"),
    "compare": ("generate", "compare"),
    "score": ("scoring", "score"),
    "eval": ("scoring", "eval_command"),
    "chat": ("chat", "chat"),
    "pull": ("models", "pull"),
    "models": ("models", "models"),
    "check": ("models", "check"),
    "bench": ("bench", "bench"),
    "serve": ("serving", "serve"),
    "rpc-server": ("serving", "rpc_server"),
}


class _Group(click.Group):
    """Turns deliberate errors, Ctrl-C, bad input bytes and failed writes into one line and an
    exit code; shows library warnings as one line each. Commands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f".commands.{module}", __package__), attr)

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", LocaleftWarning)
            warnings.showwarning = _show_warning
            try:
                result = super().invoke(ctx)
                sys.stdout.flush()  # a full disk shows here, not in the interpreter's exit
                return result
            except ContextOverflowError as e:
                raise Failure(context_message(e)) from None
            except LocaleftError as e:
                raise Failure(str(e)) from None
            except (KeyboardInterrupt, click.Abort):
                click.echo("\nlocaleft: interrupted", err=True)
                ctx.exit(130)
            except UnicodeDecodeError:
                raise Failure("the input is not valid UTF-8 text") from None
            except BrokenPipeError:  # as the Python docs recommend (signal module, SIGPIPE note):
                with contextlib.suppress(OSError, ValueError):  # (no real stdout in CliRunner)
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                ctx.exit(1)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EDQUOT, errno.EFBIG):
                    with contextlib.suppress(OSError, ValueError):  # nothing more to write out
                        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    raise Failure(f"cannot write the output: {e.strerror or e}") from None
                raise


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"localeft: warning: {message}", err=True)


# --- commands ------------------------------------------------------------------------------
@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(
    __version__, "-V", "--version", prog_name="localeft", message="%(prog)s %(version)s"
)
def cli():
    """Emulated fine-tuning (EFT) on your machine: a large pre-trained model steered by a small
    fine-tuned one, combined token by token through llama.cpp.

    \b
    Examples:
      localeft models                      # presets, and which files are downloaded
      localeft pull qwen2.5-7b             # download a preset into the Hugging Face cache
      localeft chat                        # talk to the default preset
      localeft generate "Explain KV caching in two sentences."
      localeft compare "Write a limerick about GPUs." --temp 0.7 --seed 1
      localeft check --large-base big.gguf --small-ft ft.gguf --small-base base.gguf
    """


def main() -> None:
    if sys.stdout is None:  # started with stdout closed (`localeft ... >&-`)
        print("localeft: error: standard output is closed", file=sys.stderr)
        sys.exit(1)
    cli.main(prog_name="localeft")
