"""Where the large base's output layer runs when its blocks are on RPC servers: kept here, a
hidden state crosses the network per token instead of the logits; `rpc_output="auto"` decides
from the link measured at connect and the layer's cost on this CPU.

Servers are real `localeft rpc-server` subprocesses on loopback; slow links are
tests/linkproxy.py in front of them (user-space delay and rate).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from hubcache import isolate
from linkproxy import LinkProxy
from rpcservers import tcp_counters, traffic, trio_kw

from localeft import Emulator, InvalidParameterError, outputcost, placement, rpclink
from localeft.cli import cli


def received_per_token(em: Emulator, ports: set[int]) -> float:
    """Bytes this process received from the servers per generated token (the large base alone,
    so that every token is one remote pass)."""
    before = tcp_counters(ports)
    g = em.generate("the cat sat on", max_tokens=24, mode="base", speculative=False)
    assert g.stats.generated_tokens == 24
    return traffic(before, tcp_counters(ports))[1] / 24


def test_the_output_layer_here_receives_a_hidden_state_instead_of_the_logits(tiny, servers):
    """The tiny base: n_vocab 576, n_embd 64. Per token the last server sends back the logits
    (576 x 4 B) with the output layer, the hidden state (64 x 4 B) without it: 2,048 B less,
    and the same log-probabilities to the last bit (tests/test_rpc.py checks them all)."""
    eps = [s.endpoint for s in servers]
    ports = {s.port for s in servers}
    got = {}
    for output in ("remote", "local"):
        with Emulator(**trio_kw(tiny, rpc=eps, rpc_output=output)) as em:
            got[output] = received_per_token(em, ports), em.logprobs("a dog is", beta=1.5)
    (remote, lp_remote), (local, lp_local) = got["remote"], got["local"]
    assert remote - local == pytest.approx((576 - 64) * 4, rel=0.02), (remote, local)
    assert np.array_equal(lp_remote, lp_local)


def test_auto_measures_the_link_and_keeps_the_output_here_when_the_logits_take_longer(
    tiny, servers, monkeypatch
):
    """Behind a 1 MB/s link with 5 ms each way, 2 KB more per token cost ~2 ms: the tiny layer
    (576 x 64 floats) takes microseconds here, so auto keeps it here; when the layer costs more
    here than the logits over the link, auto leaves it on its server."""
    eps = [s.endpoint for s in servers]
    host, port = servers[1].endpoint.split(":")
    with LinkProxy((host, int(port)), delay=0.005, rate=1e6) as slow:
        with Emulator(**trio_kw(tiny, rpc=[eps[0], slow.endpoint])) as em:
            choice = em.rpc_output_choice
            link = em.placement[2]["link"]
            assert choice["where"] == "local", choice
            assert choice["why"].startswith(f"auto: 2 KB more per token from {slow.endpoint}")
            assert em.placement[0]["layers"] == "input+output"
        assert 10 <= link["rtt_ms"] < 100 and 4 <= link["down_mbit_s"] <= 10, link
        monkeypatch.setattr(outputcost, "matvec_seconds", lambda layer, threads: 1.0)
        with Emulator(**trio_kw(tiny, rpc=[eps[0], slow.endpoint])) as em:
            assert em.rpc_output_choice["where"] == "remote"
            assert "the layer takes 1000.0 ms here" in em.rpc_output_choice["why"]
            assert em.placement[2]["layers"] == "2+output"


def test_a_base_that_only_waits_here_decodes_beside_the_small_models_unmeasured(tiny, servers):
    """With every layer remote, the base's decode here is a wait for the servers: the small
    models run meanwhile (overlap) without the probe that compares CPU layouts. With the output
    layer here the base computes again, and the probe decides."""
    eps = [s.endpoint for s in servers]
    with Emulator(**trio_kw(tiny, rpc=eps, rpc_output="remote", n_threads=2)) as em:
        em.generate("the cat", max_tokens=12, speculative=False)
        assert em.overlap and em.group.layout_probe is None
    with Emulator(**trio_kw(tiny, rpc=eps, rpc_output="local", n_threads=2)) as em:
        em.generate("the cat", max_tokens=12, speculative=False)
        assert set(em.group.layout_probe) == {"overlap", "sequential"}


def test_output_choice_rule():
    link = rpclink.Link(rtt=0.002, down=25e6)  # 200 Mbit/s
    saved = (152064 - 3584) * 4  # a Qwen2.5-7B: logits minus hidden state, per token
    slow_cpu = placement.output_here("auto", "s:1", link, saved, local_seconds=0.030)
    fast_cpu = placement.output_here("auto", "s:1", link, saved, local_seconds=0.020)
    assert not slow_cpu.here and fast_cpu.here  # 594 KB take 23.8 ms at 200 Mbit/s
    assert "594 KB more per token from s:1 take 23.8 ms" in fast_cpu.why
    assert placement.output_here("local", "s:1", None, saved, None).here
    assert not placement.output_here("remote", "s:1", link, saved, 0.0).here
    unknown = placement.output_here("auto", "s:1", None, saved, None)
    assert not unknown.here and "could not be measured" in unknown.why


def test_bad_rpc_output_is_refused_before_anything_loads(tiny, tmp_path, monkeypatch):
    with pytest.raises(InvalidParameterError, match="rpc_output must be one of auto, local"):
        Emulator(**trio_kw(tiny, rpc=["127.0.0.1:1"], rpc_output="here"))
    isolate(tmp_path, monkeypatch)
    args = ["generate", "--large-base", str(tiny.large_base), "--rpc-output", "here", "hi"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "'here' is not one of 'auto', 'local', 'remote'" in r.output


@pytest.mark.parametrize("option", [["--rpc-output", "local"], ["--rpc-timeout", "5"]])
def test_an_rpc_option_without_rpc_is_refused_as_rpc_split_is(tiny, tmp_path, monkeypatch, option):
    """It had no effect without --rpc and said nothing (--rpc-split was refused already)."""
    isolate(tmp_path, monkeypatch)
    trio = ["--large-base", tiny.large_base, "--small-ft", tiny.small_ft]
    trio += ["--small-base", tiny.small_base, "-c", "256", "-n", "2"]
    r = CliRunner().invoke(cli, ["generate", *map(str, trio), *option, "hi"])
    assert r.exit_code == 2 and f"{option[0]} needs --rpc" in r.output, r.output


def test_the_link_measurement_sees_the_delay_and_the_rate(servers):
    host, port = servers[0].endpoint.split(":")
    with LinkProxy((host, int(port)), delay=0.01, rate=4e6) as slow:
        link = rpclink.measure(slow.endpoint)
    assert 0.02 <= link.rtt < 0.1 and 2.4e6 <= link.down <= 4.4e6, link
    assert rpclink.measure(servers[0].endpoint).rtt < 0.02  # loopback itself
    with pytest.raises(rpclink.LinkError):
        rpclink.measure("127.0.0.1:1")


def test_a_remote_base_with_its_output_layer_here_keeps_a_thread_of_its_own():
    """The base's thread waits for the servers, then computes the output layer in a burst: it
    gets a share of the cores, and the small models keep all of them (even on one core, where a
    local base would have no overlap at all)."""
    from localeft.ensemble import step_threads

    sizes = [447 << 20, 670 << 20, 670 << 20]  # the 7B's Q6_K output layer, two 0.5B Q8_0
    assert step_threads(sizes, 8, enabled=True, waits=True) == [2, 8, 8]
    assert step_threads(sizes, 1, enabled=True, waits=True) == [1, 1, 1]
    assert step_threads(sizes, 1, enabled=True) is None
