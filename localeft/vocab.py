"""Do these models share one tokenizer? The shared id range, padding, or a clear error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import llama_cpp  # noqa: F401  (before numpy: see localeft/__init__.py)
import numpy as np

from .backend import Model
from .errors import VocabMismatchError


@dataclass(frozen=True)
class VocabCheck:
    """Outcome of comparing vocabularies: ids [0, n_shared) mean the same text in every model."""

    n_shared: int
    sizes: dict[str, int]
    # ids below n_shared that some model marks unused (padding): never generated
    unused: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def padded(self) -> bool:
        return len(set(self.sizes.values())) > 1


def _show(text: bytes) -> str:
    return repr(text.decode("utf-8", "replace"))


def check_vocabularies(models: Sequence[Model]) -> VocabCheck:
    """Compare token texts over the shared id range; extra ids of a larger vocabulary must be
    padding (never produced by the tokenizer, masked out of the combined distribution).

    Raises VocabMismatchError naming the first differing id and both token texts.
    """
    n_shared = min(m.n_vocab for m in models)
    first = models[0]
    for other in models[1:]:
        if other.path == first.path:
            continue
        # Token by token, keeping nothing: lists of 152k texts would cost ~8 MiB per model.
        for i in range(n_shared):
            a, b = first.token_text(i), other.token_text(i)
            if a != b:
                raise VocabMismatchError(
                    f"{first.path.name} and {other.path.name} do not share a tokenizer: token "
                    f"{i} is {_show(a)} in one and {_show(b)} in the other"
                )
    unused = np.unique(np.concatenate([m.unused_ids(n_shared) for m in models]))
    return VocabCheck(
        n_shared=n_shared, sizes={m.path.name: m.n_vocab for m in models}, unused=unused
    )
