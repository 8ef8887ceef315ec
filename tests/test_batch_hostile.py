"""`generate --jsonl` against hostile input and a hostile output: a byte order mark, a file
that cannot be read, messages that are not objects, an output file that fills up."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import assert_one_line_error, invoke, trio

ROOT = Path(__file__).resolve().parent.parent


def localeft_process(*args, **kw) -> subprocess.CompletedProcess:
    """`python -m localeft ARGS` in a process of its own (its own limits, stdout, encoding)."""
    cmd = [sys.executable, "-m", "localeft", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, timeout=120, **kw)


def results(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_byte_order_mark_does_not_spoil_the_first_line(tiny, tmp_path):
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    lines = '{"prompt": "hello"}\r\n{"prompt": "again"}\r\n'
    plain.write_text(lines)
    marked.write_bytes(b"\xef\xbb\xbf" + lines.encode())
    here = [invoke("generate", *trio(tiny), "-n", "4", "--jsonl", p) for p in (plain, marked)]
    assert here[1].exit_code == 0, here[1].output
    strip = [
        [{k: v for k, v in d.items() if k != "stats"} for d in results(r.stdout)] for r in here
    ]
    assert strip[0] == strip[1] and len(strip[0]) == 2


def test_a_file_that_cannot_be_read_is_one_line(tiny, tmp_path):
    for path in (tmp_path / "missing.jsonl", tmp_path):
        r = invoke("generate", *trio(tiny), "--jsonl", path)
        assert_one_line_error(r, 1, f"cannot read --jsonl {path}")


def test_messages_must_be_objects_not_token_ids(tiny, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"messages": [1, 2]}\n{"messages": [{"role": "user", "content": "x"}, 3]}\n')
    r = invoke("generate", *trio(tiny), "-n", "2", "--jsonl", path)
    assert_one_line_error(r, 1, "2 of 2 lines")
    assert all("messages" in d["error"] for d in results(r.stdout))


def test_an_output_file_that_fills_up_ends_with_whole_lines(tiny, tmp_path):
    """A file size limit (as a full disk) cuts the output halfway through a line: the part
    written is removed, the lines before it are kept (also those already in a file appended
    to), and the error is one line."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    out.write_text('{"kept": true}\n')
    limit = 5000  # bytes: a few result lines of about a kilobyte each

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with open(out, "ab") as f:
        p = localeft_process(
            "generate",
            *trio(tiny),
            "-n",
            "4",
            "--jsonl",
            source,
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limited,
        )
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [
        "localeft: error: cannot write the output: File too large"
    ]
    data = out.read_bytes()
    assert data.endswith(b"\n") and len(data) < limit
    written = results(data.decode())
    assert written[0] == {"kept": True} and len(written) > 2
    assert [d["line"] for d in written[1:]] == list(range(1, len(written)))


def test_logit_bias_keys_are_token_ids_written_plainly(tiny, tmp_path):
    """JSON's keys are text: "5" is token 5, but Python's int() also reads "1_0" as 10, "٣"
    as 3 and " 1" as 1, and "1" and "01" as one token with two biases (the last silently
    won). Every door (a --jsonl line, the server, the Python API) refuses them now."""
    from localeft import request
    from localeft.errors import InvalidParameterError

    odd = [{"1_0": 1}, {"\u0663": 1}, {" 1": 1}, {"+1": 1}, {"1": 1, "01": -1}]
    for bias in odd:
        with pytest.raises(InvalidParameterError, match="logit_bias"):
            request.build("hi", logit_bias=bias)
    assert request.build("hi", logit_bias={"12": 1, 3: -2}).penalties.logit_bias == {12: 1, 3: -2}
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": "hi", "logit_bias": b}) + "\n" for b in odd))
    r = invoke("generate", *trio(tiny), "-n", "2", "--jsonl", path)
    assert_one_line_error(r, 1, f"{len(odd)} of {len(odd)} lines")
    errors = [d["error"] for d in results(r.stdout)]
    assert all("not a token id" in e or "twice" in e for e in errors), errors


def test_results_into_a_file_on_an_ascii_or_latin1_stdout_are_json_escapes(tiny, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "hi", "id": "caf\u00e9 \u2713"}) + "\n")
    outs = []
    for encoding in ("utf-8", "ascii", "latin-1"):
        out = tmp_path / f"{encoding}.jsonl"
        with open(out, "wb") as f:
            p = localeft_process(
                "generate",
                *trio(tiny),
                "-n",
                "3",
                "--jsonl",
                source,
                stdout=f,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONIOENCODING": encoding},
            )
        assert p.returncode == 0 and p.stderr == "", p.stderr
        outs.append(
            [{k: v for k, v in d.items() if k != "stats"} for d in results(out.read_text())]
        )
    assert outs[0][0]["id"] == "caf\u00e9 \u2713"
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("command", ["generate", "compare", "score"])
def test_json_on_a_stdout_that_cannot_write_the_text_is_escaped_not_a_traceback(
    tiny, tmp_path, command
):
    """--json on a Latin-1 or ASCII stdout: the same data, with JSON's \\u escapes."""
    args = ["--json", "-n", "3"] if command != "score" else ["--json"]
    texts = ["caf\u00e9 \u2713 \u65e5\u672c"] + ([" \u2713"] if command == "score" else [])
    outs = []
    for encoding in ("utf-8", "ascii", "latin-1"):
        p = localeft_process(
            command,
            *trio(tiny),
            *args,
            *texts,
            capture_output=True,
            env={**os.environ, "PYTHONIOENCODING": encoding},
        )
        assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr.decode()
        d = json.loads(p.stdout)
        assert any(ord(c) > 255 for c in json.dumps(d, ensure_ascii=False))  # Latin-1 can't
        outs.append(untimed(d))
    assert outs[0] == outs[1] == outs[2]


def untimed(d):
    """A result without its timings (they differ from run to run)."""
    if isinstance(d, dict):
        return {k: untimed(v) for k, v in d.items() if k != "stats"}
    if isinstance(d, list):
        return [untimed(v) for v in d]
    return d


def test_compare_and_eval_say_they_load_here_when_localeft_server_is_set(
    tiny, tmp_path, monkeypatch
):
    monkeypatch.setenv("LOCALEFT_SERVER", "http://127.0.0.1:9")
    r = invoke("compare", *trio(tiny), "-n", "2", "hi")
    assert r.exit_code == 0, r.output
    assert "LOCALEFT_SERVER is set, but `localeft compare` loads the models here" in r.stderr
    r = invoke("generate", *trio(tiny), "-n", "2", "--server", "", "hi")  # no server: no note
    assert "LOCALEFT_SERVER is set" not in r.stderr


def test_an_empty_batch_loads_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    missing = [f"--{r}" for r in ("large-base", "small-ft", "small-base")]
    args = [a for r in missing for a in (r, str(tmp_path / "none.gguf"))]
    r = invoke("generate", *args, "--jsonl", empty)
    assert r.exit_code == 0 and r.stdout == "", r.output
    assert "holds no lines" in r.stderr


def test_a_banned_token_is_strict_json_and_reads_back(tiny, tmp_path):
    """A -inf logit bias: JSON's numbers have no -Infinity (jq refuses it), so results write
    "-inf", and a --jsonl line takes it back."""

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text!r}"))

    r = invoke("generate", *trio(tiny), "--json", "-n", "4", "-l", "5-inf", "x")
    assert r.exit_code == 0, r.output
    d = strict(r.stdout)
    assert d["settings"]["logit_bias"] == {"5": "-inf"} and 5 not in d["tokens"]
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "x", "logit_bias": d["settings"]["logit_bias"]}))
    r = invoke("generate", *trio(tiny), "-n", "4", "--jsonl", source)
    assert r.exit_code == 0, r.output
    (line,) = [strict(x) for x in r.stdout.splitlines()]
    assert line["settings"]["logit_bias"] == {"5": "-inf"} and line["tokens"] == d["tokens"]
