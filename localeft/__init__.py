"""localeft: emulated fine-tuning (EFT) of GGUF models through llama.cpp, offline."""

import llama_cpp  # noqa: F401  (first: CUDA builds crashed when numpy was imported before it)

from .engine import Emulator, Expert, Generation, LoRA, Stats, Stream
from .errors import (
    ContextOverflowError,
    InvalidParameterError,
    LocaleftError,
    ModelFileError,
    VocabMismatchError,
)
from .sampling import SamplingParams
from .tools import ToolCall

__version__ = "0.1.0"
__all__ = [
    "Emulator",
    "Expert",
    "LoRA",
    "Generation",
    "Stats",
    "Stream",
    "SamplingParams",
    "ToolCall",
    "LocaleftError",
    "ModelFileError",
    "VocabMismatchError",
    "ContextOverflowError",
    "InvalidParameterError",
    "__version__",
]
