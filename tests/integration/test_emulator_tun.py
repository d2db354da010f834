"""The WAN emulator's ``latency="tun"`` mode: every packet between centers pays rate and RTT.

Programs here dial ``emu.address(peer)`` directly (as gloo does), never a relay endpoint.
With 65000-byte TUN packets TCP goodput is within ~0.1% of the wire rate in headers.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from suanwang.runtime.wan.emulator import (
    DEFAULT_PREFIX,
    WanEmulator,
    cleanup_stale,
    emulator_available,
)
from suanwang.runtime.wan.relay import MODULE as RELAY_MODULE
from suanwang.runtime.wan.relay import read_line

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun (TUN driver)"),
]

_STATE_DIR = "/run/suanwang-wanemu"


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def tun3() -> Iterator[WanEmulator]:
    """a-b at 100 Mbit/s, a-c at 20 Mbit/s, both 40 ms; b and c are not linked."""
    ok, why = emulator_available()  # module fixtures come before the per-test skip rule
    if not ok:
        pytest.skip(f"WAN emulator unavailable: {why}")
    with WanEmulator(["a", "b", "c"], [("a", "b", 100, 40), ("a", "c", 20, 40)],
                     latency="tun") as emu:
        yield emu


def _direct_probe(emu: WanEmulator, src: str, dst: str, seconds: float, pings: int) -> dict:
    """The measuring probe in ``src`` dialing the sink at ``emu.address(dst)`` itself."""
    sink = emu.popen(dst, [sys.executable, "-m", RELAY_MODULE, "sink", "--host", emu.address(dst)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = json.loads(read_line(sink, timeout=30))["port"]
        probe = emu.popen(src, [sys.executable, "-m", RELAY_MODULE, "probe", "--host",
                                emu.address(dst), "--port", str(port), "--seconds", str(seconds),
                                "--pings", str(pings)], stdout=subprocess.PIPE)
        out, _ = probe.communicate(timeout=30)
        assert probe.returncode == 0, probe.returncode
        return json.loads(out)
    finally:
        sink.kill()
        sink.communicate()


def test_direct_dial_pays_the_rtt_and_link_bytes_count_it(tun3: WanEmulator) -> None:
    emu = tun3
    assert emu.endpoint("a", "b", 8000) == (emu.address("b"), 8000)  # nothing to relay
    before = emu.link_bytes()
    res = _direct_probe(emu, "a", "b", seconds=0.5, pings=10)
    after = emu.link_bytes()
    rtt = statistics.median(res["rtts_ms"])
    print(f"\ndirect dial a->b at 100 Mbit/s 40 ms: RTT median {rtt:.2f} ms "
          f"(min {min(res['rtts_ms']):.2f}, max {max(res['rtts_ms']):.2f})")
    assert abs(rtt - 40) <= 0.15 * 40, res["rtts_ms"]
    sent = 2 + 11 * 64 + res["sink_bytes"]  # two mode bytes, the pings, the bulk data
    ab = after["a->b"] - before["a->b"]
    ba = after["b->a"] - before["b->a"]
    print(f"link_bytes: a->b {ab} for {sent} payload bytes, b->a {ba}")
    assert sent <= ab <= sent * 1.01 + 20_000, (sent, ab)  # IP/TCP headers, handshakes
    assert ba <= 0.01 * ab, (ab, ba)  # the echoed pings, the report and ACKs
    assert after["a->c"] == before["a->c"] and after["c->a"] == before["c->a"]


def test_relay_mode_link_bytes_count_the_veths(wan) -> None:
    emu = wan(["a", "b"], [("a", "b", 100, 40)])  # latency="relay"
    before = emu.link_bytes()
    res = _direct_probe(emu, "a", "b", seconds=0.3, pings=2)  # undelayed, shaped
    after = emu.link_bytes()
    sent = 2 + 3 * 64 + res["sink_bytes"]
    ab = after["a->b"] - before["a->b"]
    ba = after["b->a"] - before["b->a"]
    assert sent <= ab <= sent * 1.06 + 20_000, (sent, ab)  # 1514-byte frames carry 1448
    assert ba <= 0.05 * ab, (ab, ba)


def test_unlinked_centers_cannot_reach_each_other(tun3: WanEmulator, dial) -> None:
    emu = tun3
    out = dial(emu, "b", "a", "c")
    assert out[0] == "refused" and out[1] != "refused", out
    with pytest.raises(KeyError, match="no link"):
        emu.endpoint("b", "c", 80)


def _goodput(emu: WanEmulator, dst: str, rate: float, tries: int = 3) -> list[dict]:
    """Measure a->dst until the rate is within 10%, at most ``tries`` times (a shared host's
    load can only slow a transfer, so the best of a few tries is what the emulator delivers).

    3 s, because the transfer is end to end: its ramp-up (the receiver's window starts at
    one 64 KB packet and grows per RTT) and the loss that ends it cost ~0.3 s at 40 ms, and
    over 1.5 s goodput reads ~89 Mbit/s where 3 s reads ~96.
    """
    runs = []
    for _ in range(tries):
        m = emu.measure("a", dst, seconds=3.0, pings=4)
        runs.append(m)
        print(f"\ntun {rate:g} Mbit/s 40 ms: goodput {m['rate_mbit']:.1f} Mbit/s, "
              f"RTT {m['rtt_ms']:.2f} ms")
        if 0.9 * rate <= m["rate_mbit"] <= 1.1 * rate:
            break
    return runs


def test_bulk_goodput_follows_the_link_rate(tun3: WanEmulator) -> None:
    why = f"host load average {os.getloadavg()} on {os.cpu_count()} CPUs"
    fast = _goodput(tun3, "b", 100)[-1]
    assert 90 <= fast["rate_mbit"] <= 102, (why, fast)
    assert abs(fast["rtt_ms"] - 40) <= 6, (why, fast)
    slow = _goodput(tun3, "c", 20)[-1]
    assert 18 <= slow["rate_mbit"] <= 20.4, (why, slow)


_GLOO_WORKER = textwrap.dedent("""
    import datetime, json, os, sys, time
    import torch
    import torch.distributed as dist
    rank, host, port, ifname = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.environ["GLOO_SOCKET_IFNAME"] = ifname  # bind to the center's address, not loopback
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=20))
    t = torch.ones(16)
    dist.all_reduce(t)  # warm-up: both ranks start the timed loop together
    ms = []
    for _ in range(7):
        t0 = time.perf_counter()
        dist.all_reduce(t)
        ms.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"ms": ms, "sum": t[0].item()}), flush=True)
    dist.destroy_process_group()
""")


def test_gloo_all_reduce_pays_the_rtt(wan) -> None:
    emu = wan(["a", "b"], [("a", "b", 100, 40)], latency="tun")
    # Fresh namespaces: nothing else listens in them, so any port is free.
    procs = [emu.popen(c, [sys.executable, "-c", _GLOO_WORKER, str(rank), emu.address("a"),
                           "29500", emu.interface(c)], stdout=subprocess.PIPE, text=True)
             for rank, c in enumerate(["a", "b"])]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, proc.returncode
        results.append(json.loads(out))
    for rank, res in enumerate(results):
        med = statistics.median(res["ms"])
        print(f"\ngloo all_reduce of 16 floats, rank {rank}: median {med:.1f} ms "
              f"over a 40 ms RTT ({[round(x, 1) for x in res['ms']]})")
        assert res["sum"] == 2 ** 8  # 8 all-reduces (sums) of ones over 2 ranks
        assert med >= 0.9 * 40, res["ms"]


def test_close_removes_namespaces_delayer_and_records() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with WanEmulator(["a", "b"], [("a", "b", 100, 20)], latency="tun") as emu:
            assert {emu.namespace("a"), emu.namespace("b")} <= _netns()
            delayer = emu._delayer.pid
            assert _running(delayer)
            assert os.path.exists(f"{_STATE_DIR}/{emu.prefix}.pid")
            sleeper = emu.popen("b", ["sleep", "60"])
            raise RuntimeError("boom")
    assert not [ns for ns in _netns() if ns.startswith(emu.prefix + "-")]
    assert not _running(delayer)
    assert sleeper.returncode is not None
    assert not os.path.exists(f"{_STATE_DIR}/{emu.prefix}.pid")
    assert not os.path.exists(f"{_STATE_DIR}/{emu.prefix}.lock")


_OWNER = textwrap.dedent("""
    import json, sys, time
    from suanwang.runtime.wan.emulator import WanEmulator
    emu = WanEmulator(["a", "b"], [("a", "b", 10, 10)], latency="tun").__enter__()
    print(json.dumps({"ns": [emu.namespace("a"), emu.namespace("b")],
                      "delayer": emu._delayer.pid, "prefix": emu.prefix}), flush=True)
    time.sleep(60)
""")


def test_cleanup_stale_stops_a_crashed_runs_delayer() -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line, f"owner exited ({owner.wait()})"
    info = json.loads(line)
    # Stopped, the delayer cannot notice its stdin closing: only cleanup_stale can end it.
    os.kill(info["delayer"], signal.SIGSTOP)
    owner.kill()
    owner.wait()
    owner.stdout.close()
    try:
        assert _running(info["delayer"])
        removed = cleanup_stale(DEFAULT_PREFIX)
        assert set(info["ns"]) <= set(removed), removed
        assert not _running(info["delayer"])
        assert not os.path.exists(f"{_STATE_DIR}/{info['prefix']}.pid")
    finally:  # whatever failed above, leave no stopped delayer behind
        if _running(info["delayer"]):
            os.kill(info["delayer"], signal.SIGKILL)
        cleanup_stale(DEFAULT_PREFIX)
