"""One center's gateway in its own process, driven by :mod:`suanwang.benchmarks.wan`.

Each center runs in its own interpreter so that gRPC's Python-side work (chunking, CRC,
protobuf, validation) of one gateway never waits on the GIL of another, as on real hosts.
The benchmark drives the peer with one JSON object per line on stdin and reads one JSON
reply per request on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``);
logs go to stderr. The first line the peer prints, unasked, is its gateway's address.

The peer exits when stdin closes (the benchmark ended or died) and, on Linux, also when
the process that started it dies (``PR_SET_PDEATHSIG``), so it never outlives the run.

Requests (``op`` and its fields)::

    connect   peers: {name: "host:port"}            -> rtt_ms per peer (handshake)
    send      to: [names], round, timeout_s         -> per peer: bytes_sent, seconds, error
    take      round, sender                         -> digest of the payload received, then
                                                       the round is closed (memory freed)
    digest                                          -> digest of this center's own payload
    raw_listen nbytes                               -> port of a plain TCP sink (one transfer)
    raw_send  host, port                            -> seconds from first byte to the sink's ack
    star      leader, round, seeds, start_at, timeout_s
    reduce    schedule (ring or two_shot), round, seeds, start_at, timeout_s
                                                    -> t_end, digest, max_abs_err, bytes per peer
    stats                                           -> the transport's byte counters

Run as ``python -m suanwang.benchmarks.wan_peer --center a --peers b,c --numel N``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import torch

from suanwang.runtime.compress import Encoded
from suanwang.runtime.compress.none import NoneCodec
from suanwang.runtime.flat import digest
from suanwang.runtime.reduce import weighted_mean
from suanwang.runtime.strategies.sync import SyncCenter
from suanwang.runtime.wan.gateway import PAYLOAD_NAME, Gateway
from suanwang.runtime.wan.transport import GrpcTransport, Identity

MODULE = "suanwang.benchmarks.wan_peer"
JOB, TOKEN = "wan-bench", "wan-bench-token"
_ACK = b"k"


def payload(seed: int, numel: int) -> torch.Tensor:
    """The dense fp32 contribution of the center with ``seed`` (same in every process)."""
    return torch.randn(numel, generator=torch.Generator().manual_seed(seed))


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class TimedGateway(Gateway):
    """The gateway, noting when each peer's last stream opened, completed and was validated
    (``time.monotonic()``, comparable across processes on one host)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timing: dict[str, dict[str, float]] = {}

    def expectation(self, sender: str):
        self.timing[sender] = {"opened": time.monotonic()}
        return super().expectation(sender)

    def deliver(self, sender: str, header, enc, prechecked: bool = False) -> None:
        t = self.timing.setdefault(sender, {})
        t["received"] = time.monotonic()
        try:
            super().deliver(sender, header, enc, prechecked)
        finally:
            t["validated"] = time.monotonic()


class Peer:
    """A gateway plus what the benchmark asks of it."""

    def __init__(self, args: argparse.Namespace):
        self.center = args.center
        self.peers = [p for p in args.peers.split(",") if p]
        self.numel = args.numel
        self.seed = args.seed
        self.host = args.host
        self.codec = NoneCodec()
        transport = GrpcTransport(
            Identity(JOB, self.center, TOKEN, frozenset(self.peers)),
            host=args.host,
            chunk_bytes=args.chunk_bytes,
        )
        self.gw = TimedGateway(
            self.center,
            self.peers,
            transport,
            self.codec,
            SyncCenter(),
            self.numel,
            JOB,
            args.chunk_bytes,
            max_payload_bytes=self.numel * 4,
            schedule="ring",
        )
        self._own: torch.Tensor | None = None
        self._enc: Encoded | None = None

    @property
    def own(self) -> torch.Tensor:
        if self._own is None:
            self._own = payload(self.seed, self.numel)
        return self._own

    def encoded(self) -> Encoded:
        if self._enc is None:
            self._enc = self.codec.encode(self.own)
        return self._enc

    def start(self) -> str:
        return self.gw.start()

    def warm_up(self) -> None:
        """Run the receive-side validation once on a local payload of the real size, so the
        measured transfers do not pay one-time costs (torch kernel dispatch set-up, first
        touch of memory pages: ~300 MB/s on a fresh VM) that a long-lived gateway pays once."""
        zeros = self.codec.encode(torch.zeros(self.numel))
        decoded = self.codec.decode(zeros)
        bool(torch.isfinite(decoded).all())

    def close(self) -> None:
        self.gw.close()

    # ------------------------------------------------------------------ requests
    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.pop("op")
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise ValueError(f"unknown op {op!r}")
        return fn(**req)

    def op_connect(self, peers: dict[str, str]) -> dict[str, Any]:
        rtt = self.gw.transport.connect(peers)
        return {"rtt_ms": {p: s * 1e3 for p, s in rtt.items()}}

    def op_digest(self) -> dict[str, Any]:
        return {"digest": digest(self.own)}

    def op_send(self, to: list[str], round: int, timeout_s: float) -> dict[str, Any]:
        enc = self.encoded()
        t0 = time.monotonic()
        sent = self.gw.send(round, to, PAYLOAD_NAME, enc, 1, time.time() + timeout_s)
        return {
            "started": t0,
            "acked": time.monotonic(),
            "payload_bytes": int(enc.data.numel()),
            "results": {p: {"bytes_sent": r.bytes_sent, "seconds": r.seconds, "error": r.error} for p, r in sent.items()},
        }

    def op_take(self, round: int, sender: str) -> dict[str, Any]:
        missing = self.gw.wait_for(round, [(sender, PAYLOAD_NAME)], time.time() + 5)
        out = None if missing else digest(self.gw.take(round, (sender, PAYLOAD_NAME))[0])
        self.gw.skip(round)
        return {"digest": out, "timing": self.gw.timing.get(sender, {})}

    def op_stats(self) -> dict[str, Any]:
        s = self.gw.transport.stats
        return {"bytes_sent": dict(s.bytes_sent), "bytes_received": dict(s.bytes_received), "rejected": list(s.rejected)}

    # ------------------------------------------------------------------ plain TCP baseline
    def op_raw_listen(self, nbytes: int) -> dict[str, Any]:
        srv = socket.create_server((self.host, 0))
        buf = bytearray(nbytes)

        def sink() -> None:
            with srv:
                conn, _ = srv.accept()
                with conn:
                    view, got = memoryview(buf), 0
                    while got < nbytes:
                        n = conn.recv_into(view[got:])
                        if not n:
                            return
                        got += n
                    conn.sendall(_ACK)

        threading.Thread(target=sink, daemon=True).start()
        return {"port": srv.getsockname()[1]}

    def op_raw_send(self, host: str, port: int) -> dict[str, Any]:
        data = self.encoded().data.numpy()
        with socket.create_connection((host, port), timeout=600) as s:
            t0 = time.perf_counter()
            s.sendall(memoryview(data))
            if s.recv(1) != _ACK:
                raise ConnectionError("the raw sink closed without acknowledging")
            seconds = time.perf_counter() - t0
        return {"seconds": seconds, "payload_bytes": int(data.nbytes)}

    # ------------------------------------------------------------------ reductions
    def _check(self, mean: torch.Tensor, seeds: dict[str, int]) -> float:
        ref = sum(payload(s, self.numel).double() for s in seeds.values()) / len(seeds)
        return float((mean.double() - ref).abs().max())

    @staticmethod
    def _wait(start_at: float) -> None:
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def op_star(self, leader: str, round: int, seeds: dict[str, int], start_at: float, timeout_s: float) -> dict[str, Any]:
        """Everyone sends its payload to ``leader``, which sends the mean back to everyone."""
        own = self.own
        self.encoded()
        others = [c for c in seeds if c != leader]
        self._wait(start_at)
        deadline = time.time() + timeout_s
        if self.center == leader:
            missing = self.gw.wait_for(round, [(p, PAYLOAD_NAME) for p in others], deadline)
            if missing:
                raise TimeoutError(f"star: no payload from {[m[0] for m in missing]}")
            got = {p: self.gw.take(round, (p, PAYLOAD_NAME))[:2] for p in others}
            mean = weighted_mean({self.center: (own, 1), **got})
            sent = self.gw.send(round, others, PAYLOAD_NAME, self.codec.encode(mean), len(seeds), deadline)
        else:
            sent = self.gw.send(round, [leader], PAYLOAD_NAME, self._enc, 1, deadline)
            missing = self.gw.wait_for(round, [(leader, PAYLOAD_NAME)], deadline)
            if missing:
                raise TimeoutError("star: the mean did not come back from the leader")
            mean = self.gw.take(round, (leader, PAYLOAD_NAME))[0]
        t_end = time.monotonic()
        errors = {p: r.error for p, r in sent.items() if r.error}
        if errors:
            raise ConnectionError(f"star: sending failed: {errors}")
        out = {"t_end": t_end, "digest": digest(mean), "max_abs_err": self._check(mean, seeds),
               "bytes_sent": dict(self.gw.round_bytes.get(round, {}))}
        self.gw.skip(round)
        return out

    def op_reduce(
        self, schedule: str, round: int, seeds: dict[str, int], start_at: float, timeout_s: float
    ) -> dict[str, Any]:
        """One of the gateway's own dense schedules (``ring`` or ``two_shot``): contribute,
        reduce (reduce-scatter + all-gather), finish."""
        self.gw.schedule = schedule
        own = self.own
        parts = sorted(seeds)
        self._wait(start_at)
        deadline = time.time() + timeout_s
        self.gw.contribute(round, own, 1, deadline)
        rep = self.gw.reduce(round, parts, {p: 1 for p in parts}, deadline)
        t_end = time.monotonic()
        if not rep.ok:
            self.gw.abort(round)
            raise RuntimeError(f"{schedule}: {rep.error}")
        mean = self.gw.finish(round)
        return {"t_end": t_end, "digest": digest(mean), "max_abs_err": self._check(mean, seeds),
                "bytes_sent": rep.bytes_sent, "reduce_s": rep.seconds}


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n")[0])
    p.add_argument("--center", required=True)
    p.add_argument("--peers", default="", help="comma-separated names of the other centers")
    p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    p.add_argument("--numel", type=int, required=True, help="fp32 elements of a payload")
    p.add_argument("--seed", type=int, default=0, help="seed of this center's payload")
    p.add_argument("--chunk-bytes", type=int, default=2**20)
    args = p.parse_args(argv)
    _die_with_parent()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"{args.center} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    peer = Peer(args)
    try:
        peer.warm_up()
        _write({"ok": True, "address": peer.start()})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = {"ok": True, **peer.handle(json.loads(line))}
            except Exception as err:  # reported to the benchmark, which decides
                reply = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            _write(reply)
    finally:
        peer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
