"""localeft: emulated fine-tuning (EFT) of GGUF models through llama.cpp, offline.

The names below load on first use (PEP 562): `import localeft` alone, and the CLI when it only
talks to a running server (`--server`), start without llama.cpp or NumPy.

Every module that imports NumPy imports llama_cpp before it: CUDA builds crashed the other way
(tests/test_scripting.py checks the order).
"""

from .errors import (
    ContextOverflowError,
    InvalidParameterError,
    LocaleftError,
    ModelFileError,
    VocabMismatchError,
)
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
_ENGINE = ("Emulator", "Expert", "LoRA", "Generation", "Stats", "Stream")


def __getattr__(name: str):
    if name in _ENGINE or name == "SamplingParams":
        import llama_cpp  # noqa: F401  (before numpy, as in every module that imports both)

        from . import engine, sampling

        value = getattr(engine if name in _ENGINE else sampling, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'localeft' has no attribute {name!r}")
