"""One exception hierarchy: every error a user can cause is a LocaleftError, one line long."""


class LocaleftError(Exception):
    """Base class of every error localeft raises on purpose."""


class ModelFileError(LocaleftError):
    """A model file is missing, unreadable, not GGUF, or failed to load."""


class VocabMismatchError(LocaleftError):
    """The models do not share one tokenizer."""


class ContextOverflowError(LocaleftError):
    """A prompt (or prompt plus generation) does not fit the context window. `tokens` and
    `n_ctx` say by how much, for callers that phrase their own advice (the CLI names -c);
    `at_least`: `tokens` is a lower bound (a prompt refused before it was tokenized)."""

    def __init__(
        self,
        message: str,
        *,
        tokens: int | None = None,
        n_ctx: int | None = None,
        at_least: bool = False,
    ):
        super().__init__(message)
        self.tokens, self.n_ctx, self.at_least = tokens, n_ctx, at_least


class InvalidParameterError(LocaleftError, ValueError):
    """A setting is out of range (beta, temperature, top_p, ...). `param` names the setting at
    fault where one is (the server's 400s say it in OpenAI's `param` field)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class ClosedError(LocaleftError):
    """The Emulator was closed; its models are gone."""


class ConfigError(LocaleftError):
    """models.toml or a user configuration is malformed or names an unknown preset."""


class DownloadError(LocaleftError):
    """A model could not be fetched from the Hugging Face Hub (offline, gated, missing)."""


class InsufficientMemoryError(LocaleftError):
    """The models and their KV caches would not fit the memory this machine has free."""


class RpcError(LocaleftError):
    """An RPC server (llama.cpp's rpc-server, `localeft rpc-server`) is unreachable, foreign,
    busy or cannot hold its share of the layers."""


class EngineUnavailable(RpcError):
    """`localeft serve`'s engine process is gone (an RPC server died or froze, which ends the
    process that holds its connection) and is restarting: `retry_after` seconds until the next
    try, where known."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class LocaleftWarning(UserWarning):
    """A setting that works but is probably not what the user wants (the CLI prints one line)."""


class ServerError(LocaleftError):
    """The `localeft serve` a client (`--server URL`) talks to is unreachable, is not a localeft
    server, refuses the request, or serves other models than the ones asked for."""
