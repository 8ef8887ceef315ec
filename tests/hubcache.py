"""An offline, per-test Hugging Face cache that tests fill in the Hub's own layout."""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def no_network(*args, **kwargs):
    raise AssertionError(f"unexpected Hub download: {args} {kwargs}")


_listener: socket.socket | None = None


def loopback_endpoint() -> str:
    """An address on this machine that accepts connections and never answers: the Hub as far as
    localeft's reachability check can tell, where tests fake the downloads themselves."""
    global _listener
    if _listener is None:
        _listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    return f"http://127.0.0.1:{_listener.getsockname()[1]}"


def isolate(tmp_path: Path, monkeypatch) -> Path:
    """Offline mode, an empty HF cache and XDG config dir under tmp_path; returns the cache."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    # huggingface_hub reads these variables once, at import: patch its constants too.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(hf_constants, "ENDPOINT", loopback_endpoint())
    return hub


def put_in_cache(
    cache: Path, repo: str, file: str, data: bytes = b"GGUF" + bytes(60), blob: bool = False
) -> Path:
    """Write `file` of `repo` into `cache` the way hf_hub_download does."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT / file
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if blob:  # real layout: the snapshot entry is a relative symlink into blobs/
        (folder / "blobs").mkdir(exist_ok=True)
        (folder / "blobs" / "deadbeef").write_bytes(data)
        snapshot.symlink_to(Path("..", "..", "blobs", "deadbeef"))
    else:
        snapshot.write_bytes(data)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot
