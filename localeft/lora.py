"""LoRA adapters as models: `LoRA(model, adapter, scale)` names a model with one or more GGUF
LoRA adapters applied, and goes wherever a model path goes (a role of the trio, an expert's
ft or ref). The weights are loaded once per GGUF file: an adapted role is one more llama.cpp
context over the same model, with the adapters set on it (llama_set_adapters_lora).

Everything here runs before any weights load: which file is a model and which an adapter
(GGUF `general.type`), and whether an adapter fits its model (architecture, tensor names and
shapes, as llama.cpp will check them), each failure one line naming both files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import validate
from .errors import InvalidParameterError, ModelFileError
from .ggufinfo import Header

PathLike = str | os.PathLike


@dataclass(frozen=True, init=False)
class LoRA:
    """A model with LoRA adapters applied: `LoRA("base.gguf", "mine.gguf", scale=1.0)`, or
    several stacked: `LoRA("base.gguf", [("a.gguf", 1.0), ("b.gguf", 0.5)])` (a bare path in
    the list takes `scale`). Adapters are GGUF files, as llama.cpp's convert_lora_to_gguf.py
    writes them; scale 1 applies an adapter as trained (llama.cpp scales by alpha / rank)."""

    model: PathLike
    adapters: tuple[tuple[PathLike, float], ...]

    def __init__(self, model: PathLike, adapter, scale: float = 1.0):
        validate.path("LoRA model", model)
        scale = validate.weight("LoRA scale", scale)
        items = [adapter] if isinstance(adapter, (str, os.PathLike)) else adapter
        if isinstance(items, (bytes, tuple)) or not isinstance(items, Sequence) or not items:
            raise InvalidParameterError(
                "LoRA adapter must be a path or a non-empty list of paths or (path, scale) "
                f"pairs, got {adapter!r}"
            )
        adapters = []
        for i, item in enumerate(items):
            if isinstance(item, tuple) and len(item) == 2:
                path, s = item
                s = validate.weight(f"LoRA adapter {i} scale", s)
            else:
                path, s = item, scale
            adapters.append((validate.path(f"LoRA adapter {i}", path), s))
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "adapters", tuple(adapters))

    def __repr__(self) -> str:
        parts = ", ".join(f"({str(p)!r}, {s:g})" for p, s in self.adapters)
        return f"LoRA({str(self.model)!r}, [{parts}])"


@dataclass(frozen=True)
class Source:
    """Where a role's logits come from: a model file and the adapters on it (resolved paths,
    in order, with their scales). Two roles with equal sources share a context."""

    path: Path
    adapters: tuple[tuple[Path, float], ...] = ()

    def describe(self) -> str:
        """`/models/b.gguf + LoRA /adapters/mine.gguf (scale 1)` for check, -v and errors."""
        return " + ".join([str(self.path)] + [f"LoRA {p} (scale {s:g})" for p, s in self.adapters])


def checked(name: str, value) -> PathLike | LoRA:
    """A model argument: a path or a LoRA."""
    if isinstance(value, LoRA):
        return value
    return validate.path(name, value)


def source(value: PathLike | LoRA) -> Source:
    """The resolved Source of a checked model argument."""
    if isinstance(value, LoRA):
        return Source(_resolve(value.model), tuple((_resolve(p), s) for p, s in value.adapters))
    return Source(_resolve(value))


def _resolve(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_model(header: Header) -> None:
    """A file given as a model must not be an adapter."""
    if header.type == "adapter":
        raise ModelFileError(
            f"{header.path} is a LoRA adapter, not a model: apply it to its model "
            "(LoRA(model, adapter) in Python, --small-ft-lora or --expert-lora on the "
            "command line)"
        )


def check_adapter(model: Header, adapter: Header) -> None:
    """The adapter is a LoRA adapter GGUF for this model: its architecture, and every
    lora_a / lora_b pair names a tensor of the model with shapes that fit it (llama.cpp's own
    rules: A is (n_in, rank) and B (rank, n_out) in ggml order; token_embd's pair is flipped)."""
    a, m = adapter.path, model.path
    if adapter.type != "adapter":
        raise ModelFileError(
            f"{a} is a model, not a LoRA adapter (general.type is {adapter.type!r}); give it "
            "as a model, or convert the adapter with llama.cpp's convert_lora_to_gguf.py"
        )
    kind = adapter.get("adapter.type")
    if kind != "lora":
        raise ModelFileError(f"{a} is a {kind!r} adapter, not a LoRA adapter")
    if "adapter.alora.invocation_tokens" in adapter.metadata:
        raise ModelFileError(f"{a} is an activated LoRA (aLoRA): not supported")
    if adapter.architecture != model.architecture:
        raise ModelFileError(
            f"LoRA adapter {a} is for {adapter.architecture or 'an unknown architecture'} "
            f"models, but {m} is {model.architecture or 'of an unknown architecture'}"
        )
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in adapter.tensors.items():
        if name.endswith((".lora_a", ".lora_b")):
            pairs.setdefault(name[:-7], {})[name[-1]] = shape
        elif not name.endswith("_norm.weight"):  # llama.cpp skips norms; anything else fails
            raise ModelFileError(f"LoRA adapter {a}: unexpected tensor {name}")
    if not pairs:
        raise ModelFileError(f"LoRA adapter {a} has no LoRA tensors")
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            missing = "lora_b" if "a" in ab else "lora_a"
            raise ModelFileError(f"LoRA adapter {a}: {target} has no {missing} tensor")
        if target not in model.tensors:
            raise ModelFileError(
                f"LoRA adapter {a} adapts {target}, which {m} does not have "
                "(an adapter for another model?)"
            )
        w, lo_a, lo_b = model.tensors[target], ab["a"], ab["b"]
        if len(w) != 2 or len(lo_a) != 2 or len(lo_b) != 2:
            fits = False
        elif target.endswith("token_embd.weight"):
            fits = w[0] == lo_b[1] and w[1] == lo_a[1] and lo_a[0] == lo_b[0]
        else:
            fits = w[0] == lo_a[0] and w[1] == lo_b[1] and lo_a[1] == lo_b[0]
        if not fits:
            raise ModelFileError(
                f"LoRA adapter {a} does not fit {m}: {target} is {_shape(w)} but its "
                f"lora_a is {_shape(lo_a)} and lora_b {_shape(lo_b)} (an adapter for another "
                "model size?)"
            )


def _shape(ne: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in ne)


def summary(adapter: Header) -> str:
    """`rank 8, alpha 16, 168 tensors` for -v."""
    ranks = sorted({s[0] for n, s in adapter.tensors.items() if n.endswith(".lora_b") and s})
    alpha = adapter.get("adapter.lora.alpha")
    rank = "/".join(str(r) for r in ranks) or "?"
    alpha_text = f", alpha {alpha:g}" if isinstance(alpha, (int, float)) else ""
    return f"rank {rank}{alpha_text}, {len(adapter.tensors)} tensors"
