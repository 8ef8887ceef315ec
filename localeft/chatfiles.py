"""The chat's files: the history under the XDG state directory, `/save`, and reading a saved
chat back (`/load`, `localeft chat --resume`) with the settings it carries.

Writing never replaces what the user did not name: only regular files are ever replaced (a
device, a FIFO, a directory or a symlink at the path is refused, never swapped for a JSON
file), an existing file only when the caller says so (the REPL asks first), and the temporary
file beside it has a fresh name (never a guessed `PATH.tmp` that could be someone's file).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import request, validate
from .errors import LocaleftError

# The settings /set and /mode change, restored from a saved chat (request.build's names).
RESTORED = ("beta", "mode", "temperature", "top_k", "top_p", "min_p", "seed", "max_tokens")
CHAT_MODES = ("eft", "large", "small")
ROLES = ("system", "user", "assistant")


class ChatFileError(LocaleftError):
    """A chat file cannot be written there or read back (one line: why)."""


def history_dir() -> Path:
    """$XDG_STATE_HOME/localeft/chats (default ~/.local/state/localeft/chats)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "localeft" / "chats"


def latest_history() -> Path | None:
    files = sorted(history_dir().glob("*.json"))
    return files[-1] if files else None


# --- writing ------------------------------------------------------------------------------------
def existing(path: Path) -> bool:
    """Is there a regular file at path (False: nothing)? ChatFileError for anything else there
    (a symlink too: replacing it would not write where it points, and writing through it would
    write where the user did not say)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ChatFileError(f"cannot save to {path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode):
        return True
    kind = (
        "a symlink"
        if stat.S_ISLNK(st.st_mode)
        else "a directory"
        if stat.S_ISDIR(st.st_mode)
        else "a device or special file"
    )
    raise ChatFileError(f"cannot save to {path}: it is {kind}, not a regular file")


def write_json(path: Path, data: dict, *, replace: bool, mkdir: bool = False) -> None:
    """Write atomically (a crash mid-write leaves the previous file, never half of one): into a
    fresh temporary file beside `path`, then moved there. `replace=False` never replaces
    anything (FileExistsError as ChatFileError); `replace=True` replaces a regular file only."""
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    replacing = replace and existing(path)  # (still) a regular file, or refused
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ChatFileError(f"cannot save to {path}: {e.strerror or e}") from None
    try:
        with open(fd, "w", encoding="utf-8") as f:  # mkstemp's mode is 0600: the usual one
            os.fchmod(f.fileno(), _mode(path) if replacing else 0o666 & ~_umask())
            json.dump(data, f, ensure_ascii=False, indent=2)
        if replace:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise ChatFileError(f"cannot save to {path}: it appeared meanwhile") from None
        raise ChatFileError(f"cannot save to {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _mode(path: Path) -> int:
    """The permissions of the file being replaced (kept)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _place_new(tmp: str, path: Path) -> None:
    """tmp's content at path, which must not exist: a hard link fails if anything is there."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:  # a file system without hard links: an exclusive create
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        with open(tmp, "rb") as src, open(path, "xb") as dst:
            dst.write(src.read())


# --- reading ------------------------------------------------------------------------------------
@dataclass
class SavedChat:
    messages: list[dict]
    replies: list[dict]
    settings: dict


def read_chat(path: str | Path) -> SavedChat:
    """A chat written by /save or the history; ChatFileError (one line) if it is not one."""
    p = Path(os.path.expanduser(str(path)))
    try:
        if not p.is_file():
            raise ChatFileError(f"{path}: no such file")
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ChatFileError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ChatFileError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ChatFileError(f"{path}: not a saved chat (nested too deeply)") from None
    except OSError as e:
        raise ChatFileError(f"{path}: {e.strerror or e}") from None
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        raise ChatFileError(f'{path}: not a saved chat (no "messages" list)')
    for i, m in enumerate(messages):
        if not (
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        ):
            raise ChatFileError(f"{path}: message {i + 1} is not a {{role, content}} text message")
    replies = data.get("replies")
    settings = data.get("settings")
    return SavedChat(
        messages,
        [r for r in replies if isinstance(r, dict)] if isinstance(replies, list) else [],
        settings if isinstance(settings, dict) else {},
    )


def restorable(settings: dict, current: dict, pinned) -> tuple[dict, list[str]]:
    """The saved settings to restore (the RESTORED names, but not those in `pinned`: given on
    the command line), each checked as request.build checks it against the `current` sampling
    settings; and a note per setting left out ("temperature 'hot': temperature must be a
    number, got 'hot'")."""
    restore, dropped = {}, []
    for name in RESTORED:
        if name not in settings or name in pinned:
            continue
        value = settings[name]
        try:
            if name == "mode":
                validate.choice("mode", value, CHAT_MODES)
            elif name == "beta":
                validate.beta(value)
            else:
                trial = {k: current[k] for k in RESTORED[2:] if k in current}
                request.build("x", **{**trial, name: value})
        except LocaleftError as e:
            dropped.append(f"{name} {value!r} ({e})")
            continue
        restore[name] = value
    return restore, dropped
