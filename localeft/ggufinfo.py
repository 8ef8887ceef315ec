"""A GGUF file's header without its weights: metadata values and tensor shapes, read in pure
Python before llama.cpp touches the file (what a LoRA adapter is checked against, and how a
model and an adapter are told apart). Array values are skipped, not decoded: a tokenizer's
150k strings cost a loop over their lengths (~0.1 s), nothing more.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Header:
    """Metadata (scalars and strings; arrays as None) and tensor shapes (ggml's ne order:
    the row length first)."""

    path: Path
    metadata: dict[str, object]
    tensors: dict[str, tuple[int, ...]]

    def get(self, key: str) -> object:
        return self.metadata.get(key)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def type(self) -> str:
        """general.type: "adapter" for adapters; models say "model" or nothing."""
        value = self.metadata.get("general.type")
        return value if isinstance(value, str) else "model"


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf, self.at, self.path = buf, 0, path

    def take(self, fmt: str):
        try:
            value = struct.unpack_from(fmt, self.buf, self.at)[0]
        except struct.error:
            raise ModelFileError(f"{self.path} is truncated (its GGUF header ends early)") from None
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.at + n > len(self.buf):
            raise ModelFileError(f"{self.path} is truncated (its GGUF header ends early)")
        raw = bytes(self.buf[self.at : self.at + n])
        self.at += n
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.take("<Q")
        self.at += n

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, n = self.take("<I"), self.take("<Q")
            if inner in _SCALARS:
                size = n * struct.calcsize(_SCALARS[inner])
                self.at += size
            elif inner == _STRING:
                for _ in range(n):
                    self.skip_string()
            else:  # nested arrays: rare; walk them
                for _ in range(n):
                    self.value(inner)
            return None
        raise ModelFileError(f"{self.path}: unknown GGUF value type {kind} (corrupt file?)")


def read_header(path: str | Path) -> Header:
    """The header of a GGUF file (ModelFileError for anything that is not a readable GGUF)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if path.stat().st_size < 24:
                raise ModelFileError(f"{path} is not a GGUF file (too short)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None


def _parse(buf, path: Path) -> Header:
    r = _Reader(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file (bad magic {bytes(buf[:4])!r})")
    r.at = 4
    version = r.take("<I")
    if version < 2:
        raise ModelFileError(f"{path} is GGUF version {version}, too old for llama.cpp")
    n_tensors, n_kv = r.take("<Q"), r.take("<Q")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.take("<I"))
    tensors: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("<I")
        if n_dims > 8:
            raise ModelFileError(f"{path}: tensor {name} has {n_dims} dimensions (corrupt file?)")
        tensors[name] = tuple(r.take("<Q") for _ in range(n_dims))
        r.take("<I")  # element type
        r.take("<Q")  # data offset
    return Header(path, metadata, tensors)
