"""The gateway: the one place where a center meets the WAN.

A round has three calls, driven by the coordinator:

1. :meth:`Gateway.contribute` takes the center's contribution. Under the ``gather``
   schedule it encodes it (error feedback state kept here), streams it to every live peer
   and collects theirs until the deadline; under ``two_shot`` and ``ring`` it only keeps
   it, since those schedules need the participants fixed first.
2. :meth:`Gateway.reduce`, once the coordinator has named the participants, computes their
   sample-weighted mean: locally from the gathered payloads, by a direct reduce-scatter +
   all-gather over the full mesh (:mod:`suanwang.runtime.wan.twoshot`: two hops), or by a
   ring reduce-scatter + all-gather (:mod:`suanwang.runtime.wan.ring`: ``2 (n - 1)``
   hops). It applies nothing yet.
3. :meth:`Gateway.finish` runs the center half of the strategy on that mean (DiLoCo's outer
   step) when every participant reduced; :meth:`Gateway.abort` rolls the round back when
   one failed, so the centers never diverge.

Every gateway reduces the same bytes in the same order (gather: fixed center order; two-shot
and ring: each segment is summed once by its owner and its encoded bytes passed on
unchanged), so centers end the round bit-identical without a second exchange.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from typing import Callable

import torch

from suanwang.runtime.compress import Codec, CodecState, Encoded, PayloadError
from suanwang.runtime.compress.registry import codec_for_enum
from suanwang.runtime.flat import digest
from suanwang.runtime.groups import cut_at_fragments
from suanwang.runtime.reduce import weighted_mean
from suanwang.runtime.strategies import CenterStrategy
from suanwang.runtime.topology import pick_schedule, ring_order, segments
from suanwang.runtime.wan.payload import Expectation, Meta
from suanwang.runtime.wan.transport import GrpcTransport, SendResult
from suanwang.v1 import wan_pb2

log = logging.getLogger(__name__)

PAYLOAD_NAME = "g0"  # the payload of the first (often only) tensor group
_NAME = re.compile(r"^g(\d+)(?:\.(rs|ag)\.(\d+)\.(\d+))?$")


@dataclasses.dataclass
class Group:
    """A tensor group: a contiguous range of the flat contribution with its own codec
    and error-feedback state. Its payloads are named ``g<index>``."""

    name: str
    start: int
    stop: int
    codec: Codec
    shape: tuple[int, ...] | None = None  # encoded with this shape (matrix codecs)
    state: CodecState = dataclasses.field(default_factory=CodecState)

    @property
    def numel(self) -> int:
        return self.stop - self.start


class ReduceError(RuntimeError):
    """A round's reduction could not complete (a peer failed mid-schedule)."""


@dataclasses.dataclass
class Contribution:
    """What a gateway reports after the first phase of a round."""

    center: str
    round: int
    schedule: str
    held: list[str]
    samples: int
    sent: dict[str, SendResult]
    encode_s: float
    wait_s: float


@dataclasses.dataclass
class ReduceReport:
    """What a gateway reports after reducing a round."""

    center: str
    round: int
    ok: bool
    error: str | None
    seconds: float
    bytes_sent: dict[str, int]
    fragment: int = 0


def decode(enc: Encoded) -> torch.Tensor:
    """Decode any codec's payload into a flat fp32 tensor."""
    return codec_for_enum(enc.codec)().decode(enc).to(torch.float32).reshape(-1)


class Gateway:
    """One center's WAN endpoint.

    Args:
        center: this center's name.
        peers: the other centers' names.
        transport: the transport to use (not yet started).
        codec: how contributions are encoded.
        strategy: the center half of the strategy.
        numel: length of the flat contribution vector.
        job_id: this job.
        chunk_bytes / max_payload_bytes: wire limits.
        schedule: ``gather``, ``two_shot``, ``ring`` or ``auto`` (see :func:`pick_schedule`).
        bandwidth: declared bandwidth between two centers (orders the ring).
        groups: ``[(numel, codec, shape or None), ...]`` splitting the contribution into
            consecutive tensor groups with their own codecs (default: one group with ``codec``).
            ``codec`` may be a factory, called once per payload group.
        fragments: streaming: round ``r`` carries only ``fragments[r % len(fragments)]``
            (contiguous ranges at tensor boundaries); groups are cut at their edges.
    """

    def __init__(
        self,
        center: str,
        peers: list[str],
        transport: GrpcTransport,
        codec: Codec,
        strategy: CenterStrategy,
        numel: int,
        job_id: str,
        chunk_bytes: int,
        max_payload_bytes: int,
        schedule: str = "auto",
        bandwidth: Callable[[str, str], float] | None = None,
        groups: list[tuple[int, Codec, tuple[int, ...] | None]] | None = None,
        fragments: list[tuple[int, int]] | None = None,
    ):
        pick_schedule(schedule, wan_pb2.CODEC_NONE, 1)  # refuses an unknown name here
        self.center = center
        self.peers = sorted(peers)
        self.transport = transport
        self.fragments = fragments or [(0, numel)]
        self.groups: list[Group] = []
        groups = groups or [(numel, codec, None)]
        for (size, c, shape), pieces in zip(groups, cut_at_fragments([g[0] for g in groups], self.fragments)):
            if shape is not None and math.prod(shape) != size:
                raise ValueError(f"{center}: group {len(self.groups)} has shape {shape} but {size} elements")
            if len(pieces) > 1 and shape is not None:
                raise ValueError(f"{center}: a fragment boundary cuts the tensor of shape {shape}")
            for a, b in pieces:
                # a group cut by fragments gets one payload group per piece; codec state
                # is per piece, so each piece keeps its own error feedback
                codec_piece = c() if callable(c) and not isinstance(c, Codec) else c
                self.groups.append(Group(f"g{len(self.groups)}", a, b, codec_piece, shape))
        covered = sum(g[0] for g in groups)
        if covered != numel:
            raise ValueError(f"{center}: tensor groups cover {covered} elements, the contribution has {numel}")
        self.strategy = strategy
        self.numel = numel
        self.job_id = job_id
        self.chunk_bytes = chunk_bytes
        self.max_payload_bytes = max_payload_bytes
        self.schedule = schedule
        self.bandwidth = bandwidth or (lambda a, b: 1.0)
        self.round = 0  # the next round to finish
        self._cond = threading.Condition()
        # round -> (sender, name) -> (decoded fp32 tensor, samples, encoded bytes as received)
        self._inbox: dict[int, dict[tuple[str, str], tuple[torch.Tensor, int, Encoded]]] = {}
        # round -> (own contribution, {group name: two_shot or ring} for the groups reduced
        # once the participants are known)
        self._own: dict[int, tuple[torch.Tensor, dict[str, str]]] = {}
        self._mean: dict[int, torch.Tensor] = {}
        self.round_bytes: dict[int, dict[str, int]] = {}
        self.address: str | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self, listen: str | None = None) -> str:
        """Listen (default: the transport's host, any port); returns the address to dial."""
        self.address = self.transport.start(self, listen)
        return self.address

    def connect(self, addresses: dict[str, str]) -> dict[str, float]:
        return self.transport.connect({p: addresses[p] for p in self.peers})

    def measure_links(self) -> dict:
        """Probe every peer (RTT, bandwidth); returns ``{peer: LinkEstimate}``."""
        return self.transport.measure(self.peers)

    def init(self, params: torch.Tensor) -> str:
        """Adopt the job's initial parameters; returns their digest."""
        self.strategy.init(params)
        return digest(params)

    def close(self) -> None:
        self.transport.close()

    def span_of(self, round: int) -> tuple[int, int]:
        """The range of the flat parameters that ``round`` carries."""
        return self.fragments[round % len(self.fragments)]

    def groups_of(self, round: int) -> list[Group]:
        a, b = self.span_of(round)
        return [g for g in self.groups if a <= g.start and g.stop <= b]

    def schedule_for(self, group: Group, centers: int) -> str:
        """:func:`pick_schedule` for ``group`` among ``centers`` centers."""
        return pick_schedule(self.schedule, group.codec.kind, centers, group.shape is not None)

    # ------------------------------------------------------------ inbound (transport threads)
    def _round_ok(self, r: int) -> bool:
        # A peer may be one round ahead (it finished before we did); anything else is
        # stale, replayed or far in the future.
        return self.round <= r <= self.round + 1

    def _shape_of(self, name: str) -> tuple[int, ...]:
        m = _NAME.match(name)
        if m and int(m.group(1)) < len(self.groups):
            group = self.groups[int(m.group(1))]
            numel = group.numel
            if m.group(2) is None:
                return group.shape or (numel,)
            n, s = int(m.group(3)), int(m.group(4))
            if 1 <= n <= len(self.peers) + 1 and s < n:
                start, stop = segments(numel, n)[s]
                return (stop - start,)
        raise KeyError(name)

    def expectation(self, sender: str) -> Expectation:
        return Expectation(
            job_id=self.job_id,
            sender=sender,
            round_ok=self._round_ok,
            shape_of=self._shape_of,
            max_bytes=self.max_payload_bytes,
            chunk_bytes=self.chunk_bytes,
        )

    def deliver(self, sender: str, header: wan_pb2.PayloadHeader, enc: Encoded, prechecked: bool = False) -> None:
        """Decode and validate a complete payload; keep it for its round.

        Raises:
            PayloadError: undecodable, non-finite, duplicate, or its round has passed.
        """
        where = f"payload from {sender}, round {header.round}, tensor {header.name!r}"
        if prechecked and enc.codec == wan_pb2.CODEC_NONE and enc.dtype == torch.float32 and not enc.params:
            # raw fp32, every value already checked finite as it arrived: the received
            # buffer (ours alone) is the tensor, no decode pass and no copy
            if enc.data.numel() != 4 * math.prod(enc.shape):
                raise PayloadError(f"{where}: {enc.data.numel()} bytes cannot hold shape {list(enc.shape)}")
            tensor = enc.data.view(torch.float32)
            self._keep(sender, header, tensor, enc)
            return
        try:
            tensor = decode(enc)
        except PayloadError as err:
            raise PayloadError(f"{where}: {err}") from None
        except (ValueError, RuntimeError) as err:
            raise PayloadError(f"{where}: cannot decode: {err}") from None
        want = math.prod(self._shape_of(header.name))
        if tensor.numel() != want:
            raise PayloadError(f"{where}: decoded to {tensor.numel()} values, expected {want}")
        # One read pass, no allocation: a float64 sum of float32 values cannot overflow, so
        # it is finite exactly when every value is. The none codec has checked already.
        if enc.codec != wan_pb2.CODEC_NONE and not bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
            raise PayloadError(f"{where}: {int((~torch.isfinite(tensor)).sum())} non-finite values")
        self._keep(sender, header, tensor, enc)

    def _keep(self, sender: str, header: wan_pb2.PayloadHeader, tensor: torch.Tensor, enc: Encoded) -> None:
        where = f"payload from {sender}, round {header.round}, tensor {header.name!r}"
        with self._cond:
            if not self._round_ok(header.round):
                raise PayloadError(f"{where}: the round closed while it arrived")
            box = self._inbox.setdefault(header.round, {})
            if (sender, header.name) in box:
                raise PayloadError(f"{where}: duplicate")
            box[(sender, header.name)] = (tensor, int(header.samples), enc)
            self._cond.notify_all()

    def state_payloads(self) -> list[tuple[Meta, Encoded]]:
        none = codec_for_enum(wan_pb2.CODEC_NONE)()
        with self._cond:
            last = self.round - 1
            state = {k: v.clone() for k, v in self.strategy.state().items()}
        out = []
        for name in sorted(state):
            enc = none.encode(state[name])
            out.append((Meta(self.job_id, last, self.center, name, 0, digest(state[name])), enc))
        return out

    # ------------------------------------------------------------ helpers for schedules
    def _count(self, round: int, sent: dict[str, SendResult]) -> None:
        box = self.round_bytes.setdefault(round, {})
        for peer, res in sent.items():
            box[peer] = box.get(peer, 0) + res.bytes_sent

    def send(self, round: int, peers: list[str], name: str, enc: Encoded, samples: int, deadline: float) -> dict[str, SendResult]:
        return self.send_batch(round, peers, [(Meta(self.job_id, round, self.center, name, int(samples)), enc)], deadline)

    def send_batch(self, round: int, peers: list[str], items: list[tuple[Meta, Encoded]], deadline: float) -> dict[str, SendResult]:
        sent = self.transport.send_batch(peers, items, timeout=max(0.1, deadline - time.time()))
        self._count(round, sent)
        for peer, res in sent.items():
            if res.error:
                log.warning("%s: round %d: sending to %s failed: %s", self.center, round, peer, res.error)
        return sent

    def send_async(self, round: int, peers: list[str], name: str, enc: Encoded, deadline: float):
        """Start sending one payload to ``peers``; :meth:`settle` the returned future. Its
        completion wakes :meth:`wait_for`, so a failed send need not wait out a deadline."""
        items = [(Meta(self.job_id, round, self.center, name, 0), enc)]
        fut = self.transport.send_batch_async(peers, items, timeout=max(0.1, deadline - time.time()))
        fut.add_done_callback(self._wake)
        return fut

    @staticmethod
    def send_failure(fut) -> str | None:
        """What went wrong with a finished :meth:`send_async` (``None``: nothing)."""
        if fut.cancelled():
            return "cancelled"
        if fut.exception() is not None:
            return f"{type(fut.exception()).__name__}: {fut.exception()}"
        return "; ".join(f"to {p}: {res.error}" for p, res in fut.result().items() if res.error) or None

    def settle(self, round: int, sends: list[tuple[str, object]], deadline: float) -> None:
        """Wait for ``(payload name, future)`` pairs from :meth:`send_async` until the
        deadline; count their bytes. A send still running then is cancelled.

        Raises:
            ReduceError: naming each payload whose send failed or did not finish.
        """
        errors = []
        for name, fut in sends:
            try:
                fut.result(timeout=max(0.0, deadline - time.time()))
            except Exception:  # noqa: BLE001 - reported below, as send_failure reads it
                pass
            if not fut.done():
                fut.cancel()
                errors.append(f"{name}: not finished in time (cancelled)")
                continue
            why = self.send_failure(fut)
            if not fut.cancelled() and fut.exception() is None:
                self._count(round, fut.result())
            if why:
                errors.append(f"{name}: {why}")
        if errors:
            raise ReduceError(f"round {round}: sending failed: {'; '.join(errors)}")

    def wait_for(
        self, round: int, keys: list[tuple[str, str]], deadline: float, stop: Callable[[], bool] | None = None
    ) -> list[tuple[str, str]]:
        """Wait until the inbox holds ``keys``, the deadline passes or ``stop()`` (checked on
        every wake-up) says to give up; returns the missing."""
        with self._cond:
            while True:
                box = self._inbox.get(round, {})
                missing = [k for k in keys if k not in box]
                left = deadline - time.time()
                if not missing or left <= 0 or (stop is not None and stop()):
                    return missing
                self._cond.wait(left)

    def _wake(self, *_: object) -> None:
        with self._cond:
            self._cond.notify_all()

    def take(self, round: int, key: tuple[str, str]) -> tuple[torch.Tensor, int, Encoded]:
        with self._cond:
            return self._inbox[round].pop(key)

    # ------------------------------------------------------------ the round (actor thread)
    def contribute(
        self, round: int, tensor: torch.Tensor, samples: int, deadline: float, live: list[str] | None = None
    ) -> Contribution:
        """Phase 1: hand over this center's contribution for ``round``.

        Args:
            round: must be the gateway's current round.
            tensor: the flat contribution.
            samples: samples the center processed (its weight).
            deadline: ``time.time()`` by which peers' payloads must have arrived (gather).
            live: the centers taking part in this round (default: all).
        """
        if round != self.round:
            raise RuntimeError(f"{self.center}: contribute for round {round}, gateway is at {self.round}")
        own = tensor.detach().to(torch.float32).reshape(-1).cpu()
        a, b = self.span_of(round)
        if own.numel() != b - a:
            raise ValueError(f"{self.center}: round {round} contribution has {own.numel()} elements, expected {b - a}")
        peers = [p for p in self.peers if live is None or p in live]
        active = self.groups_of(round)
        kinds = {g.name: self.schedule_for(g, len(peers) + 1) for g in active}
        later = {g.name: kinds[g.name] for g in active if kinds[g.name] != "gather"}
        gather = [g for g in active if g.name not in later]
        for g in active:
            if g.name in later and hasattr(g.codec, "sanitize"):
                # what gather's encode would refuse (or zero) is refused here, before any
                # error feedback or peer sees it, and the center sits the round out
                part = own[g.start - a : g.stop - a]
                clean = g.codec.sanitize(part)
                if clean is not part:
                    own = own.clone()
                    own[g.start - a : g.stop - a] = clean
        if later:
            self._own[round] = (own, later)
        encode_s, sent = 0.0, {}
        t1 = time.perf_counter()
        batch = []
        for g in gather:
            t0 = time.perf_counter()
            x = own[g.start - a : g.stop - a]
            enc = g.codec.encode(x.view(g.shape) if g.shape else x, g.state)
            # Keep what the peers will decode, so every center reduces the same values
            # (decoded outside the lock, which the transport's loop takes to deliver).
            mine = decode(enc)
            with self._cond:
                self._inbox.setdefault(round, {})[(self.center, g.name)] = (mine, int(samples), enc)
            encode_s += time.perf_counter() - t0
            batch.append((Meta(self.job_id, round, self.center, g.name, int(samples)), enc))
        if batch:
            sent = self.send_batch(round, peers, batch, deadline)
        missing = self.wait_for(round, [(p, g.name) for p in peers for g in gather], deadline)
        if missing:
            log.warning("%s: round %d: deadline passed without %s", self.center, round, sorted({m[0] for m in missing}))
        with self._cond:
            box = self._inbox.get(round, {})
            # with nothing gathered, every live center qualifies (the rest runs after)
            held = sorted(c for c in [self.center, *peers] if all((c, g.name) in box for g in gather))
        used = set(kinds.values())
        schedule = used.pop() if len(used) == 1 else "mixed" if used else "gather"
        return Contribution(
            self.center, round, schedule, held, int(samples), sent, encode_s,
            time.perf_counter() - t1 - encode_s,
        )

    def reduce(self, round: int, participants: list[str], samples: dict[str, int], deadline: float) -> ReduceReport:
        """Phase 2: the participants' sample-weighted mean, kept until finish/abort.

        Never raises for a peer's failure: the report says what went wrong.
        """
        t0 = time.perf_counter()
        try:
            own, later = self._own.pop(round, (None, {}))
            a, b = self.span_of(round)
            mean = torch.empty(b - a, dtype=torch.float32)
            if later:
                from suanwang.runtime.wan.ring import ring_allreduce
                from suanwang.runtime.wan.twoshot import two_shot_allreduce

                total = sum(samples[p] for p in participants)
                weights = {p: samples[p] / total for p in participants}
                if "ring" in later.values():
                    order = ring_order(participants, self.bandwidth)
            for g in self.groups_of(round):
                lo, hi = g.start - a, g.stop - a
                if later.get(g.name) == "ring":
                    mean[lo:hi] = ring_allreduce(self, round, order, g, own[lo:hi] * weights[self.center], deadline)
                elif g.name in later:
                    mean[lo:hi] = two_shot_allreduce(self, round, sorted(participants), g, own[lo:hi], weights, deadline)
                else:
                    mean[lo:hi] = self._gathered_mean(round, g.name, participants)
            self._mean[round] = mean
            ok, error = True, None
        except (ReduceError, PayloadError, KeyError) as err:
            ok, error = False, f"{type(err).__name__}: {err}"
            log.warning("%s: round %d: reduce failed: %s", self.center, round, error)
        return ReduceReport(
            self.center, round, ok, error, time.perf_counter() - t0, dict(self.round_bytes.get(round, {})),
            round % len(self.fragments),
        )

    def _gathered_mean(self, round: int, name: str, participants: list[str]) -> torch.Tensor:
        with self._cond:
            box = self._inbox.get(round, {})
            missing = [p for p in participants if (p, name) not in box]
            if missing:
                raise ReduceError(f"round {round}: no {name} payload from {missing}")
            picked = {p: box[(p, name)][:2] for p in participants}
        return weighted_mean(picked)

    def _close_round(self, round: int) -> None:
        with self._cond:
            self.round = max(self.round, round + 1)
            for r in [r for r in self._inbox if r < self.round]:
                del self._inbox[r]
            self._own = {r: v for r, v in self._own.items() if r >= self.round}
            self._mean = {r: v for r, v in self._mean.items() if r >= self.round}
            # byte counts are read by the round's reduce report; older ones are history
            self.round_bytes = {r: v for r, v in self.round_bytes.items() if r >= self.round - 1}

    def finish(self, round: int) -> torch.Tensor:
        """Phase 3: apply the strategy's post step to the round's mean; returns what the
        center's workers load."""
        mean = self._mean.pop(round)
        self._close_round(round)
        return self.strategy.post(mean, self.span_of(round))

    def abort(self, round: int) -> torch.Tensor | None:
        """Phase 3 when some participant failed to reduce: nothing is applied; returns what
        the workers load to undo the round (``None``: nothing to undo)."""
        self._close_round(round)
        return self.strategy.rollback(self.span_of(round))

    def skip(self, round: int) -> None:
        """This center missed ``round``: drop what it holds for it and move on."""
        self._close_round(round)

    def resync_from(self, peer: str, round: int, timeout: float = 60.0) -> torch.Tensor:
        """Fetch a peer's committed state after ``round``, verify its digests, adopt it."""
        expect = Expectation(
            job_id=self.job_id,
            sender=peer,
            round_ok=lambda r: r == round,
            shape_of=lambda name: (self.numel,),
            max_bytes=self.max_payload_bytes,
            chunk_bytes=self.chunk_bytes,
        )
        state = {}
        for header, enc in self.transport.fetch_state(peer, expect, timeout):
            t = decode(enc)
            if digest(t) != header.sha256:
                raise PayloadError(f"state {header.name!r} from {peer}: digest mismatch")
            state[header.name] = t
        if "params" not in state:
            raise PayloadError(f"state from {peer} for round {round} has no params")
        self._close_round(round)
        return self.strategy.load_state(state)

    def save(self, path: str) -> None:
        """Write the center's WAN-side state: strategy state (global parameters, outer
        momentum), codec state per tensor group, and the round."""
        from suanwang.runtime.checkpoint import save_atomic

        with self._cond:
            sd = {
                "round": self.round,
                "strategy": {k: v.clone() for k, v in self.strategy.state().items()},
                "codecs": [g.state.state_dict() for g in self.groups],
            }
        save_atomic(sd, path)

    def load(self, path: str) -> int:
        """Restore a :meth:`save`; returns the next round.

        Raises:
            ValueError: the file was written for other tensor groups (naming the file).
        """
        sd = torch.load(path, weights_only=True)
        if len(sd["codecs"]) != len(self.groups):
            raise ValueError(f"checkpoint {path}: {len(sd['codecs'])} tensor groups, this job has {len(self.groups)}")
        with self._cond:
            if sd["strategy"]:
                self.strategy.load_state(sd["strategy"])
            for g, cs in zip(self.groups, sd["codecs"]):
                g.state = CodecState.from_state_dict(cs)
            self.round = int(sd["round"])
            self._inbox.clear()
        return self.round

    def global_params(self) -> torch.Tensor:
        """A copy of the global parameters (diloco, streaming), for evaluation."""
        with self._cond:
            return self.strategy.state()["params"].clone()

    def stats(self) -> dict:
        t = self.transport.stats
        return {
            "bytes_sent": dict(t.bytes_sent),
            "bytes_received": dict(t.bytes_received),
            "rejected": list(t.rejected),
            "round": self.round,
            "links": {p: dataclasses.asdict(e) for p, e in self.transport.links.items()},
            "faults_fired": list(self.transport.faults.fired) if self.transport.faults else [],
        }
