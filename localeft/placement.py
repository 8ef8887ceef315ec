"""Where a large base's layers go when RPC servers hold some: the settings (`Remote`), the plan
(how many layers on each server and here, from their free memory or a given split), where the
output layer goes (`output_here`), and the rows `check`, `-v` and `Stats.placement` show.

Arithmetic over what `rpc` and `rpclink` report of the servers; they do the talking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import validate
from .errors import InsufficientMemoryError, InvalidParameterError, RpcError
from .rpc import DEFAULT_TIMEOUT, Device, connect, endpoints, probe, require
from .rpclink import Link, LinkError, measure

OUTPUTS = ("auto", "local", "remote")


@dataclass(frozen=True)
class Remote:
    """Where a model's layers go: RPC servers ("host:port"), an optional split (one weight per
    server, then optionally one for this machine; None: all remote, by free memory), the bound
    on one remote call, and where the output layer goes ("local", "remote", or "auto":
    `output_here` decides from the measured link)."""

    endpoints: tuple[str, ...]
    split: tuple[float, ...] | None = None
    timeout: float = DEFAULT_TIMEOUT
    output: str = "auto"

    def connect(self) -> tuple[list[Device], dict[str, Link | None]]:
        """Check every server with a short handshake first (a one-line error, not llama.cpp's
        abort), measure the link to each (None where that failed: the server may be of another
        build), then register them all."""
        for e in self.endpoints:
            probe(e)
        links: dict[str, Link | None] = {}
        for e in self.endpoints:
            try:
                links[e] = measure(e, timeout=min(self.timeout, 5.0))
            except LinkError:
                links[e] = None
        return [d for e in self.endpoints for d in connect(e)], links


def remote(servers, split, timeout, output="auto") -> Remote | None:
    """The RPC settings of an Emulator (None: no RPC), checked before anything loads."""
    if servers is None:
        if split is not None:
            raise InvalidParameterError("rpc_split needs rpc (the RPC servers)")
        validate.number("rpc_timeout", timeout, 0.1)
        validate.choice("rpc_output", output, OUTPUTS)
        return None
    eps = endpoints(servers)
    if not eps:
        raise InvalidParameterError("rpc must name at least one 'HOST:PORT' server, or be None")
    if split is not None:
        split = check_split(split, len(eps))
    timeout = validate.number("rpc_timeout", timeout, 0.1)
    output = validate.choice("rpc_output", output, OUTPUTS)
    require()
    return Remote(tuple(eps), split, timeout, output)


@dataclass(frozen=True)
class OutputChoice:
    """Where the base's output layer (and final norm) goes, and why, in words."""

    here: bool
    why: str

    @property
    def where(self) -> str:
        return "local" if self.here else "remote"


def output_here(
    choice: str,
    endpoint: str,
    link: Link | None,
    saved_bytes: int,
    local_seconds: float | None,
) -> OutputChoice:
    """Keep the output layer here or not. "local"/"remote" as asked; "auto" keeps it here when
    computing it here (`local_seconds`, a micro-benchmark beyond the caches) takes less time
    than the `saved_bytes` of logits over the measured link to `endpoint` (the server that would
    compute it). That assumes the server computes the layer in no time (a GPU); with CPU
    servers "local" pays more often (docs/DISTRIBUTED.md). Without a measurement, llama.cpp's
    own placement: remote."""
    if choice != "auto":
        return OutputChoice(choice == "local", f"rpc_output={choice!r}")
    if link is None or local_seconds is None:
        return OutputChoice(False, f"auto: the link to {endpoint} could not be measured")
    network = saved_bytes / link.down
    here = local_seconds < network
    return OutputChoice(
        here,
        f"auto: {saved_bytes / 1e3:,.0f} KB more per token from {endpoint} take "
        f"{network * 1000:.1f} ms ({link.describe()}); the layer takes "
        f"{local_seconds * 1000:.1f} ms here",
    )


@dataclass(frozen=True)
class Plan:
    """A layer placement in llama.cpp's terms: the first `local_layers` of the n_layer + 1
    (blocks, then the output layer) stay on this machine, the rest are split over the devices in
    proportion to `weights` (llama.cpp: n_gpu_layers and tensor_split)."""

    n_layer: int  # transformer blocks
    local_layers: int
    weights: tuple[float, ...]  # per device

    @property
    def n_gpu_layers(self) -> int:
        return self.n_layer + 1 - self.local_layers

    def layers(self) -> list[int]:
        """Per layer 0..n_layer (n_layer: the output layer), the device index, -1 for local:
        llama.cpp's own rule (llama_model_base::load_tensors)."""
        total = sum(self.weights)
        bounds, acc = [], 0.0
        for w in self.weights:
            acc += w
            bounds.append(acc / total)
        start, n = self.local_layers, self.n_gpu_layers
        out = []
        for il in range(self.n_layer + 1):
            if il < start or n <= 0:
                out.append(-1)
            else:
                x = (il - start) / n  # std::upper_bound over the cumulative splits
                out.append(next((i for i, b in enumerate(bounds) if x < b), len(bounds) - 1))
        return out


def plan(
    n_layer: int,
    devices: Sequence[Device],
    split: Sequence[float] | None,
    layer_bytes: float,
) -> Plan:
    """Where the layers go. `split`: one weight per endpoint (shared evenly by its devices),
    optionally one more for this machine; None: every layer remote, in proportion to each
    device's free memory (llama.cpp's default), except what does not fit there, which stays
    here (`layer_bytes`: the estimated size of one layer with its KV cache)."""
    total_layers = n_layer + 1
    eps = sorted({d.endpoint for d in devices}, key=[d.endpoint for d in devices].index)
    if split is None:
        weights = [float(d.free) for d in devices]
        fit = sum(int(0.9 * d.free // layer_bytes) for d in devices) if layer_bytes else 1 << 30
        local = max(0, total_layers - fit)
        if local == total_layers:
            raise RpcError(
                "the RPC servers have "
                + ", ".join(f"{d.label} {d.free / 2**30:.1f} GiB" for d in devices)
                + " free: not enough for one layer of the large base"
            )
        if all(w == 0 for w in weights):
            weights = [1.0] * len(devices)
        return Plan(n_layer, local, tuple(weights))
    share = dict(zip(eps, split))
    per_ep = {e: sum(d.endpoint == e for d in devices) for e in eps}
    weights = tuple(share[d.endpoint] / per_ep[d.endpoint] for d in devices)
    here = split[len(eps)] if len(split) > len(eps) else 0.0
    local = round(total_layers * here / sum(split))
    return Plan(n_layer, min(local, total_layers - 1), weights)


def check_split(split: Sequence[float], n_servers: int) -> tuple[float, ...]:
    """rpc_split: one weight >= 0 per server, then optionally one for this machine."""
    if isinstance(split, (str, bytes)) or not isinstance(split, Sequence):
        raise InvalidParameterError(f"rpc_split must be a list of numbers, got {split!r}")
    out = [validate.number("rpc_split weight", w, 0.0) for w in split]
    if len(out) not in (n_servers, n_servers + 1):
        raise InvalidParameterError(
            f"rpc_split needs {n_servers} weight{'s' * (n_servers != 1)} (one per RPC server) or "
            f"{n_servers + 1} (one more for this machine), got {len(out)}"
        )
    if sum(out[:n_servers]) <= 0:
        raise InvalidParameterError("rpc_split must give some RPC server a share")
    return tuple(out)


def describe(where: Sequence[int], devices: Sequence[Device]) -> list[dict]:
    """JSON-ready placement from the device index of each layer (-1: here; the last one is
    the output layer): per place (this machine, then each device), its layers as "a-b" ranges
    and how many blocks."""
    n_layer = len(where) - 1
    rows = []
    for i, name in [(-1, "local")] + [(i, d.label) for i, d in enumerate(devices)]:
        mine = [il for il, d in enumerate(where) if d == i]
        blocks = [il for il in mine if il < n_layer]
        text = _ranges(blocks)
        if n_layer in mine:
            text = f"{text}+output" if text else "output"
        if i == -1:
            text = f"input+{text}" if text else "input"
        rows.append({"device": name, "layers": text, "n_layers": len(blocks)})
    return rows


def _ranges(ids: list[int]) -> str:
    out, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def check_remote_memory(plan: Plan, devices: list[Device], per_layer: float) -> None:
    where = plan.layers()
    for i, d in enumerate(devices):
        need = where.count(i) * per_layer
        if d.free and need > d.free:
            gib = 2**30
            raise InsufficientMemoryError(
                f"RPC server {d.label} has {d.free / gib:.1f} GiB free but its "
                f"{where.count(i)} layers of the large base need about {need / gib:.1f} GiB; "
                "give it a smaller share (--rpc-split) or add servers"
            )


def placement_rows(
    plan: Plan,
    devices: list[Device],
    log,
    output_here: bool = False,
    links: dict[str, Link | None] | None = None,
) -> list[dict]:
    """Where the base model's layers went, JSON-ready, as llama.cpp's load log says (the plan's
    rule where the log is silent; an output layer kept here by a tensor override is here
    whatever the log's device): per place ("local", then each server) its layers, the MiB of
    weights llama.cpp allocated there and, for a server, the link measured to it."""
    where = plan.layers()
    if len(log.layers) == len(where):
        index = {d.name: i for i, d in enumerate(devices)}
        where = [index.get(log.layers[il], -1) for il in range(len(where))]
    if output_here:
        where[-1] = -1
    rows = describe(where, devices)
    remote = {d.label: d.buffer for d in devices}
    endpoint = {d.label: d.endpoint for d in devices}
    for row in rows:
        if row["device"] == "local":
            mib = sum(v for k, v in log.buffers.items() if k not in remote.values())
        else:
            mib = log.buffers.get(remote[row["device"]], 0.0)
            link = (links or {}).get(endpoint[row["device"]])
            row["link"] = link.as_dict() if link else None
        row["weights_mib"] = round(mib, 1)
    return rows


def output_device(plan: Plan, devices: Sequence[Device]) -> Device | None:
    """The device llama.cpp gives the output layer (None: this machine)."""
    i = plan.layers()[-1]
    return devices[i] if i >= 0 else None
