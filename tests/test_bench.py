"""`localeft.bench` runs end to end on tiny models and reports every figure the issue asks for."""

import json

from localeft.bench import format_table, run


def test_bench_smoke_on_tiny_models(tiny):
    r = run(
        tiny.large_base, tiny.small_ft, tiny.small_base, n_tokens=4, reps=2, n_ctx=256, n_threads=1
    )
    json.dumps(r)  # JSON-ready
    assert set(r["ms_per_token"]) == {
        "eft",
        "eft_speculative",
        "large_base",
        "small_ft",
        "small_base",
    }
    assert all(v > 0 for v in r["ms_per_token"].values())
    assert r["ratios"]["eft_vs_sum_of_models"] > 0
    assert {"decode_base", "decode_ft", "decode_ref", "fetch_combine_sample"} <= set(
        r["eft_step_ms"]
    )
    assert r["combine_sample_ms_at_vocab"]["n_vocab"] == 576
    assert r["memory"]["peak_rss_bytes"] > r["memory"]["gguf_bytes"] > 0
    assert 0 <= r["speculative"]["acceptance_rate"] <= 1
    table = format_table(r)
    assert "eft_speculative" in table and "peak RSS" in table


def test_bench_command_prints_json_and_table(tiny):
    from click.testing import CliRunner

    from localeft.cli import cli

    paths = [
        "--large-base",
        str(tiny.large_base),
        "--small-ft",
        str(tiny.small_ft),
        "--small-base",
        str(tiny.small_base),
        "-c",
        "256",
        "-t",
        "1",
        "-n",
        "3",
        "--reps",
        "1",
    ]
    r = CliRunner().invoke(cli, ["bench", *paths, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ratios"]["eft_vs_sum_of_models"] > 0
    r = CliRunner().invoke(cli, ["bench", *paths, "--no-baselines", "--top-p", "0.9"])
    assert r.exit_code == 0, r.output
    assert "eft_speculative" in r.stdout and "large_base" not in r.stdout.split("\n\n")[1]
