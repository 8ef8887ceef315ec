"""`--server URL` (and $LOCALEFT_SERVER): `generate`, `chat` and `score` send their requests to
a running `localeft serve` instead of loading models (client.Client stands in for the Emulator).

The output must be the bytes the local command prints, so before anything is sent the options
are checked against what the server loaded: the model files they name (a preset's or explicit
paths; none named: the server's are used), and -c, --base-prompt, --repack when given. Options
that only say how to load have nothing to act on: -ngl (which changes the numbers) is refused,
-t, --rpc and the like are ignored with a warning.
Defaults follow the command line that named the models: the preset's settings (temperature,
beta) when the options name models, else those the server was started with.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from .. import registry
from ..client import Client
from ..errors import LocaleftWarning, ServerError

SERVER = click.option(
    "--server",
    envvar="LOCALEFT_SERVER",
    metavar="URL",
    help="Send the request to a running `localeft serve` (http://HOST:PORT) instead of loading "
    "the models here; also $LOCALEFT_SERVER.",
)

# options that only say how to load: refused where they change the numbers, else ignored
REFUSED = {"gpu_layers": "-ngl/--gpu-layers"}
IGNORED = {
    "threads": "-t/--threads",
    "rpc": "--rpc",
    "rpc_split": "--rpc-split",
    "rpc_timeout": "--rpc-timeout",
    "yes": "-y/--yes",
}
LABELS = {"large_base": "base", "small_ft": "ft", "small_base": "ref"}


def given(name: str) -> bool:
    """Did the user set this option (on the command line or through its environment variable)?"""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def connect(o: dict) -> tuple[Client, dict]:
    """The server as the Emulator the options describe, and the settings to default to."""
    for name, flag in REFUSED.items():
        if name in o and given(name):
            raise click.UsageError(
                f"{flag} says how to load the models, which changes their numbers; with "
                "--server they are the server's (give it to `localeft serve`)"
            )
    for name, flag in IGNORED.items():
        if name in o and given(name):
            warnings.warn(
                f"{flag} is ignored with --server (the server has loaded the models)",
                LocaleftWarning,
                stacklevel=2,
            )
    client = Client(o["server"])
    asked = asked_files(o)
    if asked is None:
        settings = client.defaults
    else:
        files, weights, settings = asked
        check_models(client, files, weights)
    _check_load(client, o)
    beta = o.get("beta")
    client.beta = beta if beta is not None else settings.get("beta", client.beta)
    return client, settings


def asked_files(o: dict) -> tuple[dict[str, Path], list[float], dict] | None:
    """The files the options name, by the server's role labels, the expert weights and the
    preset's settings; None when no option names a model. A preset file that is not downloaded
    here cannot be compared: an error."""
    if not any(o.get(k) for k in ("preset", "large_base", "small_ft", "small_base", "experts")):
        return None
    experts = list(o.get("experts") or ())
    if experts and (o["small_ft"] or o["small_base"]):
        raise click.UsageError(
            "--expert replaces --small-ft/--small-base: give every pair as --expert FT:REF:WEIGHT"
        )
    needed = ["large_base"] if experts else list(registry.ROLES)
    paths: dict[str, Path] = {r: Path(o[r]).expanduser() for r in needed if o[r]}
    settings: dict = {}
    if len(paths) < len(needed) or o["preset"]:
        preset = registry.get_preset(o["preset"], o["config"])
        settings = preset.settings
        for role in needed:
            if role not in paths:
                paths[role] = registry.is_cached(preset.roles[role])
                if paths[role] is None:
                    raise ServerError(
                        f"cannot check that the server serves preset {preset.name}: its {role} "
                        f"file is not downloaded here; name no models to use the server's, or "
                        f"`{preset.roles[role].pull_command}`"
                    )
    if not experts:
        return {LABELS[r]: p for r, p in paths.items()}, [1.0], settings
    many = len(experts) > 1
    files = {"base": paths["large_base"]}
    for i, e in enumerate(experts):
        files[f"ft{i}" if many else "ft"] = Path(e.ft).expanduser()
        files[f"ref{i}" if many else "ref"] = Path(e.ref).expanduser()
    return files, [e.weight for e in experts], settings


def check_models(client: Client, files: dict[str, Path], weights: list[float]) -> None:
    """The server must serve these files in these roles, with these expert weights."""
    where = f"the server at {client.url}"
    advice = "drop the model options to use its models, or start `localeft serve` with these"
    if set(files) != set(client.roles) or weights != client.expert_weights:
        raise ServerError(
            f"{where} serves other models ({_roles(client.roles)}) than the ones asked for "
            f"({_roles(files)}); {advice}"
        )
    for label, asked in files.items():
        if not same_file(asked, client.roles[label]):
            raise ServerError(
                f"{where} serves {client.roles[label]} as {label}, not the {asked} asked for; "
                f"{advice}"
            )


def same_file(asked: Path, served: str) -> bool:
    """The same file: on this machine the same inode; elsewhere the same name (after links:
    Hugging Face cache files are named by their content's hash)."""
    try:
        return os.path.samefile(asked, served)
    except OSError:
        return Path(os.path.realpath(asked)).name == Path(served).name


def _roles(files: dict) -> str:
    return ", ".join(f"{label} {Path(str(p)).name}" for label, p in files.items())


def _check_load(client: Client, o: dict) -> None:
    """-c, --base-prompt and --repack, when given, must be what the server loaded with."""
    where = f"the server at {client.url}"
    if o.get("ctx_size") and given("ctx_size") and o["ctx_size"] != client.n_ctx:
        raise ServerError(
            f"{where} has a context of {client.n_ctx} tokens, not the -c {o['ctx_size']} asked "
            "for; drop -c, or restart the server with it"
        )
    if given("base_prompt") and o["base_prompt"] != client.base_prompt:
        raise ServerError(
            f"{where} shows chats to base models as {client.base_prompt}, not the "
            f"--base-prompt {o['base_prompt']} asked for"
        )
    if given("repack") and o["repack"] != client.repack:
        layout = "repacked" if client.repack else "mmap'd"
        raise ServerError(
            f"{where} holds its weights {layout}, which compute different numbers than "
            f"--{'' if o['repack'] else 'no-'}repack asked for; drop the option or restart the "
            "server with it"
        )
