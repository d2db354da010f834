"""A user-space packet delayer: every IPv4 packet between two centers pays rate and delay.

The kernel here has no ``netem``, so the WAN emulator's default mode adds latency only in a
TCP relay that programs must dial (:mod:`suanwang.runtime.wan.relay`). Programs that dial
their peers' addresses directly (gloo exchanges them through its store) bypass it. In
``latency="tun"`` mode :mod:`suanwang.runtime.wan.emulator` instead joins the centers through
this process, which sits in the packet path itself:

* For each center it creates a TUN device (``IFF_TUN | IFF_NO_PI``, named ``wan0``) inside
  the center's network namespace: it enters the namespace (``setns`` on
  ``/var/run/netns/<ns>``), creates the device, and returns to its own namespace; the
  device's fd keeps working from there. The emulator then gives the device the center's
  address and a /32 route to each linked peer. The devices vanish when this process exits.
* It reads whole IPv4 packets from every device, maps the destination address to its
  center, and sends each through the directed link (source center -> destination center):
  a serializer at the link rate (``start = max(now, busy_until)``,
  ``busy_until = start + len / rate``) followed by a delay line of rtt/2; at
  ``busy_until + rtt/2`` the packet is written into the destination center's device.
  A packet to an address with no link from its source center (or not IPv4) is dropped.
* Each directed link has a drop-tail queue in front of its serializer, bounded in bytes by
  :func:`queue_limit_bytes`: about one bandwidth-delay product plus a few packets, so TCP's
  congestion control sees loss when it overruns the link and a single flow still fills it.

Every packet time is computed from the time the packet was read and the link's virtual
clock, so event-loop wakeup jitter delays individual packets a little but never lowers the
rate. The loop uses ``select()`` (microsecond timeouts; epoll's are whole milliseconds) and
a heap of due deliveries; there is no per-byte Python work, only a few syscalls per packet,
which is why the devices get a large MTU (:data:`DEFAULT_MTU`): the cost is per packet.

Control: JSON lines on stdin, one reply line on stdout (:class:`DelayerClient` speaks it).
The first line is the configuration::

    {"mtu": 65000,
     "centers": [{"center": "a", "netns": "/var/run/netns/x-a", "address": "198.18.0.1"}, ...],
     "links": [{"src": "a", "dst": "b", "rate_bps": 1.25e7, "delay_s": 0.02}, ...]}
    -> {"ok": true, "ready": true, "pid": 123, "device": "wan0"}
    {"op": "stats"} -> {"ok": true, "links": {"a->b": {"bytes": ..., "packets": ...,
                        "drops": ...}}, "unroutable": 0, "cpu_s": 0.42}

It exits when its stdin closes, so it never outlives the emulator that started it.
Run as ``python -m suanwang.runtime.wan.tundelay`` (the emulator does).
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import math
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from suanwang.runtime.wan.relay import EmulatorError, JsonLinesProcess

MODULE = "suanwang.runtime.wan.tundelay"
DEVICE = "wan0"
# 64 KB packets: 100 Mbit/s is ~190 packets/s per direction, 1 Gbit/s ~1900; with a
# 1500-byte MTU the same rates are 43x as many packets, which Python cannot pace.
DEFAULT_MTU = 65000

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_READ = 65536
_EARLY_S = 0.00005  # deliveries due within this of now go out in the same wakeup
_BATCH = 256  # packets read from one device per wakeup, so that one cannot starve the rest


def queue_limit_bytes(rate_bps: float, delay_s: float, mtu: int = DEFAULT_MTU) -> int:
    """Bytes the queue in front of one directed link's serializer may hold before it drops.

    One bandwidth-delay product (``rate * rtt`` = ``rate * 2 * delay``) is the classic
    router buffer that lets one loss-based TCP flow keep the link busy through its window
    halvings; four packets of slack keep low-BDP links (where the product is a packet or
    two) from dropping every burst.

    Args:
        rate_bps: link rate in bytes per second.
        delay_s: one-way delay in seconds.
        mtu: the devices' MTU (the largest packet).
    """
    return int(math.ceil(rate_bps * 2 * delay_s)) + 4 * mtu


# ---------------------------------------------------------------------------------------
# Devices


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_tun(netns_path: str, name: str = DEVICE) -> int:
    """Create TUN device ``name`` inside the namespace at ``netns_path``; return its fd.

    The calling thread enters the namespace, creates the device and returns to the
    namespace it was in. The fd is non-blocking and close-on-exec; closing it removes the
    device.

    Raises:
        OSError: the namespace cannot be entered or the device cannot be created.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, _TUNSETIFF,
                                struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
                except BaseException:
                    os.close(fd)
                    raise
            finally:
                _setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)
    return fd


# ---------------------------------------------------------------------------------------
# The delayer


class _Link:
    """One direction of a link: a drop-tail queue, a serializer and a delay line."""

    __slots__ = ("name", "rate", "delay", "limit", "dst_fd", "busy", "bytes", "packets", "drops")

    def __init__(self, name: str, rate_bps: float, delay_s: float, limit: int, dst_fd: int):
        self.name = name
        self.rate = rate_bps
        self.delay = delay_s
        self.limit = limit
        self.dst_fd = dst_fd
        self.busy = 0.0  # when the serializer finishes the last accepted packet
        self.bytes = 0
        self.packets = 0
        self.drops = 0


class Delayer:
    """The event loop: read packets from every device, pace and delay them, deliver them.

    Args:
        fds: ``{center: TUN fd}``.
        addresses: ``{center: IPv4 address}``.
        links: ``(src, dst, rate_bps, delay_s)`` per directed link.
        mtu: the devices' MTU (sizes the queue bound).
        control: fd of the control channel (JSON lines; EOF stops the loop).
        reply: writes one reply object.
    """

    def __init__(self, fds: dict[str, int], addresses: dict[str, str],
                 links: Sequence[tuple[str, str, float, float]], mtu: int,
                 control: int, reply: Any) -> None:
        self.control = control
        self.reply = reply
        self.links: list[_Link] = []
        # per source device: destination address (4 raw bytes) -> link
        self.routes: dict[int, dict[bytes, _Link]] = {fd: {} for fd in fds.values()}
        for src, dst, rate, delay in links:
            ln = _Link(f"{src}->{dst}", rate, delay, queue_limit_bytes(rate, delay, mtu), fds[dst])
            self.links.append(ln)
            self.routes[fds[src]][socket.inet_aton(addresses[dst])] = ln
        self.heap: list[tuple[float, int, _Link, bytes]] = []
        self.seq = 0
        self.unroutable = 0
        self.write_errors = 0
        self._ctl_buf = b""

    def run(self) -> None:
        """Serve until the control channel closes."""
        rlist = [self.control, *self.routes]
        heap, monotonic = self.heap, time.monotonic
        while True:
            timeout = None
            if heap:
                timeout = max(0.0, heap[0][0] - _EARLY_S - monotonic())
            ready, _, _ = select.select(rlist, [], [], timeout)
            now = monotonic()
            for fd in ready:
                if fd == self.control:
                    if not self._on_control():
                        return
                elif not self._ingest(fd, now):
                    rlist.remove(fd)
            self._deliver(monotonic())

    def _ingest(self, fd: int, now: float) -> bool:
        """Queue the packets waiting on device ``fd``; False if the device is gone."""
        routes, heap = self.routes[fd], self.heap
        for _ in range(_BATCH):
            try:
                pkt = os.read(fd, _READ)
            except BlockingIOError:
                return True
            except OSError as exc:  # its namespace was deleted under us: stop reading it
                print(f"tundelay: device fd {fd} failed ({exc}); no longer read",
                      file=sys.stderr, flush=True)
                return False
            ln = routes.get(pkt[16:20]) if len(pkt) >= 20 and pkt[0] >> 4 == 4 else None
            if ln is None:
                self.unroutable += 1
                continue
            start = ln.busy if ln.busy > now else now
            n = len(pkt)
            if (start - now) * ln.rate + n > ln.limit:
                ln.drops += 1
                continue
            ln.busy = start + n / ln.rate
            self.seq += 1
            heapq.heappush(heap, (ln.busy + ln.delay, self.seq, ln, pkt))
        return True

    def _deliver(self, now: float) -> None:
        heap = self.heap
        horizon = now + _EARLY_S
        while heap and heap[0][0] <= horizon:
            _, _, ln, pkt = heapq.heappop(heap)
            try:
                os.write(ln.dst_fd, pkt)
            except OSError:  # destination device down (emulator closing): the packet is lost
                self.write_errors += 1
                continue
            ln.bytes += len(pkt)
            ln.packets += 1

    def _on_control(self) -> bool:
        data = os.read(self.control, 65536)
        if not data:
            return False
        self._ctl_buf += data
        while b"\n" in self._ctl_buf:
            line, self._ctl_buf = self._ctl_buf.split(b"\n", 1)
            try:
                req = json.loads(line)
                if req.get("op") == "stats":
                    self.reply({"ok": True, **self.stats()})
                else:
                    self.reply({"ok": False, "error": f"unknown op {req.get('op')!r}"})
            except ValueError as exc:
                self.reply({"ok": False, "error": f"bad request: {exc}"})
        return True

    def stats(self) -> dict[str, Any]:
        """Per directed link: bytes and packets delivered, packets dropped; process CPU."""
        t = os.times()
        return {
            "links": {ln.name: {"bytes": ln.bytes, "packets": ln.packets, "drops": ln.drops}
                      for ln in self.links},
            "unroutable": self.unroutable,
            "write_errors": self.write_errors,
            "cpu_s": t.user + t.system,
        }


def _serve() -> int:
    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    buf = b""
    while b"\n" not in buf:  # unbuffered: later requests must stay for the event loop
        part = os.read(0, 65536)
        if not part:
            return 0
        buf += part
    line, rest = buf.split(b"\n", 1)
    if rest.strip():
        reply({"ok": False, "error": "a request arrived before the ready reply"})
        return 1
    cfg = json.loads(line)
    fds: dict[str, int] = {}
    for c in cfg["centers"]:
        try:
            fds[c["center"]] = open_tun(c["netns"], DEVICE)
        except OSError as exc:
            reply({"ok": False, "error": f"center {c['center']}: creating TUN device {DEVICE} "
                                         f"in {c['netns']}: {exc}"})
            return 1
    addresses = {c["center"]: c["address"] for c in cfg["centers"]}
    links = [(ln["src"], ln["dst"], float(ln["rate_bps"]), float(ln["delay_s"]))
             for ln in cfg["links"]]
    delayer = Delayer(fds, addresses, links, int(cfg["mtu"]), 0, reply)
    reply({"ok": True, "ready": True, "pid": os.getpid(), "device": DEVICE})
    delayer.run()
    return 0


# ---------------------------------------------------------------------------------------
# Control client


class DelayerClient(JsonLinesProcess):
    """Starts the delayer (in this namespace) and drives it over its stdin/stdout.

    Args:
        centers: ``(center, netns path, address)`` per center; each gets a device.
        links: ``(src, dst, rate_bps, delay_s)`` per directed link.
        mtu: the devices' MTU, for the queue bound (the caller sets the devices' MTU).
        python: interpreter to run the delayer with.
        timeout: seconds to wait for the devices.

    Raises:
        EmulatorError: the delayer did not start or could not create a device (named).
    """

    def __init__(self, centers: Sequence[tuple[str, str, str]],
                 links: Sequence[tuple[str, str, float, float]], *, mtu: int = DEFAULT_MTU,
                 python: str = sys.executable, timeout: float = 30.0) -> None:
        super().__init__([python, "-m", MODULE], "packet delayer")
        cfg = {"mtu": mtu,
               "centers": [{"center": c, "netns": p, "address": a} for c, p, a in centers],
               "links": [{"src": s, "dst": d, "rate_bps": r, "delay_s": t}
                         for s, d, r, t in links]}
        try:
            msg = self._send(cfg, timeout)
        except BaseException:
            self.close()
            raise
        if not msg.get("ready"):
            self.close()
            raise EmulatorError(f"packet delayer did not start: {msg.get('error', msg)}")
        self.pid = self.proc.pid
        self.device = str(msg["device"])

    def stats(self) -> dict[str, Any]:
        """The delayer's counters (see the module doc)."""
        return self._request({"op": "stats"})


def main() -> int:
    # The delayer stands in for network gear: it should not lose the link's capacity to CPU
    # contention from the programs under test (root only; best effort).
    try:
        os.nice(-10)
    except OSError:
        pass
    return _serve()


if __name__ == "__main__":
    sys.exit(main())
