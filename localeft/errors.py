"""One exception hierarchy: every error a user can cause is a LocaleftError, one line long."""


class LocaleftError(Exception):
    """Base class of every error localeft raises on purpose."""


class ModelFileError(LocaleftError):
    """A model file is missing, unreadable, not GGUF, or failed to load."""


class VocabMismatchError(LocaleftError):
    """The models do not share one tokenizer."""


class ContextOverflowError(LocaleftError):
    """A prompt (or prompt plus generation) does not fit the context window."""


class InvalidParameterError(LocaleftError, ValueError):
    """A setting is out of range (beta, temperature, top_p, ...)."""


class ConfigError(LocaleftError):
    """models.toml or a user configuration is malformed or names an unknown preset."""


class DownloadError(LocaleftError):
    """A model could not be fetched from the Hugging Face Hub (offline, gated, missing)."""
