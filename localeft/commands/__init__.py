"""The commands of the `localeft` CLI, one module per family; `localeft/cli.py` assembles them.

| module | commands |
|---|---|
| `options.py` | (shared) option sets, `open_emulator`, request settings from options, `Failure` |
| `generate.py` | generate, compare |
| `chat.py` | chat (the REPL itself is localeft/repl.py) |
| `scoring.py` | score, eval |
| `models.py` | pull, models, check |
| `bench.py` | bench |
| `serving.py` | serve, rpc-server |
"""
