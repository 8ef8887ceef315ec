"""Tests of localeft.registry: presets, user overrides, and the Hugging Face cache.

No test touches the network: HF_HUB_OFFLINE is on, the HF cache is a per-test tmp dir that the
tests fill in the Hub's own layout, and huggingface_hub.hf_hub_download is replaced by a stub
that fails the test unless a test installs its own fake.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download

from hubcache import COMMIT, isolate, no_network, put_in_cache  # noqa: F401

from localeft import registry
from localeft.errors import ConfigError, DownloadError, ModelFileError
from localeft.registry import ROLES, ModelRef

REAL_HF_HUB_DOWNLOAD = file_download.hf_hub_download


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Isolated offline HF cache and XDG config dir; returns the cache dir."""
    return isolate(tmp_path, monkeypatch)


def write_user_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xdg" / "localeft" / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def hub_ref(repo="org/model-GGUF", file="model.Q8_0.gguf", role="small_ft", preset="demo"):
    return ModelRef(role, repo, file, None, 0.5, preset)


# ------------------------------------------------------------------ shipped presets


def test_shipped_presets_are_complete():
    presets, default = registry.load_presets()
    assert len(presets) >= 5
    for name, preset in presets.items():
        assert preset.name == name and preset.description
        assert set(preset.roles) == set(ROLES)
        for role, ref in preset.roles.items():
            assert ref.role == role and ref.path is None and ref.preset == name
            assert ref.repo.count("/") == 1 and ref.file.endswith(".gguf")
            assert ref.size_gb and ref.size_gb > 0
        assert {"beta", "temperature", "n_ctx"} <= set(preset.settings)


def test_shipped_presets_cover_requested_families():
    presets, _ = registry.load_presets()
    files = {n: " ".join(r.file for r in p.roles.values()).lower() for n, p in presets.items()}
    for needles in (
        ("qwen2.5-7b", "qwen2.5-0.5b-instruct", "qwen2.5-0.5b."),
        ("llama-3.1-8b", "llama-3.2-1b-instruct", "llama-3.2-1b."),
        ("smollm2-1.7b", "smollm2-360m-instruct", "smollm2-360m."),
        ("gemma-3-1b-pt", "gemma-3-270m-it", "gemma-3-270m-q8_0"),
        ("qwen3-8b-base", "qwen3-0.6b-q8_0", "qwen3-0.6b-base"),
    ):
        assert any(all(n in text for n in needles) for text in files.values()), needles


def test_default_preset_exists_and_fits_a_laptop():
    presets, default = registry.load_presets()
    assert default in presets
    assert registry.get_preset(None) is not None
    assert registry.get_preset(None).name == default
    assert sum(r.size_gb for r in presets[default].roles.values()) < 8


def test_qwen25_preset_notes_padded_vocab():
    notes = registry.get_preset("qwen2.5-7b").notes
    assert "152064" in notes and "151936" in notes


# ------------------------------------------------------------------ user configuration


def test_user_config_overrides_and_adds(tmp_path):
    local = tmp_path / "models" / "mine.gguf"
    write_user_config(
        tmp_path,
        f"""
default = "mine"

[presets."qwen2.5-7b"]
beta = 1.5
[presets."qwen2.5-7b".large_base]
file = "Qwen2.5-7B.Q5_K_M.gguf"

[presets.mine]
description = "my trio"
beta = 0.5
[presets.mine.large_base]
path = "{local}"
[presets.mine.small_ft]
path = "ft.gguf"
[presets.mine.small_base]
repo = "org/base-GGUF"
file = "base.gguf"
""",
    )
    presets, default = registry.load_presets()
    assert default == "mine"
    qwen = presets["qwen2.5-7b"]
    assert qwen.settings["beta"] == 1.5 and qwen.settings["n_ctx"] == 4096  # deep merge
    assert qwen.description and "152064" in qwen.notes
    big = qwen.roles["large_base"]
    assert big.file == "Qwen2.5-7B.Q5_K_M.gguf" and big.repo == "mradermacher/Qwen2.5-7B-GGUF"
    mine = presets["mine"]
    assert mine.roles["large_base"].path == str(local) and mine.roles["large_base"].repo is None
    assert mine.roles["small_ft"].path == str(tmp_path / "xdg" / "localeft" / "ft.gguf")
    assert mine.roles["small_base"].label == "org/base-GGUF/base.gguf"
    assert mine.settings == {"beta": 0.5}


def test_local_path_replaces_hub_reference(tmp_path):
    config = tmp_path / "explicit.toml"
    config.write_text('[presets."gemma3-1b".small_base]\npath = "~/g.gguf"\n')
    ref = registry.get_preset("gemma3-1b", config=config).roles["small_base"]
    assert (ref.repo, ref.file, ref.size_gb) == (None, None, None)
    assert ref.path == str(Path("~/g.gguf").expanduser())


def test_explicit_config_replaces_xdg_file(tmp_path):
    write_user_config(tmp_path, 'default = "nope"\n')  # would fail if it were read
    config = tmp_path / "explicit.toml"
    config.write_text('default = "gemma3-1b"\n')
    assert registry.load_presets(config)[1] == "gemma3-1b"


def test_missing_explicit_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        registry.load_presets(tmp_path / "absent.toml")


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ConfigError) as err:
        registry.get_preset("qwen25")
    assert str(err.value) == "unknown preset 'qwen25'; did you mean: qwen2.5-7b?"
    assert registry.get_preset("Qwen2.5-7B").name == "qwen2.5-7b"


def test_malformed_toml_names_the_file(tmp_path):
    path = write_user_config(tmp_path, "[presets.broken\nbeta = ")
    with pytest.raises(ConfigError) as err:
        registry.load_presets()
    assert str(path) in str(err.value) and "invalid TOML" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[presets.half.large_base]\nrepo = "a/b"\nfile = "c.gguf"\n', "missing [small_ft]"),
        ('[presets.x.large_base]\nrepo = "a/b"\n', "needs repo"),
        ('[presets."qwen2.5-7b".small_ft]\nfiel = "x.gguf"\n', "unknown key(s) fiel"),
        ('[presets."qwen2.5-7b"]\nbeta = "high"\n', "beta must be a number"),
        ("[presets.qwen2.5-7b]\nbeta = 2\n", "quote names containing dots"),
        ('[presets."qwen2.5-7b".large_bsae]\nfile = "x.gguf"\n', "roles are large_base"),
        ('[presets."qwen2.5-7b"]\nn_ctx = 4096.0\n', "n_ctx must be a number (an integer)"),
        ('default = "qwen25"\n', "did you mean: qwen2.5-7b"),
        ("[qwen3-8b]\nbeta = 2\n", "unknown top-level key"),
    ],
)
def test_invalid_user_config(tmp_path, text, expected):
    path = write_user_config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        registry.load_presets()
    assert expected in str(err.value) and str(path) in str(err.value)


def test_missing_role_names_file_and_preset(tmp_path):
    path = write_user_config(tmp_path, '[presets.half.large_base]\npath = "/x.gguf"\n')
    with pytest.raises(ConfigError, match="preset 'half'") as err:
        registry.load_presets()
    assert str(err.value).startswith(str(path))


# ------------------------------------------------------------------ cache and resolve


def test_resolve_uses_the_cache_without_network(cache):
    ref = hub_ref()
    expected = put_in_cache(cache, ref.repo, ref.file, blob=True)
    for offline in (None, True, False):
        assert registry.resolve(ref, download=True, offline=offline) == expected
    assert registry.is_cached(ref) == expected
    # the layout built here is what huggingface_hub itself reads back
    assert Path(REAL_HF_HUB_DOWNLOAD(ref.repo, ref.file, local_files_only=True)) == expected


def test_resolve_with_explicit_cache_dir(tmp_path):
    other = tmp_path / "elsewhere"
    ref = hub_ref()
    expected = put_in_cache(other, ref.repo, ref.file)
    assert registry.is_cached(ref) is None
    assert registry.resolve(ref, download=False, cache_dir=other) == expected


def test_resolve_offline_uncached_says_pull():
    with pytest.raises(DownloadError) as err:
        registry.resolve(hub_ref(), download=True)  # offline=None: HF_HUB_OFFLINE=1 in env
    message = str(err.value)
    assert "localeft pull demo" in message and "HF_HUB_OFFLINE" in message
    assert "org/model-GGUF/model.Q8_0.gguf" in message


def test_offline_none_reads_environment_at_call_time(monkeypatch, cache):
    calls = []

    def fake_download(repo_id, filename, *, cache_dir=None, **kwargs):
        calls.append((repo_id, filename))
        return str(put_in_cache(cache, repo_id, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert registry.resolve(hub_ref(), download=True, progress=False).is_file()
    assert calls == [("org/model-GGUF", "model.Q8_0.gguf")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        registry.resolve(hub_ref(file="other.gguf"), download=True)
    assert len(calls) == 1


def test_resolve_without_download_permission():
    with pytest.raises(DownloadError, match="localeft pull demo"):
        registry.resolve(hub_ref(), download=False, offline=False)


def test_local_path(tmp_path):
    missing = ModelRef("large_base", None, None, str(tmp_path / "absent.gguf"), None)
    with pytest.raises(ModelFileError, match="absent.gguf"):
        registry.resolve(missing, download=True)
    present = tmp_path / "present.gguf"
    present.write_bytes(b"GGUF")
    ref = ModelRef("large_base", None, None, str(present), None)
    assert registry.resolve(ref, download=False, offline=True) == present
    assert registry.is_cached(missing) is None and registry.is_cached(ref) == present


def test_pull_offline_with_everything_cached(cache):
    preset = registry.get_preset("smollm2-1.7b")
    expected = {role: put_in_cache(cache, r.repo, r.file) for role, r in preset.roles.items()}
    assert registry.pull(preset, offline=True) == expected


def test_pull_downloads_only_missing_roles(monkeypatch, cache):
    preset = registry.get_preset("gemma3-1b")
    small = preset.roles["small_ft"]
    put_in_cache(cache, small.repo, small.file)
    fetched = []

    def fake_download(repo_id, filename, *, cache_dir=None, **kwargs):
        fetched.append(filename)
        return str(put_in_cache(Path(cache_dir or hf_constants.HF_HUB_CACHE), repo_id, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    paths = registry.pull(preset, offline=False)
    assert set(paths) == set(ROLES) and all(p.is_file() for p in paths.values())
    assert sorted(fetched) == sorted(preset.roles[r].file for r in ("large_base", "small_base"))


def test_pull_offline_missing_file_fails():
    with pytest.raises(DownloadError, match="localeft pull qwen3-8b"):
        registry.pull(registry.get_preset("qwen3-8b"))


def test_describe_reports_cached_and_missing(cache, tmp_path):
    write_user_config(tmp_path, f'[presets."qwen2.5-7b".small_base]\npath = "{tmp_path}/b.gguf"\n')
    (tmp_path / "b.gguf").write_bytes(bytes(2_000_000))
    preset = registry.get_preset("qwen2.5-7b")
    ft = preset.roles["small_ft"]
    put_in_cache(cache, ft.repo, ft.file, data=bytes(3_000_000), blob=True)
    rows = {row["role"]: row for row in registry.describe(preset)}
    assert [row["role"] for row in registry.describe(preset)] == list(ROLES)
    assert rows["large_base"]["cached"] is False and rows["large_base"]["size_estimated"]
    assert rows["large_base"]["size_gb"] == 4.68 and rows["large_base"]["path"] is None
    assert rows["small_ft"]["cached"] and rows["small_ft"]["size_gb"] == 0.003
    assert rows["small_ft"]["label"] == ft.label and not rows["small_ft"]["size_estimated"]
    assert rows["small_base"]["local"] and rows["small_base"]["size_gb"] == 0.002


# ------------------------------------------------------------------ download failures


def _raise(error: BaseException, cause: BaseException | None = None):
    def fake_download(*args, **kwargs):
        raise error from cause

    return fake_download


def _http_response(status: int):
    httpx2 = pytest.importorskip("httpx2")  # the HTTP library of the installed huggingface_hub
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))


def _hub_errors():
    from huggingface_hub import errors

    httpx2 = pytest.importorskip("httpx2")
    connect = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    return {
        "unreachable": (errors.LocalEntryNotFoundError("An error happened ..."), connect),
        "dropped": (httpx2.ReadTimeout("The read operation timed out"), None),
        "gated": (errors.GatedRepoError("403 Client Error", response=_http_response(403)), None),
        "missing-repo": (errors.RepositoryNotFoundError("404", response=_http_response(404)), None),
        "missing-file": (
            errors.RemoteEntryNotFoundError("404", response=_http_response(404)),
            None,
        ),
        "hub-offline": (errors.LocalEntryNotFoundError("..."), errors.OfflineModeIsEnabled("off")),
        "server": (errors.HfHubHTTPError("503 Server Error", response=_http_response(503)), None),
        "disk-full": (OSError(28, "No space left on device"), None),
    }


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unreachable", "Hugging Face Hub is unreachable"),
        ("dropped", "unreachable or the transfer was interrupted (ReadTimeout"),
        ("gated", "accept its licence at https://huggingface.co/org/model-GGUF"),
        ("missing-repo", "repository org/model-GGUF (small_ft) was not found"),
        (
            "missing-file",
            "file model.Q8_0.gguf (small_ft) was not found in repository org/model-GGUF",
        ),
        ("hub-offline", "localeft pull demo"),
        ("server", "503 Server Error"),
        ("disk-full", "No space left on device"),
    ],
)
def test_download_failures_become_download_errors(monkeypatch, case, expected):
    error, cause = _hub_errors()[case]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(error, cause))
    with pytest.raises(DownloadError) as err:
        registry.resolve(hub_ref(), download=True, offline=False)
    assert expected in str(err.value) and "\n" not in str(err.value)
    if case == "gated":
        assert "hf auth login" in str(err.value)


def test_real_library_in_offline_mode(monkeypatch):
    """huggingface_hub's own offline switch (read at import) maps to the offline message."""
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", REAL_HF_HUB_DOWNLOAD)
    with pytest.raises(DownloadError, match="localeft pull demo"):
        registry.resolve(hub_ref(), download=True, offline=False)


def test_real_library_with_unreachable_hub(monkeypatch):
    """A refused connection (a closed local port standing in for the Hub) is a DownloadError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    from huggingface_hub.utils import _http  # it retries 5 times with 1-8 s waits: skip them

    if hasattr(_http, "time"):
        monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", REAL_HF_HUB_DOWNLOAD)
    with pytest.raises(DownloadError, match="Hugging Face Hub is unreachable"):
        registry.resolve(hub_ref(), download=True, offline=False, progress=False)


def test_unreachable_hub_fails_in_seconds_with_one_line(monkeypatch, capfd, caplog):
    """huggingface_hub retries a dead connection for ~24 s, logging each try: localeft checks
    that the Hub answers first and stops at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", REAL_HF_HUB_DOWNLOAD)
    t = time.monotonic()
    with pytest.raises(DownloadError, match=r"Hub is unreachable \(127.0.0.1: .*refused"):
        registry.resolve(hub_ref(), download=True, offline=False, progress=False)
    assert time.monotonic() - t < 3
    out, err = capfd.readouterr()
    assert "etry" not in out + err + caplog.text  # no "Retrying in 1s [Retry 1/5]" lines


def test_env_offline_values(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert registry._env_offline() is expected
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert registry._env_offline() is True
