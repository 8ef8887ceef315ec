"""`localeft serve` (the OpenAI-compatible server) and `localeft rpc-server` (lend this machine's
backend to another's large base)."""

from __future__ import annotations

import os
import sys
import warnings

import click

from .. import rpc, rpcgate, rpcserver
from ..errors import LocaleftWarning
from ..terminal import BETA
from ..terminal import placement_line
from .options import MODEL_OPTIONS, Failure, emulator_kwargs, open_emulator, opt


@click.command()
@MODEL_OPTIONS
@opt("--beta", type=BETA, help="Beta of requests that give none (default: preset's, else 1).")
@opt("--host", default="127.0.0.1", show_default=True, help="Address to bind (this machine only).")
@opt("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@opt(
    "--api-key",
    envvar="LOCALEFT_API_KEY",
    metavar="KEY",
    help="Require 'Authorization: Bearer KEY' on /v1 (also from $LOCALEFT_API_KEY).",
)
@opt(
    "--queue",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Requests that may wait behind the running one; beyond: 503 with Retry-After.",
)
@opt("--model-name", default="localeft", show_default=True, help="The model id the API reports.")
@opt("-v", "--verbose", is_flag=True, help="Log every request.")
def serve(host, port, api_key, queue, model_name, verbose, **o):
    """Serve EFT behind OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models) with
    a chat page at /. One request runs at a time; others wait in line (--queue).

    \b
    Examples:
      localeft serve --preset qwen2.5-7b
      localeft serve --large-base big.gguf --small-ft ft.gguf --small-base base.gguf --port 8000
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"messages": [{"role": "user", "content": "Hi"}], "beta": 1.5}'
    """
    if api_key == "":
        raise click.BadParameter(
            "must not be empty (leave it out to serve without one)", param_hint="--api-key"
        )
    if api_key and not (api_key.isascii() and api_key.isprintable() and api_key == api_key.strip()):
        raise click.BadParameter(  # no client could send it: it travels in an HTTP header
            "must be printable ASCII text without surrounding spaces", param_hint="--api-key"
        )
    from .. import server

    absent = server.missing()
    if absent:
        raise Failure(f"localeft serve needs {absent}: {server.INSTALL}")
    if not server.is_loopback(host) and not api_key:
        warnings.warn(
            f"serving on {host} without --api-key: anyone who can reach this port can use "
            "the models",
            LocaleftWarning,
            stacklevel=1,
        )
    em, settings = _engine(o)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"  # IPv6: [::1]
    with em:
        click.echo(
            f"localeft: serving {model_name} on {url}/ (chat page), API at {url}/v1; Ctrl-C stops",
            err=True,
        )
        server.serve(
            em,
            host=host,
            port=port,
            model=model_name,
            api_key=api_key,
            queue=queue,
            log_level="info" if verbose else "warning",
            defaults=settings,
        )


def _engine(o: dict) -> tuple:
    """With --rpc, the Emulator runs in a supervised worker process (server/supervisor.py):
    when an RPC server dies or freezes, llama.cpp ends that process, not the server, which
    answers 503 meanwhile and restarts it. Without, in this process."""
    if not o["rpc"]:
        return open_emulator(o)
    from ..server.supervisor import RemoteEmulator, Supervisor

    kwargs, settings = emulator_kwargs(o)
    supervisor = Supervisor(kwargs)
    supervisor.start()
    em = RemoteEmulator(supervisor)
    if o.get("verbose") and em.placement:
        click.echo(placement_line(em.placement, em.rpc_output_choice), err=True)
    return em, settings


@click.command("rpc-server")
@opt("--host", default="127.0.0.1", show_default=True, help="IPv4 address to listen on.")
@opt(
    "--port",
    type=click.IntRange(1, 65535),
    default=rpc.DEFAULT_PORT,
    show_default=True,
    help="TCP port to listen on.",
)
@opt("-t", "--threads", type=click.IntRange(min=1), help="CPU threads (default: all).")
@opt(
    "--cache",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Keep received weights in DIR (by hash): reloading a model skips sending them again.",
)
@opt(
    "--trusted-network",
    is_flag=True,
    help="Allow a --host other machines can reach (the protocol has no authentication).",
)
@opt(
    "--hello-timeout",
    type=click.FloatRange(min=0.1),
    default=rpcgate.HELLO_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Drop a connection that has not sent its handshake in this time.",
)
@opt(
    "--stall-timeout",
    type=click.FloatRange(min=0.1),
    default=rpcgate.STALL_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Drop a client whose message stops halfway for this long (idle between messages is fine).",
)
def rpc_server(host, port, threads, cache, trusted_network, hello_timeout, stall_timeout):
    """Lend this machine's backend (its GPU when llama.cpp was built with one, else the CPU) to
    a localeft on another machine, which puts layers of its large base here with --rpc
    HOST:PORT: the weights and their KV cache live here, only activations cross the network.
    One client at a time; a connection that does not finish its handshake, or stops halfway
    through a message, is dropped so the next client is served. Ctrl-C stops it. Listens on
    loopback unless told otherwise.

    \b
    Examples:
      localeft rpc-server                                  # 127.0.0.1:50052, for tests
      localeft rpc-server --host 192.168.1.20 --trusted-network --cache ~/.cache/localeft/rpc
      # then, on the machine with the small models:
      localeft chat --preset llama3.1-8b --rpc 192.168.1.20:50052
    """
    import socket

    rpc.require()
    try:
        address = socket.gethostbyname(host)  # llama.cpp's server wants an IPv4 address
    except (OSError, UnicodeError):
        raise Failure(f"cannot listen on {host!r}: not an IPv4 address or a known name") from None
    if not rpcserver.is_loopback(address):
        if not trusted_network:
            raise Failure(
                f"--host {host} can be reached from other machines, and llama.cpp's RPC protocol "
                "has no authentication; add --trusted-network if only machines you trust can "
                "reach it"
            )
        click.echo(
            f"localeft: warning: anyone who can reach {address}:{port} can use this machine's "
            "memory and compute and read what it computes (llama.cpp's RPC protocol has no "
            "authentication or encryption): use it only on a trusted network",
            err=True,
        )
    try:  # fail here, in plain words
        sock = rpcserver.listen(address, port)
    except OSError as e:
        raise Failure(f"cannot listen on {address}:{port}: {e.strerror or e}") from None
    if cache:
        cache = os.path.expanduser(cache)
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as e:
            raise Failure(f"cannot create the cache directory {cache}: {e.strerror}") from None
    from ..native import default_threads

    n = threads or default_threads()
    what = "; ".join(rpcserver.describe_devices(rpcserver.serving_devices()))
    click.echo(
        f"localeft rpc-server: lending {what} on {address}:{port} ({n} thread{'s' * (n != 1)}); "
        "one client at a time, Ctrl-C stops it"
    )
    sys.stdout.flush()
    why = rpcserver.serve(sock, n, cache, hello_timeout, stall_timeout)
    if why != "signal":
        raise Failure(why)
    click.echo("localeft rpc-server: stopped")
    sys.stdout.flush()
    sys.stderr.flush()
    # llama.cpp's server thread is still inside accept() or a computation: leave without running
    # the interpreter's and llama.cpp's teardown under its feet.
    os._exit(0)
