"""`localeft serve` on the command line: the install hint, the exposure warning, the settings
handed to the server (the server itself is not started here: test_server.py runs it)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hubcache import isolate

from localeft import server as server_module
from localeft.cli import cli


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    return isolate(tmp_path, monkeypatch)


def trio(tiny) -> list[str]:
    return ["-c", "256", "-t", "1", "--large-base", str(tiny.large_base), "--small-ft",
            str(tiny.small_ft), "--small-base", str(tiny.small_base)]  # fmt: skip


@pytest.fixture
def served(monkeypatch):
    """Replaces the blocking server with a recorder of what it would have served."""
    calls = []

    def fake(em, **kw):
        calls.append({"beta": em.beta, "n_ctx": em.n_ctx, **kw})

    monkeypatch.setattr(server_module, "serve", fake)
    return calls


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def test_serve_hands_its_settings_to_the_server(tiny, served):
    r = invoke("serve", *trio(tiny), "--port", "9001", "--queue", "3", "--beta", "1.5")
    assert r.exit_code == 0, r.output
    [call] = served
    assert call["host"] == "127.0.0.1" and call["port"] == 9001 and call["queue"] == 3
    assert call["beta"] == 1.5 and call["n_ctx"] == 256 and call["api_key"] is None
    assert "http://127.0.0.1:9001/" in r.stderr and "warning" not in r.stderr


def test_a_non_loopback_address_without_a_key_warns(tiny, served):
    r = invoke("serve", *trio(tiny), "--host", "0.0.0.0")
    assert r.exit_code == 0, r.output
    assert "localeft: warning: serving on 0.0.0.0 without --api-key" in r.stderr
    r = invoke("serve", *trio(tiny), "--host", "0.0.0.0", env={"LOCALEFT_API_KEY": "k"})
    assert "warning" not in r.stderr and served[-1]["api_key"] == "k"


def test_without_the_server_extra_serve_names_the_install_line(tiny, monkeypatch, served):
    monkeypatch.setattr(server_module, "missing", lambda: "uvicorn")
    r = invoke("serve", *trio(tiny))
    assert r.exit_code == 1 and not served
    assert r.stderr.strip() == (
        "localeft: error: localeft serve needs uvicorn: pip install 'localeft[server]'"
    )


def test_missing_reports_an_absent_module(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "starlette" else real(name)
    )
    assert server_module.missing() == "starlette"


def test_serve_help_shows_examples():
    r = invoke("serve", "--help")
    assert r.exit_code == 0 and "--api-key" in r.output and "/v1/chat/completions" in r.output
