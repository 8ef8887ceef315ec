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
from ..lora import LoRA
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
    "rpc_output": "--rpc-output",
    "yes": "-y/--yes",
}
LABELS = {"large_base": "base", "small_ft": "ft", "small_base": "ref"}


def given(name: str) -> bool:
    """Did the user set this option (on the command line or through its environment variable)?"""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


MODEL_OPTIONS = ("preset", "large_base", "small_ft", "small_base", "experts")
MODEL_OPTIONS += ("small_ft_lora", "expert_lora")


def names_models(o: dict) -> bool:
    """Do the options name models (a preset, paths, experts or adapters)?"""
    return any(o.get(k) for k in MODEL_OPTIONS)


def cached(ref: registry.ModelRef) -> Path:
    """A preset file as it is here, to compare with the server's: never downloaded."""
    path = registry.is_cached(ref)
    if path is None:
        raise ServerError(
            f"cannot check that the server serves preset {ref.preset}'s {ref.role} file "
            f"({ref.label}): it is not downloaded here; name no models to use the server's, "
            f"or `{ref.pull_command}`"
        )
    return path


def connect(o: dict, asked: tuple[dict, dict] | None) -> tuple[Client, dict]:
    """The server as the Emulator the options describe, and the settings to default to.
    `asked`: the models the options name and the preset's settings (options.resolve_models
    with `cached`), None when they name none (the server's are used)."""
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
    if asked is None:
        settings = client.defaults
    else:
        paths, settings = asked
        check_models(client, *served_as(paths))
    _check_load(client, o)
    beta = o.get("beta")
    client.beta = beta if beta is not None else settings.get("beta", client.beta)
    return client, settings


def served_as(paths: dict) -> tuple[dict[str, Path], dict[str, list], list[float]]:
    """options.resolve_models' models as a server lists them in /v1/models: each role's file
    and its LoRA adapters (path, scale) by label, and the expert weights."""
    if "experts" in paths:
        pairs = [(e.ft, e.ref, e.weight) for e in paths["experts"]]
    else:
        pairs = [(paths["small_ft"], paths["small_base"], 1.0)]
    many = len(pairs) > 1
    files, adapters = {"base": Path(paths["large_base"]).expanduser()}, {}
    for i, (ft, ref, _) in enumerate(pairs):
        for label, model in ((f"ft{i}" if many else "ft", ft), (f"ref{i}" if many else "ref", ref)):
            if isinstance(model, LoRA):
                adapters[label] = [(Path(a).expanduser(), s) for a, s in model.adapters]
                model = model.model
            files[label] = Path(model).expanduser()
    return files, adapters, [w for _, _, w in pairs]


def check_models(
    client: Client, files: dict[str, Path], adapters: dict[str, list], weights: list[float]
) -> None:
    """The server must serve these files in these roles, with these LoRA adapters and
    expert weights."""
    where = f"the server at {client.url}"
    advice = "drop the model options to use its models, or start `localeft serve` with these"
    if set(files) != set(client.roles):
        raise ServerError(
            f"{where} serves other models ({_roles(client.roles)}) than the ones asked for "
            f"({_roles(files)}); {advice}"
        )
    if weights != client.expert_weights:
        raise ServerError(
            f"{where} serves its fine-tuning at weight {_weights(client.expert_weights)}, not "
            f"the {_weights(weights)} asked for; {advice}"
        )
    for label, asked in files.items():
        if not same_file(asked, client.roles[label]):
            raise ServerError(
                f"{where} serves {client.roles[label]} as {label}, not the {asked} asked for; "
                f"{advice}"
            )
    for label in files:
        mine, theirs = adapters.get(label, []), client.adapters.get(label, [])
        same = len(mine) == len(theirs) and all(
            same_file(a, b) and s == t for (a, s), (b, t) in zip(mine, theirs)
        )
        if not same:
            full = _adapters(theirs) == _adapters(mine)  # same names: other files
            raise ServerError(
                f"{where} serves {label} with {_adapters(theirs, full)}, not the "
                f"{_adapters(mine, full)} asked for; {advice}"
            )


def _adapters(pairs: list, full: bool = False) -> str:
    """The adapters by file name (`full`: by path), each with its scale."""
    if not pairs:
        return "no LoRA adapter"
    name = str if full else (lambda p: Path(str(p)).name)
    return "LoRA " + " + ".join(f"{name(p)} x{s:g}" for p, s in pairs)


def _weights(weights: list[float]) -> str:
    return ", ".join(f"{w:g}" for w in weights)


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
