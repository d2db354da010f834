"""An emulated WAN on one Linux host, for tests and benchmarks.

Two modes, chosen by ``WanEmulator(..., latency=)``: ``"relay"`` (the default; veths shaped
by tbf, the delay added only on connections dialed through :meth:`WanEmulator.endpoint`)
and ``"tun"`` (every IPv4 packet between centers crosses a user-space packet delayer that
adds both rate and delay). The sections below describe the relay mode; "Packet mode" at the
end describes the tun mode.

Topology. Every center gets its own network namespace (``<prefix>-<center>``) with loopback
up and one address from the RFC 2544 benchmarking range ``198.18.0.0/15``. Every link is a
point-to-point veth pair, one end in each of its two centers, configured as
``ip addr add <own>/32 peer <peer>/32`` so that the kernel routes the peer's address over
exactly that veth. Point-to-point pairs (rather than one router namespace) make a link a
thing you can see, shape and delete on its own; two centers with no link between them have
no route to each other, which is what an absent link should mean. No address or interface
is ever created in the host's namespace: both veth ends are created directly inside the
center namespaces, so parallel emulators (each with a random prefix) cannot collide.

Bandwidth. A ``tbf`` qdisc on the egress of each veth end shapes each direction of each link
to its rate, with (rates in bytes/s)::

    burst = max(8 KiB, rate * 2 ms)              # keeps the rate across timer slack, short bursts
    limit = burst + max(64 KiB, rate * 10 ms)    # bottleneck queue: ~10 ms, room for a GSO packet

Latency. netem is not available, so a delaying relay (:mod:`suanwang.runtime.wan.relay`)
adds rtt/2 per direction. One relay process per center runs under ``ip netns exec`` in that
center's namespace: it listens on the center's loopback, and its outbound sockets are opened
from the center's namespace to the peer's address, so relayed bytes cross the shaped veth
and arrive from the true source address. A program in center A reaches port P of center B by
dialing ``emu.endpoint("A", "B", P)``; the relay's buffering is bounded to about one
bandwidth-delay product (see :func:`~suanwang.runtime.wan.relay.relay_cap_bytes`), so flow
control and the link rate still bite. Relays and the measuring probes run at nice -10: they
stand in for network gear, which does not share CPUs with the programs under test. Dialing
``emu.address("B")`` directly also works but sees the shaped rate without the delay (gloo
does: a 2-rank all_reduce of 16 floats over a 40 ms link takes 0.6 ms).

Measuring. :meth:`WanEmulator.measure` runs a ping-pong (RTT) and a bulk TCP transfer (rate)
between two centers through the relay, the path a gateway uses. The rate is TCP goodput,
~4.4% under the configured wire rate with a 1500-byte MTU (1448 of 1514 bytes per frame).
Figures on a loaded 2-core host: 100 Mbit/s 40 ms measures ~95.8 Mbit/s and 40.6 ms;
1 Gbit/s 10 ms measures ~954 Mbit/s and 10.4 ms (the relay uses ~13% of a core there).

Lifecycle. :class:`WanEmulator` is a context manager. Everything it creates (namespaces,
veths and their qdiscs, relays, the packet delayer, processes started with
:meth:`WanEmulator.popen` and any other process left in its namespaces) is removed by
:meth:`WanEmulator.close`, which runs on ``__exit__`` (also when the body raised), at
interpreter exit and on SIGTERM. Each live emulator holds an exclusive ``flock`` on
``/run/suanwang-wanemu/<prefix>.lock``; the kernel drops it when the owner dies however it
dies, which is how :func:`cleanup_stale` tells a crashed run's leftovers from a live run of
someone else. The delayer lives outside the namespaces, so its pid is recorded next to the
lock (``<prefix>.pid``) for :func:`cleanup_stale`; it also exits when its stdin closes.

Limits. The relay splits each TCP connection in two (client-relay on loopback, relay-peer
over the veth), so the sender's congestion control never sees the WAN RTT: slow start ramps
after one delay rather than over several RTTs, and a small sender window does not limit
throughput as it would on a real path. Connection setup still costs one RTT before the first
byte arrives. There is no packet loss, jitter or reordering (no netem). Under a saturating
transfer, another connection on the link sees the tbf queue (measured: 40 -> 45 ms at 100
Mbit/s, 10 -> 11.8 ms at 1 Gbit/s); bytes queued behind bulk data on the same connection
also wait behind the relay's slack and its clamped socket buffers (estimated from their
sizes: up to ~45 ms more at 100 Mbit/s, ~15 ms at 1 Gbit/s). Each relay's event loop uses
select(), so a relay carries at most ~500 concurrent connections. Centers without a direct
link cannot reach each other (no multi-hop routing). The SIGTERM hook is installed at the
first start in the main thread and chains to the handler that was there; a handler installed
later replaces it (``atexit`` and ``with`` still clean up on an orderly exit).

Packet mode (``latency="tun"``). No veths and no relays: each center's namespace holds one
TUN device ``wan0`` with the center's address and a /32 route to each linked peer over it.
All devices belong to one packet delayer (:mod:`suanwang.runtime.wan.tundelay`, nice -10, in
the host's namespace), which moves every IPv4 packet from the source center's device to the
destination's through a model of that direction of the link: a drop-tail queue of one
bandwidth-delay product plus four packets
(:func:`~suanwang.runtime.wan.tundelay.queue_limit_bytes`), a serializer at the link rate,
then rtt/2 of delay. So every program pays rate and RTT whatever it dials, gloo's direct
peer connections included; :meth:`WanEmulator.endpoint` returns ``(address(dst), port)``,
and TCP runs end to end, so its congestion control sees the real RTT (unlike the relay's
split connections). :meth:`WanEmulator.link_bytes` counts delivered IP packets per direction.
The devices' MTU is 65000 (``tun_mtu``): the delayer's cost is per packet, and at 100 Mbit/s
a 1500-byte MTU is ~8300 packets/s per direction against ~190.

Measured on this 2-core host, end-to-end TCP (the kernel default congestion control here,
BBR), ``measure()`` or direct dials: idle RTT 40.6 ms at 40 ms, 10.3 ms at 10 ms.
Goodput at 100 Mbit/s 40 ms: 94-95 Mbit/s over 3 s transfers, 97-98 over 8 s (the ramp-up
and the first loss cost ~0.3 s; over 1.5 s it reads ~89); 19.5 Mbit/s at 20 Mbit/s 40 ms;
979 Mbit/s at 1 Gbit/s 10 ms. The delayer uses ~3% of a core at 100 Mbit/s and ~15% at
1 Gbit/s. With ``tun_mtu=9000``: 96.9 Mbit/s and ~10% of a core at 100 Mbit/s; with 1500:
92.6 Mbit/s and ~30%. A 2-rank gloo all_reduce of 16 floats over 40 ms takes 81 ms (2 RTTs).

Packet-mode limits. Segments are up to 64 KB, so TCP's initial windows (which count
segments) open in 64 KB steps: fresh connections ramp faster than on a 1500-byte WAN. At
100 Mbit/s 40 ms, connect-to-acknowledged times of a fresh transfer were 127 / 314 / 1012 ms
for 0.1 / 1 / 10 MB, against 205 / 346 / 1100 ms with ``tun_mtu=1500``; transfers that
restart slow start (short ones, or after an idle RTO) finish that much too early. The
one-BDP queue is what a saturating sender fills: another connection in the same direction
then sees 83 ms instead of 40 at 100 Mbit/s (15 ms instead of 10 at 1 Gbit/s), where the
relay mode's tbf queue adds ~5 ms. The delayer is one Python process: its wakeups add
~0.3 ms per direction, and a busy host can delay packets further (each packet's times come
from the link's virtual clock, so lateness does not lower the rate). Only IPv4 crosses; no
loss beyond queue drops, no jitter, no reordering, no multi-hop routing.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from suanwang.runtime.wan.netns import (
    DEFAULT_PREFIX,
    _claim_prefix,
    _forget_process,
    _netns_kill_and_delete,
    _record_process,
    _release_prefix,
    _run,
    cleanup_stale,
    emulator_available,
)
from suanwang.runtime.wan.relay import MODULE as RELAY_MODULE
from suanwang.runtime.wan.relay import EmulatorError, RelayClient, read_line
from suanwang.runtime.wan.tundelay import DEFAULT_MTU, DelayerClient

__all__ = [
    "DEFAULT_PREFIX",
    "EmulatorError",
    "Link",
    "WanEmulator",
    "cleanup_stale",
    "emulator_available",
    "tbf_params",
]

log = logging.getLogger(__name__)

ADDRESS_BASE = ipaddress.IPv4Address("198.18.0.0")
MAX_CENTERS = 1000
LATENCY_MODES = ("relay", "tun")
_CENTER_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")


@dataclasses.dataclass(frozen=True)
class Link:
    """A symmetric WAN link between centers ``a`` and ``b``.

    Attributes:
        a, b: center names.
        rate_mbit: rate of each direction, Mbit/s (10^6 bit/s).
        rtt_ms: round-trip time added by the relay or the packet delayer, ms (half each way).
    """

    a: str
    b: str
    rate_mbit: float
    rtt_ms: float

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"link {self.a}-{self.b}: a link joins two different centers")
        if not self.rate_mbit > 0:
            raise ValueError(f"link {self.a}-{self.b}: rate_mbit must be > 0, got {self.rate_mbit}")
        if not self.rtt_ms >= 0:
            raise ValueError(f"link {self.a}-{self.b}: rtt_ms must be >= 0, got {self.rtt_ms}")

    @property
    def rate_bps(self) -> float:
        """Rate in bytes per second."""
        return self.rate_mbit * 1e6 / 8

    @property
    def one_way_s(self) -> float:
        return self.rtt_ms / 2e3


def tbf_params(rate_mbit: float) -> tuple[int, int]:
    """``(burst, limit)`` in bytes for a tbf qdisc at ``rate_mbit`` (formula in the module doc)."""
    rate_bps = rate_mbit * 1e6 / 8
    burst = max(8 * 1024, int(rate_bps * 0.002))
    limit = burst + max(64 * 1024, int(rate_bps * 0.010))
    return burst, limit


class WanEmulator:
    """Centers in network namespaces joined by shaped, delayed links (see the module doc).

    Example::

        with WanEmulator(["a", "b"], [("a", "b", 100, 40)]) as emu:
            server = emu.popen("b", ["python", "-m", "http.server", "8000",
                                     "--bind", emu.address("b")])
            host, port = emu.endpoint("a", "b", 8000)   # dial this from inside center a
            print(emu.measure("a", "b"))                # {'rate_mbit': 95.8, 'rtt_ms': 40.6, ...}

    Args:
        centers: center names (letters, digits, ``_``; up to 32 characters).
        links: :class:`Link` or ``(a, b, rate_mbit, rtt_ms)`` tuples; at most one per pair.
        prefix: namespace-name prefix; default ``swemu`` plus random hex, unique per instance.
        python: interpreter for the relay, delayer and probe processes.
        latency: ``"relay"`` (veths shaped by tbf; the delay only through
            :meth:`endpoint`'s relay) or ``"tun"`` (every packet between centers crosses the
            packet delayer, which adds rate and delay; see the module doc).
        tun_mtu: MTU of the TUN devices (``latency="tun"`` only).
    """

    def __init__(self, centers: Iterable[str], links: Iterable[Link | Sequence[Any]], *,
                 prefix: str | None = None, python: str = sys.executable,
                 latency: str = "relay", tun_mtu: int = DEFAULT_MTU) -> None:
        self.centers = list(centers)
        self.links = [ln if isinstance(ln, Link) else Link(*ln) for ln in links]
        if not 1 <= len(self.centers) <= MAX_CENTERS:
            raise ValueError(f"centers: need 1..{MAX_CENTERS}, got {len(self.centers)}")
        if len(set(self.centers)) != len(self.centers):
            raise ValueError(f"centers: duplicate names in {self.centers}")
        for c in self.centers:
            if not _CENTER_RE.match(c):
                raise ValueError(f"centers: {c!r} must match {_CENTER_RE.pattern}")
        self._links: dict[frozenset[str], Link] = {}
        for ln in self.links:
            for c in (ln.a, ln.b):
                if c not in self.centers:
                    raise ValueError(f"links: {ln.a}-{ln.b} names unknown center {c!r}")
            key = frozenset((ln.a, ln.b))
            if key in self._links:
                raise ValueError(f"links: more than one link between {ln.a} and {ln.b}")
            self._links[key] = ln
        if prefix is not None and not re.match(r"^[a-z0-9]{1,16}$", prefix):
            raise ValueError(f"prefix: {prefix!r} must be 1-16 lowercase letters/digits")
        if latency not in LATENCY_MODES:
            raise ValueError(f"latency: {latency!r} is not one of {LATENCY_MODES}")
        if not 576 <= tun_mtu <= 65535:
            raise ValueError(f"tun_mtu: must be in 576..65535, got {tun_mtu}")
        self.latency = latency
        self.tun_mtu = tun_mtu
        self._requested_prefix = prefix
        self.prefix = ""
        self.python = python
        self._addr = {c: str(ADDRESS_BASE + 1 + i) for i, c in enumerate(self.centers)}
        self._namespaces: list[str] = []
        self._relays: dict[str, RelayClient] = {}
        self._veths: dict[tuple[str, str], str] = {}  # (center, peer) -> veth in center
        self._delayer: DelayerClient | None = None
        self._endpoints: dict[tuple[str, str, int], tuple[str, int]] = {}
        self._procs: list[subprocess.Popen] = []
        self._lock_fd: int | None = None
        self._started = False
        self._closed = False
        self._mutex = threading.RLock()

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> WanEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create namespaces, links, qdiscs and relays.

        Raises:
            EmulatorError: creation failed (everything created so far is removed again).
        """
        if self._started:
            raise EmulatorError("start() called twice")
        ok, why = emulator_available()
        if not ok:
            raise EmulatorError(why)
        self._started = True
        _register(self)
        try:
            self.prefix, self._lock_fd = _claim_prefix(self._requested_prefix)
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for c in self.centers:
            ns = self.namespace(c)
            _run("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        if self.latency == "tun":
            self._build_tun()
            return
        for k, ln in enumerate(self.links):
            ends = {ln.a: f"l{k}-{ln.b}"[:15], ln.b: f"l{k}-{ln.a}"[:15]}
            self._veths[(ln.a, ln.b)], self._veths[(ln.b, ln.a)] = ends[ln.a], ends[ln.b]
            _run("ip", "link", "add", ends[ln.a], "netns", self.namespace(ln.a), "type", "veth",
                 "peer", "name", ends[ln.b], "netns", self.namespace(ln.b))
            burst, limit = tbf_params(ln.rate_mbit)
            for me, peer in ((ln.a, ln.b), (ln.b, ln.a)):
                ns, dev = self.namespace(me), ends[me]
                _run("ip", "-n", ns, "addr", "add", f"{self._addr[me]}/32",
                     "peer", f"{self._addr[peer]}/32", "dev", dev)
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
                     "rate", f"{int(ln.rate_mbit * 1e6)}bit", "burst", str(burst),
                     "limit", str(limit))
                _run("ip", "-n", ns, "link", "set", dev, "up")
        for c in self.centers:  # start all, then wait: the interpreters start in parallel
            self._relays[c] = RelayClient(["ip", "netns", "exec", self.namespace(c)],
                                          python=self.python, wait=False)
        for relay in self._relays.values():
            relay.wait_ready()

    def _build_tun(self) -> None:
        directed = [(s, d, ln.rate_bps, ln.one_way_s)
                    for ln in self.links for s, d in ((ln.a, ln.b), (ln.b, ln.a))]
        self._delayer = DelayerClient(
            [(c, f"/run/netns/{self.namespace(c)}", self._addr[c]) for c in self.centers],
            directed, mtu=self.tun_mtu, python=self.python)
        _record_process(self.prefix, self._delayer.pid)
        dev = self._delayer.device
        for c in self.centers:
            ns = self.namespace(c)
            _run("ip", "-n", ns, "link", "set", dev, "mtu", str(self.tun_mtu), "up")
            _run("ip", "-n", ns, "addr", "add", f"{self._addr[c]}/32", "dev", dev)
        for src, dst, _, _ in directed:
            _run("ip", "-n", self.namespace(src), "route", "add", f"{self._addr[dst]}/32",
                 "dev", dev, "src", self._addr[src])

    def close(self) -> None:
        """Remove everything this emulator created. Idempotent; never raises."""
        with self._mutex:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True
            for proc in self._procs:
                _stop(proc)
            for relay in self._relays.values():
                try:
                    relay.close()
                except Exception:  # teardown goes on: the namespace kill below catches it
                    log.exception("closing a relay")
            if self._delayer is not None:
                try:
                    self._delayer.close()
                    _forget_process(self.prefix)
                except Exception:  # the record stays: cleanup_stale stops it later
                    log.exception("stopping the packet delayer")
            for ns in self._namespaces:
                try:
                    _netns_kill_and_delete(ns)
                except Exception:
                    log.exception("deleting namespace %s", ns)
            if self._lock_fd is not None:
                _release_prefix(self.prefix, self._lock_fd)
                self._lock_fd = None
            _unregister(self)

    # -- queries -------------------------------------------------------------------------

    def namespace(self, center: str) -> str:
        """Name of ``center``'s network namespace (for ``ip netns exec``)."""
        self._check_center(center)
        return f"{self.prefix}-{center}"

    def address(self, center: str) -> str:
        """``center``'s IPv4 address; servers in that center bind to it (or 0.0.0.0)."""
        self._check_center(center)
        return self._addr[center]

    def link(self, a: str, b: str) -> Link:
        """The link joining ``a`` and ``b``.

        Raises:
            KeyError: no link joins them.
        """
        try:
            return self._links[frozenset((a, b))]
        except KeyError:
            raise KeyError(f"no link between {a!r} and {b!r}") from None

    def interface(self, center: str) -> str | None:
        """A device in ``center``'s namespace that carries its address (for
        ``GLOO_SOCKET_IFNAME``): the TUN device, or one of its veths; None if it has none.
        """
        self._check_center(center)
        if self.latency == "tun":
            return self._delayer.device if self._delayer is not None else None
        return min((dev for (c, _), dev in self._veths.items() if c == center), default=None)

    def _check_center(self, center: str) -> None:
        if center not in self._addr:
            raise KeyError(f"unknown center {center!r}; centers are {self.centers}")

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise EmulatorError("the emulator is not running (use it inside `with`)")

    # -- use -----------------------------------------------------------------------------

    def endpoint(self, src: str, dst: str, port: int) -> tuple[str, int]:
        """Where a program in ``src`` dials to reach ``port`` on ``dst`` with the link's delay.

        With ``latency="relay"`` the answer is a listener of ``src``'s relay on ``src``'s
        loopback; it only works from inside ``src``'s namespace. Repeated calls return the
        same endpoint. With ``latency="tun"`` it is ``(address(dst), port)``: every path
        between centers is delayed already. For ``src == dst`` it is ``(address(dst), port)``:
        a center reaches itself directly.

        Raises:
            KeyError: unknown center or no link between ``src`` and ``dst``.
        """
        self._check_running()
        if src == dst:
            return self.address(dst), int(port)
        ln = self.link(src, dst)
        if self.latency == "tun":
            return self.address(dst), int(port)
        key = (src, dst, int(port))
        with self._mutex:
            if key not in self._endpoints:
                lport = self._relays[src].listen(self._addr[dst], int(port),
                                                 delay_s=ln.one_way_s, rate_bps=ln.rate_bps)
                self._endpoints[key] = ("127.0.0.1", lport)
            return self._endpoints[key]

    def link_bytes(self) -> dict[str, int]:
        """Bytes carried so far by each direction of each link, keyed ``"src->dst"``.

        ``latency="tun"``: IP packets (headers included) the delayer delivered;
        ``latency="relay"``: ``tx_bytes`` of the sending veth (Ethernet frames). Either way
        TCP/IP headers and the ACKs flowing back are counted; queue drops are not.

        Raises:
            EmulatorError: the counters cannot be read.
        """
        self._check_running()
        if self._delayer is not None:
            return {k: v["bytes"] for k, v in self._delayer.stats()["links"].items()}
        out: dict[str, int] = {}
        for c in self.centers:
            mine = {dev: peer for (me, peer), dev in self._veths.items() if me == c}
            if not mine:
                continue
            devs = json.loads(_run("ip", "-s", "-j", "-n", self.namespace(c), "link",
                                   "show").stdout)
            for dev in devs:
                if dev["ifname"] in mine:
                    out[f"{c}->{mine[dev['ifname']]}"] = int(dev["stats64"]["tx"]["bytes"])
        return out

    def _drop_endpoint(self, src: str, dst: str, port: int) -> None:
        with self._mutex:
            ep = self._endpoints.pop((src, dst, int(port)), None)
            if ep is not None:
                self._relays[src].unlisten(ep[1])

    def popen(self, center: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``center``'s namespace (``ip netns exec``).

        Keyword arguments go to :class:`subprocess.Popen` (not ``shell``: pass
        ``["sh", "-c", ...]``). The process is terminated on :meth:`close` if still running.
        """
        self._check_running()
        if isinstance(argv, (str, bytes)) or kwargs.get("shell"):
            raise TypeError("argv must be a list of arguments; for a shell use ['sh', '-c', cmd]")
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespace(center), *argv], **kwargs)
        with self._mutex:
            self._procs.append(proc)
        return proc

    def measure(self, a: str, b: str, *, seconds: float = 2.0, pings: int = 10) -> dict[str, Any]:
        """Measure the a->b path a gateway uses (through the relay, or directly with
        ``latency="tun"``): RTT by ping-pong, then bulk TCP rate.

        Args:
            seconds: length of the bulk transfer.
            pings: number of 64-byte request/response round trips (after one warm-up).

        Returns:
            ``rate_mbit`` (bytes the sink received over its first-to-last-byte time),
            ``rtt_ms`` (median), ``rtt_ms_min``, ``rtt_ms_max``, ``bytes``, ``seconds``,
            and the link's configured ``link_rate_mbit`` and ``link_rtt_ms``.

        Raises:
            EmulatorError: the probe failed or timed out.
        """
        self._check_running()
        ln = self.link(a, b)
        sink = self.popen(b, [self.python, "-m", RELAY_MODULE, "sink", "--host", self._addr[b]],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        port = None
        try:
            port = json.loads(read_line(sink, timeout=30.0))["port"]
            host, rport = self.endpoint(a, b, port)
            timeout = seconds + (pings + 4) * (ln.rtt_ms / 1e3 + 0.05) + 30
            probe = self.popen(a, [self.python, "-m", RELAY_MODULE, "probe", "--host", host,
                                   "--port", str(rport), "--seconds", str(seconds),
                                   "--pings", str(pings)], stdout=subprocess.PIPE)
            try:
                out, _ = probe.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                probe.kill()
                probe.communicate()
                raise EmulatorError(f"measuring {a}->{b} timed out after {timeout:.0f} s") from None
            if probe.returncode != 0:
                raise EmulatorError(f"measurement probe {a}->{b} failed ({probe.returncode})")
            res = json.loads(out)
        finally:
            _stop(sink)
            if port is not None and self.latency == "relay":
                self._drop_endpoint(a, b, port)
        rtts = res["rtts_ms"]
        return {
            "src": a, "dst": b,
            "rate_mbit": res["sink_bytes"] * 8 / 1e6 / max(res["sink_seconds"], 1e-9),
            "rtt_ms": statistics.median(rtts) if rtts else None,
            "rtt_ms_min": min(rtts, default=None),
            "rtt_ms_max": max(rtts, default=None),
            "bytes": res["sink_bytes"],
            "seconds": res["sink_seconds"],
            "link_rate_mbit": ln.rate_mbit,
            "link_rtt_ms": ln.rtt_ms,
        }


def _stop(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """Terminate ``proc`` (TERM, then KILL after ``grace``) and reap it."""
    for stream in (proc.stdin,):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# -- process-wide teardown: atexit and SIGTERM ---------------------------------------------

_live: set[WanEmulator] = set()
_live_lock = threading.Lock()
_hooks_installed = False
_prev_sigterm: Any = None


def _register(emu: WanEmulator) -> None:
    global _hooks_installed, _prev_sigterm
    with _live_lock:
        _live.add(emu)
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        _prev_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(emu: WanEmulator) -> None:
    with _live_lock:
        _live.discard(emu)


def _close_all() -> None:
    with _live_lock:
        emus = list(_live)
    for emu in emus:
        emu.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    _close_all()
    prev = _prev_sigterm
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
