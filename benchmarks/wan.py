"""WAN-plane benchmark: gateway transport goodput, on loopback and on emulated WAN links.

``suanwang bench wan [--quick] [--json PATH] [--size-mib N]`` measures, with every gateway
in its own process (:mod:`suanwang.benchmarks.wan_peer`), and each figure beside a baseline
measured in the same run:

* ``loopback``: one payload streamed gateway to gateway over 127.0.0.1, from the first byte
  to the acknowledgement the receiver sends after full validation (CRC per chunk, size and
  shape, decode, finiteness); baseline: a plain TCP socket carrying the same bytes between
  the same two processes.
* ``shaped``: the same on emulated links (:class:`~suanwang.runtime.wan.emulator.WanEmulator`),
  100 Mbit/s at 40 ms and 1 Gbit/s at 10 ms; baseline: the link's rate and RTT as the
  emulator measures them (bulk TCP through the same relay) just before the transfer.
  ``efficiency`` = goodput / measured rate; the target is >= 0.9.
* ``ring_vs_star``: four centers on a full mesh of emulated links reduce one dense payload
  by a star (everyone to one leader, the mean back; the baseline) and by the gateway's ring
  and two-shot schedules; wall time, bytes per link as counted by the transports and as
  counted by the kernel on each shaped interface, and the bytes per center against
  ``2 (n - 1) / n``.

Each transfer is also split, from timestamps the two processes take on the host-wide
monotonic clock, into ``open_s`` (send called -> receiver's handler entered), ``stream_s``
(-> last chunk assembled), ``validate_s`` (-> the gateway accepted the payload) and
``ack_s`` (-> the sender holds the ack), so that a shortfall can be placed: the transport's
streaming (``stream_efficiency``) or the gateway's work after the last byte. Each peer runs
its validation once on a local payload before timing (one-time costs of a fresh process)
and uses one torch thread, as a gateway actor does (``num_cpus=1``).

The shaped parts need root (network namespaces, ``tc``); without it they are skipped with
the reason. MB are 10^6 bytes, MiB 2^20, Mbit 10^6 bits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from suanwang.benchmarks.common import close_pipes, reap
from suanwang.benchmarks.wan_peer import MODULE as PEER_MODULE
from suanwang.runtime.wan.emulator import WanEmulator, emulator_available
from suanwang.runtime.wan.relay import EmulatorError, read_line

MiB = 2**20
TARGET_EFFICIENCY = 0.9
# (rate_mbit, rtt_ms, payload MiB, payload MiB under --quick)
SHAPED_LINKS = [(100, 40, 64, 8), (1000, 10, 256, 32)]
RING_CENTERS = ["a", "b", "c", "d"]
RING_LINK = (100, 40)
PARTS = frozenset({"loopback", "shaped", "ring"})


class BenchError(RuntimeError):
    """A peer failed or a transfer did not complete."""


# ---------------------------------------------------------------------- peer processes
class PeerProc:
    """A running :mod:`~suanwang.benchmarks.wan_peer` and its JSON-lines conversation.

    Args:
        proc: the started process (stdin/stdout pipes, stderr to ``log``).
        center: its center name.
        log: file receiving its stderr (shown when it fails).
    """

    def __init__(self, proc: subprocess.Popen, center: str, log: Any):
        self.proc = proc
        self.center = center
        self.log = log
        self.address = ""

    def ready(self, timeout: float = 90.0) -> None:
        """Wait for the peer's first line: its gateway's address."""
        self.address = self.answer(timeout)["address"]

    def answer(self, timeout: float = 120.0) -> dict[str, Any]:
        """The reply to the oldest unanswered request.

        Raises:
            BenchError: the peer reported an error, exited, or said nothing in ``timeout`` s.
        """
        try:
            reply = json.loads(read_line(self.proc, timeout))
        except EmulatorError as err:
            raise BenchError(f"peer {self.center}: {err}{self._stderr()}") from None
        if not reply.get("ok"):
            raise BenchError(f"peer {self.center}: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def _stderr(self) -> str:
        try:
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace")[-2000:]
        except OSError:
            return ""
        return f"\n--- its stderr ---\n{tail}" if tail.strip() else ""

    def ask(self, op: str, **fields: Any) -> None:
        """Send a request without waiting for the reply (see :meth:`answer`)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise BenchError(f"peer {self.center}: {err}{self._stderr()}") from None

    def call(self, op: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
        self.ask(op, **fields)
        return self.answer(timeout)

    def hang_up(self) -> None:
        """Close the pipes: the peer closes its gateway and exits."""
        close_pipes(self.proc)

    def stop(self) -> None:
        """Hang up, wait for the exit, then TERM, then KILL; always reaps."""
        self.hang_up()
        reap(self.proc, wait_s=10)
        self.log.close()


class Peers:
    """Starts peers (directly or inside an emulator's namespaces) and stops them all."""

    def __init__(self, emu: WanEmulator | None = None, chunk_bytes: int | None = None):
        self.emu = emu
        self.chunk_bytes = chunk_bytes
        self.started: list[PeerProc] = []

    def __enter__(self) -> "Peers":
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.started:  # all exit at once, then each is reaped
            p.hang_up()
        for p in self.started:
            p.stop()

    def start(self, centers: Sequence[str], numel: int, seeds: dict[str, int], host: Callable[[str], str]) -> dict[str, PeerProc]:
        """Start one gateway per center, each knowing the others as peers; all start in
        parallel (each interpreter takes seconds to import torch and grpc)."""
        procs = {}
        for c in centers:
            argv = [sys.executable, "-m", PEER_MODULE, "--center", c,
                    "--peers", ",".join(p for p in centers if p != c),
                    "--numel", str(numel), "--seed", str(seeds[c]), "--host", host(c)]
            if self.chunk_bytes:
                argv += ["--chunk-bytes", str(self.chunk_bytes)]
            log = tempfile.NamedTemporaryFile("w+", prefix=f"wan-peer-{c}-", suffix=".log")
            kw: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            try:
                proc = self.emu.popen(c, argv, **kw) if self.emu else subprocess.Popen(argv, **kw)
            except BaseException:
                log.close()
                raise
            procs[c] = PeerProc(proc, c, log)
            self.started.append(procs[c])
        for p in procs.values():
            p.ready()
        return procs


def _one_transfer(src: PeerProc, dst: PeerProc, round: int, timeout_s: float) -> dict[str, Any]:
    """Stream ``src``'s payload to ``dst``; check it arrived bit-exact."""
    rep = src.call("send", timeout=timeout_s + 30, to=[dst.center], round=round, timeout_s=timeout_s)
    res = rep["results"][dst.center]
    if res["error"]:
        raise BenchError(f"{src.center} -> {dst.center}: {res['error']}")
    took = dst.call("take", round=round, sender=src.center)
    if took["digest"] != src.call("digest")["digest"]:
        raise BenchError(f"{src.center} -> {dst.center}: the payload arrived altered")
    t = took["timing"]
    return {
        "payload_bytes": rep["payload_bytes"],
        "bytes_sent": res["bytes_sent"],
        "seconds": res["seconds"],
        # where the time went (receiver's clock marks; CLOCK_MONOTONIC is host-wide)
        "open_s": t["opened"] - rep["started"],
        "stream_s": t["received"] - t["opened"],
        "validate_s": t["validated"] - t["received"],
        "ack_s": rep["acked"] - t["validated"],
    }


# ---------------------------------------------------------------------- loopback
def run_loopback(size_mib: float, repeats: int, chunk_bytes: int | None) -> dict[str, Any]:
    numel = int(size_mib * MiB) // 4
    with Peers(chunk_bytes=chunk_bytes) as peers:
        procs = peers.start(["a", "b"], numel, {"a": 1, "b": 2}, lambda c: "127.0.0.1")
        a, b = procs["a"], procs["b"]
        a.call("connect", peers={"b": b.address})
        runs, raw_s = [], []
        for r in range(repeats):
            runs.append(_one_transfer(a, b, r, timeout_s=600))
            port = b.call("raw_listen", nbytes=runs[-1]["payload_bytes"])["port"]
            raw_s.append(a.call("raw_send", timeout=600, host="127.0.0.1", port=port)["seconds"])
    med = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
    nbytes = med["payload_bytes"]
    goodput = nbytes / 1e6 / med["seconds"]
    raw = nbytes / 1e6 / statistics.median(raw_s)
    return {
        "payload_bytes": nbytes,
        "grpc_bytes": med["bytes_sent"],
        "seconds": [r["seconds"] for r in runs],
        "raw_seconds": raw_s,
        "goodput_MBps": goodput,
        "raw_socket_MBps": raw,
        "ratio": goodput / raw,
        "stream_s": med["stream_s"],
        "validate_s": med["validate_s"],
        "stream_MBps": nbytes / 1e6 / med["stream_s"],
        "runs": runs,
    }


# ---------------------------------------------------------------------- emulated links
def _kernel_bytes(emu: WanEmulator) -> dict[str, int]:
    """Bytes each center's shaped interfaces sent, per ``src->dst`` (tc's own counters)."""
    owner = {emu.address(c): c for c in emu.centers}
    out: dict[str, int] = {}
    for c in emu.centers:
        ns = emu.namespace(c)
        addrs = json.loads(subprocess.run(["ip", "-j", "-n", ns, "addr", "show"], capture_output=True,
                                          text=True, check=True).stdout)
        dev_peer = {}
        for dev in addrs:
            for a in dev.get("addr_info", []):
                if a.get("address") in owner and a.get("local") == emu.address(c):
                    dev_peer[dev["ifname"]] = owner[a["address"]]
        qd = json.loads(subprocess.run(["tc", "-s", "-j", "-n", ns, "qdisc", "show"], capture_output=True,
                                       text=True, check=True).stdout)
        for q in qd:
            if q.get("kind") == "tbf" and q.get("dev") in dev_peer:
                out[f"{c}->{dev_peer[q['dev']]}"] = int(q["bytes"])
    return out


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items())}


def _gateway_mesh(emu: WanEmulator, peers: Peers, numel: int, seeds: dict[str, int]) -> dict[str, PeerProc]:
    """Start one gateway per center and connect every pair through the emulator's relays."""
    procs = peers.start(emu.centers, numel, seeds, emu.address)
    for c, p in procs.items():
        route = {}
        for other, q in procs.items():
            if other != c:
                host, port = emu.endpoint(c, other, int(q.address.rsplit(":", 1)[1]))
                route[other] = f"{host}:{port}"
        p.ask("connect", peers=route)
    for p in procs.values():
        p.answer(60)
    return procs


def run_shaped(quick: bool, repeats: int, chunk_bytes: int | None) -> list[dict[str, Any]]:
    out = []
    for rate, rtt, mib, quick_mib in SHAPED_LINKS:
        mib = quick_mib if quick else mib
        with WanEmulator(["a", "b"], [("a", "b", rate, rtt)]) as emu, Peers(emu, chunk_bytes) as peers:
            procs = _gateway_mesh(emu, peers, mib * MiB // 4, {"a": 1, "b": 2})
            m = emu.measure("a", "b", seconds=1.0 if quick else 2.0)
            runs = []
            for r in range(repeats):
                before = _kernel_bytes(emu)
                runs.append(_one_transfer(procs["a"], procs["b"], r, timeout_s=600))
                runs[-1]["kernel_bytes"] = _delta(_kernel_bytes(emu), before)["a->b"]
            namespaces = [emu.namespace(c) for c in emu.centers]
        med = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
        nbytes = med["payload_bytes"]
        goodput = nbytes * 8 / 1e6 / med["seconds"]
        stream = nbytes * 8 / 1e6 / med["stream_s"]
        out.append({
            "rate_mbit": rate,
            "rtt_ms": rtt,
            "measured_rate_mbit": m["rate_mbit"],
            "measured_rtt_ms": m["rtt_ms"],
            "payload_bytes": nbytes,
            "grpc_bytes": med["bytes_sent"],
            "kernel_bytes": med["kernel_bytes"],
            "seconds": [r["seconds"] for r in runs],
            "goodput_mbit": goodput,
            "efficiency": goodput / m["rate_mbit"],
            "target": TARGET_EFFICIENCY,
            "met": goodput / m["rate_mbit"] >= TARGET_EFFICIENCY,
            # breakdown of the median run: stream = first chunk in -> last chunk in at the
            # receiver; validate = last chunk in -> payload accepted (decode, finiteness)
            "open_s": med["open_s"],
            "stream_s": med["stream_s"],
            "validate_s": med["validate_s"],
            "ack_s": med["ack_s"],
            "stream_goodput_mbit": stream,
            "stream_efficiency": stream / m["rate_mbit"],
            "runs": runs,
            "namespaces": namespaces,
        })
    return out


def _received(procs: dict[str, PeerProc]) -> dict[str, int]:
    """Bytes each transport counted on arrival, per ``src->dst``."""
    out = {}
    for c, p in procs.items():
        for src, n in p.call("stats")["bytes_received"].items():
            out[f"{src}->{c}"] = n
    return out


def _reduce_once(procs: dict[str, PeerProc], op: str, round: int, seeds: dict[str, int], **extra: Any) -> dict[str, Any]:
    start_at = time.monotonic() + 0.5
    for p in procs.values():
        p.ask(op, round=round, seeds=seeds, start_at=start_at, timeout_s=300, **extra)
    reps = {c: p.answer(400) for c, p in procs.items()}
    if len({r["digest"] for r in reps.values()}) != 1:
        raise BenchError(f"{op}: the centers ended with different means")
    return {
        "wall_s": max(r["t_end"] for r in reps.values()) - start_at,
        "bytes_per_link": {f"{c}->{p}": n for c, r in sorted(reps.items()) for p, n in sorted(r["bytes_sent"].items())},
        "max_abs_err": max(r["max_abs_err"] for r in reps.values()),
    }


def run_ring_vs_star(quick: bool, chunk_bytes: int | None) -> dict[str, Any]:
    mib = 4 if quick else 16
    rate, rtt = RING_LINK
    names = RING_CENTERS
    links = [(a, b, rate, rtt) for i, a in enumerate(names) for b in names[i + 1:]]
    seeds = {c: i + 1 for i, c in enumerate(names)}
    with WanEmulator(names, links) as emu, Peers(emu, chunk_bytes) as peers:
        procs = _gateway_mesh(emu, peers, mib * MiB // 4, seeds)
        pairs = [(names[0], names[1])] if quick else [(names[0], names[1]), (names[2], names[3])]
        measured = [emu.measure(a, b, seconds=1.0 if quick else 2.0) for a, b in pairs]
        k0, r0 = _kernel_bytes(emu), _received(procs)
        star = _reduce_once(procs, "star", 0, seeds, leader=names[0])
        k1, r1 = _kernel_bytes(emu), _received(procs)
        ring = _reduce_once(procs, "reduce", 1, seeds, schedule="ring")
        k2, r2 = _kernel_bytes(emu), _received(procs)
        two = _reduce_once(procs, "reduce", 2, seeds, schedule="two_shot")
        k3, r3 = _kernel_bytes(emu), _received(procs)
        namespaces = [emu.namespace(c) for c in emu.centers]
    for r, (ka, kb), (ra, rb) in (
        (star, (k0, k1), (r0, r1)), (ring, (k1, k2), (r1, r2)), (two, (k2, k3), (r2, r3))
    ):
        r["kernel_bytes_per_link"] = _delta(kb, ka)
        received = {k: v for k, v in _delta(rb, ra).items() if v}
        # what each receiving transport counted must equal what the sender counted
        r["received_matches_sent"] = received == r["bytes_per_link"]
    payload = mib * MiB
    n = len(names)
    for r in (star, ring, two):
        per_center: dict[str, int] = {}
        for link, nbytes in r["bytes_per_link"].items():
            src = link.split("->")[0]
            per_center[src] = per_center.get(src, 0) + nbytes
        r["bytes_sent_per_center"] = dict(sorted(per_center.items()))
        r["max_center_bytes_over_payload"] = max(per_center.values()) / payload
    for r in (ring, two):
        r["theory_bytes_per_center_over_payload"] = 2 * (n - 1) / n
    return {
        "centers": n,
        "rate_mbit": rate,
        "rtt_ms": rtt,
        "measured": [{"link": f"{m['src']}->{m['dst']}", "rate_mbit": m["rate_mbit"], "rtt_ms": m["rtt_ms"]} for m in measured],
        "payload_bytes": payload,
        "star": star,
        "ring": ring,
        "two_shot": two,
        "ring_speedup": star["wall_s"] / ring["wall_s"],
        "two_shot_speedup": star["wall_s"] / two["wall_s"],
        "namespaces": namespaces,
    }


# ---------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    import grpc
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_table(res: dict[str, Any]) -> str:
    lines = []
    lb = res.get("loopback")
    if lb:
        lines += [
            f"loopback, {lb['payload_bytes'] / MiB:.0f} MiB, one process per gateway",
            f"  gateway gRPC  {lb['goodput_MBps']:9.1f} MB/s   (first byte -> ack after validation)",
            f"  raw TCP       {lb['raw_socket_MBps']:9.1f} MB/s   (baseline, same processes)",
            f"  ratio         {lb['ratio']:9.3f}",
            f"  of which: streaming {lb['stream_s']:.2f} s ({lb['stream_MBps']:.1f} MB/s), "
            f"validation after the last chunk {lb['validate_s']:.2f} s",
        ]
    if "shaped" in res:
        lines.append("shaped links (a -> b, one payload)")
        lines.append(f"  {'link':>10} {'measured':>16} {'payload':>8} {'goodput':>12} {'efficiency':>10}"
                     f"   {'stream s':>8} {'stream eff':>10} {'validate s':>10}")
        for s in res["shaped"]:
            link = f"{s['rate_mbit']:g}M/{s['rtt_ms']:g}ms"
            meas = f"{s['measured_rate_mbit']:.1f}M/{s['measured_rtt_ms']:.1f}ms"
            ok = "ok" if s["met"] else f"<{s['target']}"
            lines.append(f"  {link:>10} {meas:>16} {s['payload_bytes'] / MiB:5.0f}MiB "
                         f"{s['goodput_mbit']:8.1f}Mbit {s['efficiency']:10.3f} {ok:<5}"
                         f"{s['stream_s']:7.2f} {s['stream_efficiency']:10.3f} {s['validate_s']:10.2f}")
    elif "shaped_skipped" in res:
        lines.append(f"shaped links: skipped ({res['shaped_skipped']})")
    rs = res.get("ring_vs_star")
    if rs:
        meas = ", ".join(f"{m['link']} {m['rate_mbit']:.1f}M/{m['rtt_ms']:.1f}ms" for m in rs["measured"])
        lines.append(f"ring vs star: {rs['centers']} centers, full mesh {rs['rate_mbit']}M/{rs['rtt_ms']}ms "
                     f"(measured {meas}), {rs['payload_bytes'] / MiB:.0f} MiB")
        lines.append(f"  {'':8} {'wall s':>8} {'max MB/link':>12} {'max sent/center':>16} {'max err':>9}")
        for k in ("star", "ring", "two_shot"):
            r = rs[k]
            lines.append(f"  {k:8} {r['wall_s']:8.2f} {max(r['bytes_per_link'].values()) / 1e6:12.2f} "
                         f"{r['max_center_bytes_over_payload']:15.3f}x {r['max_abs_err']:9.1e}")
        lines.append(f"  ring and two-shot theory 2(n-1)/n = {rs['ring']['theory_bytes_per_center_over_payload']:.3f}x "
                     f"payload; over star: ring {rs['ring_speedup']:.2f}x, two-shot {rs['two_shot_speedup']:.2f}x")
    elif "ring_vs_star_skipped" in res:
        lines.append(f"ring vs star: skipped ({res['ring_vs_star_skipped']})")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run (the command line, parsed)."""

    quick: bool = False
    size_mib: float | None = None
    repeats: int = 1
    chunk_bytes: int | None = None
    parts: frozenset[str] = PARTS

    def __post_init__(self) -> None:
        unknown = set(self.parts) - PARTS
        if unknown:
            raise ValueError(f"parts: unknown {sorted(unknown)}; choose from {sorted(PARTS)}")
        if self.repeats < 1:
            raise ValueError(f"repeats: must be >= 1, got {self.repeats}")


def run(opts: Options, available: Callable[[], tuple[bool, str]] = emulator_available) -> dict[str, Any]:
    """Run the parts in ``opts``; returns the results (what ``--json`` writes).

    Args:
        opts: what to run.
        available: tells whether the WAN emulator can run here, and if not why (the shaped
            parts are skipped with that reason).

    Raises:
        BenchError: a peer failed or a payload arrived altered.
    """
    size = opts.size_mib if opts.size_mib is not None else (32 if opts.quick else 256)
    res: dict[str, Any] = {"machine": machine_info(), "quick": opts.quick}
    elapsed: dict[str, float] = {}
    if "loopback" in opts.parts:
        t0 = time.monotonic()
        res["loopback"] = run_loopback(size, opts.repeats, opts.chunk_bytes)
        elapsed["loopback"] = time.monotonic() - t0
    shaped = {"shaped", "ring"} & opts.parts
    ok, why = available() if shaped else (True, "")
    if "shaped" in opts.parts:
        if ok:
            t0 = time.monotonic()
            res["shaped"] = run_shaped(opts.quick, opts.repeats, opts.chunk_bytes)
            elapsed["shaped"] = time.monotonic() - t0
        else:
            res["shaped_skipped"] = why
    if "ring" in opts.parts:
        if ok:
            t0 = time.monotonic()
            res["ring_vs_star"] = run_ring_vs_star(opts.quick, opts.chunk_bytes)
            elapsed["ring_vs_star"] = time.monotonic() - t0
        else:
            res["ring_vs_star_skipped"] = why
    res["elapsed_s"] = elapsed
    if hasattr(os, "getloadavg"):
        res["machine"]["loadavg_end"] = list(os.getloadavg())
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="suanwang bench wan", description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--quick", action="store_true", help="small payloads (smoke test)")
    p.add_argument("--size-mib", type=float, default=None, help="loopback payload, MiB (default 256; 32 with --quick)")
    p.add_argument("--repeats", type=int, default=1, help="transfers per figure; the median run is reported")
    p.add_argument("--chunk-bytes", type=int, default=None, help="transport chunk size (default: the transport's)")
    p.add_argument("--parts", default=",".join(sorted(PARTS)), help="comma-separated subset of: loopback, shaped, ring")
    args = p.parse_args(argv)
    try:
        opts = Options(args.quick, args.size_mib, args.repeats, args.chunk_bytes, frozenset(args.parts.split(",")))
    except ValueError as err:
        p.error(str(err))
    res = run(opts)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
