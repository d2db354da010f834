"""The gateway: the one place where a center meets the WAN.

For each round it encodes the center's contribution with the codec (error feedback state
kept here), streams it to every peer, collects and validates the peers' payloads until the
round's deadline, and, once the coordinator names the round's participants, reduces their
payloads (sample-weighted, fixed order) and runs the center half of the strategy (DiLoCo's
outer step). Every gateway does the same arithmetic on the same bytes, so every center ends
the round bit-identical without a second exchange.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import torch

from suanwang.runtime.compress import Codec, CodecState, Encoded, PayloadError
from suanwang.runtime.compress.registry import codec_for_enum
from suanwang.runtime.flat import digest
from suanwang.runtime.reduce import weighted_mean
from suanwang.runtime.strategies import CenterStrategy
from suanwang.runtime.wan.payload import Expectation, Meta
from suanwang.runtime.wan.transport import GrpcTransport, SendResult
from suanwang.v1 import wan_pb2

log = logging.getLogger(__name__)

PAYLOAD_NAME = "update"


@dataclasses.dataclass
class Contribution:
    """What a gateway reports after sending and collecting one round."""

    center: str
    round: int
    held: list[str]
    sent: dict[str, SendResult]
    encode_s: float
    wait_s: float
    payload_bytes: int


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
    ):
        self.center = center
        self.peers = sorted(peers)
        self.transport = transport
        self.codec = codec
        self.codec_state = CodecState()
        self.strategy = strategy
        self.numel = numel
        self.job_id = job_id
        self.chunk_bytes = chunk_bytes
        self.max_payload_bytes = max_payload_bytes
        self.round = 0  # the next round to commit
        self._cond = threading.Condition()
        # round -> sender -> (decoded tensor, samples)
        self._inbox: dict[int, dict[str, tuple[torch.Tensor, int]]] = {}
        self.bytes_sent_by_round: dict[int, dict[str, int]] = {}
        self.rejected: list[str] = []
        self.address: str | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> str:
        self.address = self.transport.start(self)
        return self.address

    def connect(self, addresses: dict[str, str]) -> dict[str, float]:
        return self.transport.connect({p: addresses[p] for p in self.peers})

    def init(self, params: torch.Tensor) -> str:
        """Adopt the job's initial parameters; returns their digest."""
        self.strategy.init(params)
        return digest(params)

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------ inbound (transport thread)
    def _round_ok(self, r: int) -> bool:
        # A peer may be one round ahead (it committed before we did); anything else is
        # stale, replayed or far in the future.
        return self.round <= r <= self.round + 1

    def _shape_of(self, name: str) -> tuple[int, ...]:
        if name != PAYLOAD_NAME:
            raise KeyError(name)
        return (self.numel,)

    def expectation(self, sender: str) -> Expectation:
        return Expectation(
            job_id=self.job_id,
            sender=sender,
            round_ok=self._round_ok,
            shape_of=self._shape_of,
            max_bytes=self.max_payload_bytes,
            chunk_bytes=self.chunk_bytes,
        )

    def deliver(self, sender: str, header: wan_pb2.PayloadHeader, enc: Encoded) -> None:
        """Decode and validate a complete payload; keep it for its round.

        Raises:
            PayloadError: undecodable, non-finite, duplicate, or the round has passed.
        """
        try:
            tensor = codec_for_enum(enc.codec)().decode(enc)
        except PayloadError:
            raise
        except (ValueError, RuntimeError) as err:
            raise PayloadError(f"payload from {sender}, round {header.round}: cannot decode: {err}") from None
        tensor = tensor.to(torch.float32).reshape(-1)
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise PayloadError(
                f"payload from {sender}, round {header.round}, tensor {header.name!r}: "
                f"{bad} non-finite values"
            )
        with self._cond:
            if not self._round_ok(header.round):
                raise PayloadError(f"payload from {sender}: round {header.round} closed while it arrived")
            box = self._inbox.setdefault(header.round, {})
            if sender in box:
                raise PayloadError(f"payload from {sender}, round {header.round}: duplicate")
            box[sender] = (tensor, int(header.samples))
            self._cond.notify_all()

    def state_payloads(self) -> list[tuple[Meta, Encoded]]:
        none = codec_for_enum(wan_pb2.CODEC_NONE)()
        with self._cond:
            last = self.round - 1
            state = {k: v.clone() for k, v in self.strategy.state().items()}
        out = []
        for name in sorted(state):
            enc = none.encode(state[name])
            enc.params = {"sha256": digest(state[name])}
            out.append((Meta(self.job_id, last, self.center, name, 0), enc))
        return out

    # ------------------------------------------------------------ the round (actor thread)
    def contribute(
        self, round: int, tensor: torch.Tensor, samples: int, deadline: float, live: list[str] | None = None
    ) -> Contribution:
        """Send this center's contribution for ``round`` to the live peers and collect
        theirs until ``deadline`` (a ``time.time()`` value).

        Args:
            live: the centers taking part in this round (default: all).
        """
        peers = [p for p in self.peers if live is None or p in live]
        if round != self.round:
            raise RuntimeError(f"{self.center}: contribute for round {round}, gateway is at {self.round}")
        t0 = time.perf_counter()
        own = tensor.detach().to(torch.float32).reshape(-1).cpu()
        if own.numel() != self.numel:
            raise ValueError(f"{self.center}: contribution has {own.numel()} elements, expected {self.numel}")
        enc = self.codec.encode(own, self.codec_state)
        # What the peers will decode, so that every center reduces the same values.
        decoded_own = codec_for_enum(enc.codec)().decode(enc).to(torch.float32).reshape(-1)
        encode_s = time.perf_counter() - t0
        with self._cond:
            self._inbox.setdefault(round, {})[self.center] = (decoded_own, int(samples))
        meta = Meta(self.job_id, round, self.center, PAYLOAD_NAME, int(samples))
        t1 = time.perf_counter()
        sent = self.transport.send(peers, meta, enc, timeout=max(0.1, deadline - time.time()))
        for peer, res in sent.items():
            if res.error:
                log.warning("%s: round %d: sending to %s failed: %s", self.center, round, peer, res.error)
        self.bytes_sent_by_round[round] = {p: r.bytes_sent for p, r in sent.items()}
        with self._cond:
            while True:
                box = self._inbox.get(round, {})
                if all(p in box for p in peers):
                    break
                left = deadline - time.time()
                if left <= 0:
                    missing = [p for p in peers if p not in box]
                    log.warning("%s: round %d: deadline passed without %s", self.center, round, missing)
                    break
                self._cond.wait(left)
            held = sorted(self._inbox.get(round, {}))
        return Contribution(
            self.center, round, held, sent, encode_s, time.perf_counter() - t1, enc.nbytes
        )

    def commit(self, round: int, participants: list[str]) -> torch.Tensor:
        """Reduce the participants' payloads for ``round`` and run the strategy's post step.

        Raises:
            RuntimeError: a participant's payload is not held (the coordinator must only
                name centers that every participant holds).
        """
        with self._cond:
            box = self._inbox.pop(round, {})
            missing = [p for p in participants if p not in box]
            if missing:
                raise RuntimeError(f"{self.center}: round {round}: no payload from {missing}")
            self.round = round + 1
            for r in [r for r in self._inbox if r < self.round]:
                del self._inbox[r]
        mean = weighted_mean({p: box[p] for p in participants})
        return self.strategy.post(mean)

    def skip(self, round: int) -> None:
        """This center missed ``round``: drop what it holds for it and move on."""
        with self._cond:
            self._inbox.pop(round, None)
            self.round = max(self.round, round + 1)

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
            t = codec_for_enum(enc.codec)().decode(enc)
            if digest(t) != enc.params.get("sha256"):
                raise PayloadError(f"state {header.name!r} from {peer}: digest mismatch")
            state[header.name] = t
        if "params" not in state:
            raise PayloadError(f"state from {peer} for round {round} has no params")
        with self._cond:
            self._inbox = {r: b for r, b in self._inbox.items() if r > round}
            self.round = round + 1
        return self.strategy.load_state(state)

    def stats(self) -> dict:
        t = self.transport.stats
        return {
            "bytes_sent": dict(t.bytes_sent),
            "bytes_received": dict(t.bytes_received),
            "rejected": list(t.rejected),
            "round": self.round,
        }
