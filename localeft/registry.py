"""Model registry: presets from models.toml, user overrides, and the Hugging Face cache.

Hub files live in the standard Hugging Face cache (HF_HUB_CACHE / HF_HOME, read by
huggingface_hub when it is imported), so they are shared with every other tool that uses it.
huggingface_hub is imported on first use only: it costs ~0.2 s and ~10 MiB, which commands given
local paths never need.
"""

from __future__ import annotations

import difflib
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser under its old name
    import tomli as tomllib

from localeft.errors import ConfigError, DownloadError, ModelFileError

ROLES = ("large_base", "small_ft", "small_base")
SHIPPED_CONFIG = Path(__file__).with_name("models.toml")
_FILE_KEYS = {"repo", "file", "path", "size_gb"}
_ROLE_KEYS = _FILE_KEYS | {"adapters"}
_ADAPTER_KEYS = _FILE_KEYS | {"scale"}
_SETTINGS = ("beta", "temperature", "n_ctx")  # suggested settings a preset may carry

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ModelRef:
    """One role of a preset: a Hub file (``repo`` + ``file``) or a local ``path``."""

    role: str
    repo: str | None
    file: str | None
    path: str | None
    size_gb: float | None
    preset: str | None = field(default=None, compare=False)  # names `localeft pull PRESET`
    config: str | None = field(default=None, compare=False)  # the --config that defines it

    @property
    def pull_command(self) -> str:
        """The command that downloads this file's preset, as the user must type it."""
        config = f" --config {self.config}" if self.config else ""
        return f"localeft pull{config} {self.preset or 'PRESET'}"

    @property
    def label(self) -> str:
        """Human text: the local path, or ``repo/file``."""
        return self.path if self.path is not None else f"{self.repo}/{self.file}"


@dataclass(frozen=True)
class Preset:
    """A named EFT trio plus suggested settings (beta, temperature, n_ctx, ...). With
    `adapters` ((ModelRef, scale) pairs: LoRA adapter GGUFs), the small fine-tuned model is
    the small base with them applied, and `roles` has no small_ft."""

    name: str
    description: str
    roles: dict[str, ModelRef]
    settings: dict[str, Any]
    notes: str = ""
    adapters: tuple[tuple[ModelRef, float], ...] = ()

    def files(self, role: str | None = None) -> list[ModelRef]:
        """Every file the preset names (or one role's: small_ft's are its adapters), models
        and adapters, in order: what `pull` downloads and `models` lists."""
        roles = ROLES if role is None else (role,)
        out = []
        for r in roles:
            if r == "small_ft" and self.adapters:
                out += [ref for ref, _ in self.adapters]
            elif r in self.roles:
                out.append(self.roles[r])
        return out


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/localeft/models.toml`` (default ``~/.config/localeft/models.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "localeft" / "models.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None


def _merge(presets: dict[str, dict], origin: dict[str, Path], data: dict, path: Path) -> None:
    """Deep-merge one file's ``[presets.*]`` tables into ``presets``, per preset and per role."""
    unknown = sorted(set(data) - {"default", "presets"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected `default = ...` and [presets.NAME] tables"
        )
    tables = data.get("presets", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{path}: presets must be [presets.NAME] tables")
    for name, table in tables.items():
        merged = dict(presets.get(name, {}))
        for key, value in table.items():
            if key in ROLES and isinstance(value, dict):
                value, base = dict(value), dict(merged.get(key) or {})
                if isinstance(value.get("path"), str):  # relative to the file that names it
                    value["path"] = str(path.parent / Path(value["path"]).expanduser())
                if "path" in value:  # a local file replaces a Hub reference, and vice versa
                    base = {k: v for k, v in base.items() if k not in ("repo", "file", "size_gb")}
                elif "repo" in value or "file" in value:
                    base.pop("path", None)
                if "adapters" in value:  # adapters replace a model file, and vice versa
                    base = {k: v for k, v in base.items() if k not in _FILE_KEYS}
                elif set(value) & _FILE_KEYS:
                    base.pop("adapters", None)
                if isinstance(value.get("adapters"), list):
                    value["adapters"] = [
                        {**a, "path": str(path.parent / Path(a["path"]).expanduser())}
                        if isinstance(a, dict) and isinstance(a.get("path"), str)
                        else a
                        for a in value["adapters"]
                    ]
                value = {**base, **value}
            merged[key] = value
        presets[name], origin[name] = merged, path


def _build(name: str, table: dict, path: Path, config: PathLike | None = None) -> Preset:
    """Validate one merged preset table and turn it into a Preset."""

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{path}: preset '{name}': {msg}")

    stray = sorted(k for k, v in table.items() if isinstance(v, dict) and k not in ROLES)
    if stray:  # [presets.qwen2.5-7b] parses as preset "qwen2" with a table "5-7b"
        hint = (
            f'quote names containing dots: [presets."{name}.{stray[0]}"]'
            if stray[0][:1].isdigit()
            else f"roles are {', '.join(ROLES)}"
        )
        raise bad(f"unknown table(s) {', '.join(stray)}; {hint}")
    roles = {}
    adapters: list[tuple[ModelRef, float]] = []
    config_arg = None if config is None else str(config)

    def file_ref(role: str, spec: dict, keys: set) -> ModelRef:
        if set(spec) - keys:
            raise bad(f"{role}: unknown key(s) {', '.join(sorted(set(spec) - keys))}")
        repo, file, local, size = (spec.get(k) for k in ("repo", "file", "path", "size_gb"))
        if local is not None:
            if not isinstance(local, str) or not local:
                raise bad(f"{role}: path must be a non-empty string")
            repo = file = None
        elif not (
            isinstance(repo, str) and repo.count("/") == 1 and isinstance(file, str) and file
        ):
            raise bad(f'{role}: needs repo = "ORG/NAME" and file = "x.gguf", or path = "..."')
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float))):
            raise bad(f"{role}: size_gb must be a number")
        size = None if size is None else float(size)
        return ModelRef(role, repo, file, local, size, name, config_arg)

    for role in ROLES:
        spec = table.get(role)
        if not isinstance(spec, dict):
            raise bad(f"missing [{role}] table (a preset needs {', '.join(ROLES)})")
        if "adapters" in spec:
            if role != "small_ft":
                raise bad(f"{role}: only small_ft may name adapters (small_base + adapters)")
            if set(spec) != {"adapters"}:
                raise bad("small_ft: give adapters or a model file (repo/file or path), not both")
            items = spec["adapters"]
            if (
                not isinstance(items, list)
                or not items
                or not all(isinstance(a, dict) for a in items)
            ):
                raise bad("small_ft: adapters must be a list of {repo, file} or {path} tables")
            for i, a in enumerate(items):
                label = f"small_ft adapter {i + 1}" if len(items) > 1 else "small_ft adapter"
                scale = a.get("scale", 1.0)
                if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                    raise bad(f"{label}: scale must be a number")
                adapters.append((file_ref(label, a, _ADAPTER_KEYS), float(scale)))
            continue
        roles[role] = file_ref(role, spec, _FILE_KEYS)
    settings = {k: v for k, v in table.items() if k not in (*ROLES, "description", "notes")}
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise bad(
            f"unknown key(s) {', '.join(unknown)}; a preset takes description, notes, "
            f"{', '.join(_SETTINGS)} and the [{'], ['.join(ROLES)}] tables"
        )
    for key, kind in (("beta", (int, float)), ("temperature", (int, float)), ("n_ctx", int)):
        value = settings.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise bad(f"{key} must be a number" + (" (an integer)" if kind is int else ""))
    description, notes = table.get("description", ""), table.get("notes", "")
    if not (isinstance(description, str) and isinstance(notes, str)):
        raise bad("description and notes must be strings")
    return Preset(name, description, roles, settings, notes, tuple(adapters))


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3)
    if close:
        return f"; did you mean: {', '.join(close)}?"
    return "; known: " + ", ".join(sorted(names))


def load_presets(config: PathLike | None = None) -> tuple[dict[str, Preset], str]:
    """Shipped presets merged with the user file (``config``, else the XDG one if it exists).

    Returns ``(presets by name, default preset name)``; any mistake raises ConfigError.
    """
    files = [SHIPPED_CONFIG]
    if config is not None:
        files.append(Path(config).expanduser())
    elif user_config_path().is_file():
        files.append(user_config_path())
    tables: dict[str, dict] = {}
    origin: dict[str, Path] = {}
    default, default_origin = None, SHIPPED_CONFIG
    for path in files:
        data = _read_toml(path)
        _merge(tables, origin, data, path)
        if "default" in data:
            default, default_origin = data["default"], path
    presets = {name: _build(name, table, origin[name], config) for name, table in tables.items()}
    if not isinstance(default, str) or default not in presets:
        raise ConfigError(
            f"{default_origin}: default preset {default!r} is not defined"
            + _suggest(str(default), presets)
        )
    return presets, default


def get_preset(name: str | None, config: PathLike | None = None) -> Preset:
    """The preset called ``name`` (the default one if None); unknown names get suggestions."""
    presets, default = load_presets(config)
    name = name or default
    folded = {n.lower(): n for n in presets}
    if name.lower() in folded:
        return presets[folded[name.lower()]]
    raise ConfigError(f"unknown preset '{name}'" + _suggest(name, presets))


def _env_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not when huggingface_hub loaded."""
    values = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(v.strip().upper() in {"1", "ON", "YES", "TRUE"} for v in values)


def _offline_error(ref: ModelRef) -> DownloadError:
    return DownloadError(
        f"{ref.role} model {ref.label} is not in the Hugging Face cache and "
        "HF_HUB_OFFLINE is set / --offline was given; "
        f"run `{ref.pull_command}` with network access"
    )


def _download_error(ref: ModelRef, e: BaseException) -> DownloadError:
    """Turn a huggingface_hub or network failure into a one-line DownloadError."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    what = f"{ref.role} model {ref.label}"
    first = (str(e).strip() or type(e).__name__).splitlines()[0]
    if isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled):
        return _offline_error(ref)
    if isinstance(e, GatedRepoError):
        msg = (
            f"{ref.repo} is a gated repository: accept its licence at https://huggingface.co/"
            f"{ref.repo} and log in with `hf auth login` (or set HF_TOKEN)"
        )
    elif isinstance(e, RepositoryNotFoundError):
        msg = (
            f"repository {ref.repo} ({ref.role}) was not found on the Hugging Face Hub "
            "(if it is private, log in with `hf auth login`)"
        )
    elif isinstance(e, LocalEntryNotFoundError):  # hf_hub_download's "no connection" error
        msg = (
            f"cannot download {what}: the Hugging Face Hub is unreachable; "
            "check the network connection (and any proxy or HF_ENDPOINT setting)"
        )
    elif isinstance(e, EntryNotFoundError):
        msg = f"file {ref.file} ({ref.role}) was not found in repository {ref.repo} on the Hub"
    elif isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        msg = f"cannot download {what}: {first}" + (
            "; check your token (`hf auth login`)" if status == 401 else ""
        )
    elif isinstance(e, OSError) and e.errno is not None:  # disk full, permissions, ...
        msg = f"cannot download {what}: {e.strerror or first}"
    else:
        msg = (
            f"cannot download {what}: the Hugging Face Hub is unreachable or the transfer was "
            f"interrupted ({type(e).__name__}: {first}); run it again to resume"
        )
    return DownloadError(msg)


def is_cached(ref: ModelRef, cache_dir: PathLike | None = None) -> Path | None:
    """The file's path if it is available without network (local file or HF cache), else None."""
    if ref.path is not None:
        local = Path(ref.path).expanduser()
        return local if local.is_file() else None
    import huggingface_hub

    hit = huggingface_hub.try_to_load_from_cache(ref.repo, ref.file, cache_dir=cache_dir)
    return Path(hit) if isinstance(hit, str) else None  # None, or the cached "no such file" mark


def resolve(
    ref: ModelRef,
    *,
    download: bool,
    offline: bool | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Local path of ``ref``: a local file, a cached Hub file, or (if allowed) a fresh download.

    ``offline=None`` reads HF_HUB_OFFLINE from the environment now. A missing local file raises
    ModelFileError; a Hub file that is neither cached nor downloadable raises DownloadError.
    """
    if ref.path is not None:
        local = Path(ref.path).expanduser()
        if not local.is_file():
            raise ModelFileError(f"{ref.role} model file not found: {local}")
        return local
    cached = is_cached(ref, cache_dir)
    if cached is not None:
        return cached
    if _env_offline() if offline is None else offline:
        raise _offline_error(ref)
    if not download:
        raise DownloadError(
            f"{ref.role} model {ref.label} is not in the Hugging Face cache; "
            f"run `{ref.pull_command}` to download it"
        )
    _check_reachable(ref)
    import huggingface_hub
    from huggingface_hub import utils

    # huggingface_hub's HTTP library (requests, httpx or httpx2 by version) is HfHubHTTPError's
    # other base class; its transport errors (a connection dropped mid-download) escape unwrapped.
    http_errors = tuple(c for c in utils.HfHubHTTPError.__bases__ if c is not OSError)
    silence = not progress and not utils.are_progress_bars_disabled()
    if silence:
        utils.disable_progress_bars()
    try:  # hf_hub_download shows progress and resumes partial downloads by itself
        return Path(huggingface_hub.hf_hub_download(ref.repo, ref.file, cache_dir=cache_dir))
    except (OSError, *http_errors) as e:  # every huggingface_hub error class is an OSError
        raise _download_error(ref, e) from e
    finally:
        if silence:
            utils.enable_progress_bars()


def _check_reachable(ref: ModelRef, timeout: float = 5.0) -> None:
    """Fail in seconds with one line when the Hub cannot be reached: huggingface_hub would
    retry for half a minute, logging every try. Skipped behind a proxy (only it knows)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise DownloadError(
            f"cannot download {ref.role} model {ref.label}: the Hugging Face Hub is unreachable "
            f"({host}: {reason}); check the network connection (and any proxy or HF_ENDPOINT "
            "setting), or use --offline with cached files"
        ) from None


def pull(
    preset: Preset, *, offline: bool | None = None, cache_dir: PathLike | None = None
) -> dict[str, Path]:
    """Download every role of ``preset`` that is not cached yet; returns role -> local path."""
    return {
        ref.role: resolve(ref, download=True, offline=offline, cache_dir=cache_dir)
        for ref in preset.files()
    }


def describe(preset: Preset, cache_dir: PathLike | None = None) -> list[dict[str, Any]]:
    """Rows for ``localeft models``: role, label, local, cached, path, size_gb, size_estimated.

    ``size_gb`` is the size on disk when the file is available, else the preset's estimate.
    """
    rows = []
    for ref in preset.files():
        found = is_cached(ref, cache_dir)
        rows.append(
            {
                "role": ref.role,
                "label": ref.label,
                "local": ref.path is not None,
                "cached": found is not None,
                "path": str(found) if found else None,
                "size_gb": round(found.stat().st_size / 1e9, 3) if found else ref.size_gb,
                "size_estimated": found is None,
            }
        )
    return rows
