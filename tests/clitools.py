"""What the command-line tests share: the tiny trio as options, an in-process runner, and the
one-line error check."""

from __future__ import annotations

from click.testing import CliRunner

from localeft.cli import cli
from localeft.textstream import TextStream

FAST = ["-c", "256", "-t", "1"]


def trio(tiny, **override) -> list[str]:
    """Options naming the tiny trio (a role overridden by keyword), small context, one thread."""
    paths = {
        "large_base": tiny.large_base,
        "small_ft": tiny.small_ft,
        "small_base": tiny.small_base,
        **override,
    }
    args = list(FAST)
    for role, path in paths.items():
        args += [f"--{role.replace('_', '-')}", str(path)]
    return args


def invoke(*args, input=None, env=None):
    return CliRunner().invoke(
        cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False
    )


def assert_one_line_error(result, code: int = 1, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("localeft: error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def ctrl_c_at_token(monkeypatch, n: int) -> None:
    """Ctrl-C lands while the n-th token of each reply is turned into text."""
    calls = []
    feed = TextStream.feed

    def interrupted(self, piece):
        calls.append(piece)
        if len(calls) == n:
            raise KeyboardInterrupt
        return feed(self, piece)

    monkeypatch.setattr(TextStream, "feed", interrupted)
