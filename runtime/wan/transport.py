"""gRPC transport between center gateways.

Each gateway runs one ``grpc.aio`` server and one channel per peer, all on a private event
loop thread, so that the blocking gateway API (called from a Ray actor or a test) never
touches asyncio. Every call carries the job token, the job id, the protocol version and the
caller's center name as metadata; the server checks them before reading a byte of payload.
Payloads are streamed as chunks (:mod:`suanwang.runtime.wan.payload`) and validated on
arrival; a rejected payload is logged, counted and never delivered. A payload that fits in
one chunk goes as a single unary ``PushOne`` call instead of a ``Push`` stream: same checks,
same ack, about a quarter less CPU per payload on the two sides together (a streaming
round's int4 fragments are a few kB each).

Channel options (why each is set):

* message size limits just above one chunk: payloads of any size are streamed, so no
  gRPC 4 MiB surprise, and a peer cannot make us buffer a giant single message;
* keepalive every 30 s without calls, accepted by the server's ping policy
  (``min_recv_ping_interval_without_data_ms`` below the client's interval), so an idle WAN
  connection through a NAT or firewall stays open and a dead peer is noticed;
* BDP probing is left on (gRPC's default) so flow-control windows grow to the link's
  bandwidth-delay product.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from suanwang.runtime.compress import Encoded, PayloadError
from suanwang.runtime.wan.linkfaults import LinkFaults
from suanwang.runtime.wan.payload import Assembler, Expectation, Meta, to_chunks
from suanwang.runtime.wan.tls import TlsFiles, peer_names
from suanwang.v1 import wan_pb2, wan_pb2_grpc

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SERVICE_NAME = "suanwang.v1.Gateway"
MD_TOKEN = "x-suanwang-token"
MD_JOB = "x-suanwang-job"
MD_CENTER = "x-suanwang-center"
MD_VERSION = "x-suanwang-version"
# A payload up to this size on the wire and when decoded is decoded and checked on the
# event loop: for a small one the hand-over to a thread and back costs more than the work
# (an int4 fragment of the demo model, ~6 kB for ~12k values, decodes in ~0.15 ms). A larger
# one goes to a thread, so that the loop keeps serving the other peers meanwhile. Both
# bounds count: a sparse or lossless payload decodes to many times its wire size.
INLINE_DELIVER_BYTES = 64 * 1024
INLINE_DELIVER_VALUES = 64 * 1024


class Inbound(Protocol):
    """What a transport delivers incoming traffic to (the gateway)."""

    def expectation(self, sender: str) -> Expectation: ...

    def deliver(self, sender: str, header: wan_pb2.PayloadHeader, enc: Encoded, prechecked: bool = False) -> None:
        """Accept a complete payload; raise PayloadError to reject it. ``prechecked``: a raw
        fp32 payload whose values were all checked finite on arrival."""

    def state_payloads(self) -> list[tuple[Meta, Encoded]]:
        """This center's committed state, for a peer that rejoins."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who this gateway is and whom it accepts."""

    job_id: str
    center: str
    token: str
    peers: frozenset[str]


@dataclasses.dataclass
class SendResult:
    """Outcome of sending one payload to one peer."""

    peer: str
    bytes_sent: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclasses.dataclass
class TransportStats:
    bytes_sent: dict[str, int] = dataclasses.field(default_factory=dict)
    bytes_received: dict[str, int] = dataclasses.field(default_factory=dict)
    rejected: list[str] = dataclasses.field(default_factory=list)


def channel_options(chunk_bytes: int) -> list[tuple[str, Any]]:
    limit = chunk_bytes + 1 * 2**20
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(chunk_bytes: int) -> list[tuple[str, Any]]:
    return channel_options(chunk_bytes) + [
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
        ("grpc.so_reuseport", 0),
    ]


class _Servicer(wan_pb2_grpc.GatewayServicer):
    def __init__(self, transport: "GrpcTransport"):
        self.t = transport

    async def _auth(self, context: grpc.aio.ServicerContext) -> str:
        md = {k: v for k, v in context.invocation_metadata() or ()}
        ident = self.t.identity
        reason = None
        if md.get(MD_VERSION) != str(PROTOCOL_VERSION):
            reason = f"protocol version {md.get(MD_VERSION)!r}, this gateway speaks {PROTOCOL_VERSION}"
        elif md.get(MD_JOB) != ident.job_id:
            reason = f"job {md.get(MD_JOB)!r} is not this job"
        elif not hmac.compare_digest(md.get(MD_TOKEN, "").encode(), ident.token.encode()):
            reason = "bad job token"
        elif md.get(MD_CENTER) not in ident.peers:
            reason = f"center {md.get(MD_CENTER)!r} is not a peer of this job"
        elif self.t.tls is not None and md.get(MD_CENTER) not in peer_names(context, common_name_only=True):
            reason = (
                f"claims to be {md.get(MD_CENTER)!r} but its certificate names "
                f"{sorted(peer_names(context, common_name_only=True)) or 'nobody'}"
            )
        if reason is not None:
            msg = f"{ident.center}: refused a call from {context.peer()}: {reason}"
            log.warning(msg)
            self.t._record_reject(msg)
            code = (
                grpc.StatusCode.FAILED_PRECONDITION
                if reason.startswith("protocol")
                else grpc.StatusCode.UNAUTHENTICATED
            )
            await context.abort(code, reason)
        return md[MD_CENTER]

    async def Handshake(self, request, context):
        sender = await self._auth(context)
        if request.center != sender or request.job_id != self.t.identity.job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "handshake disagrees with metadata")
        return wan_pb2.HandshakeResponse(
            protocol_version=PROTOCOL_VERSION,
            job_id=self.t.identity.job_id,
            center=self.t.identity.center,
        )

    async def Push(self, request_iterator, context):
        return await self._receive(await self._auth(context), request_iterator)

    async def PushOne(self, request, context):
        sender = await self._auth(context)

        async def one():
            yield request

        return await self._receive(sender, one())

    async def _receive(self, sender: str, chunks) -> wan_pb2.PushAck:
        """Assemble, check and deliver one payload from ``chunks`` (an async iterator)."""
        inbound = self.t.inbound
        asm = Assembler(inbound.expectation(sender))
        nbytes = 0
        try:
            async for chunk in chunks:
                nbytes += chunk.ByteSize()
                asm.feed(chunk)
            header, enc = asm.finish()
            if nbytes <= INLINE_DELIVER_BYTES and math.prod(header.shape) <= INLINE_DELIVER_VALUES:
                inbound.deliver(sender, header, enc, asm.finite_checked)
            else:
                await asyncio.to_thread(inbound.deliver, sender, header, enc, asm.finite_checked)
        except PayloadError as err:
            msg = f"{self.t.identity.center}: rejected payload: {err}"
            log.warning(msg)
            self.t._record_reject(msg)
            return wan_pb2.PushAck(accepted=False, reason=str(err), bytes_received=nbytes)
        finally:
            self.t._count_received(sender, nbytes)
        return wan_pb2.PushAck(accepted=True, bytes_received=nbytes)

    async def Probe(self, request, context):
        await self._auth(context)
        return wan_pb2.ProbeResponse(padding=b"\0" * min(request.reply_bytes, self.t.chunk_bytes))

    async def FetchState(self, request, context):
        await self._auth(context)
        for meta, enc in await asyncio.to_thread(self.t.inbound.state_payloads):
            for chunk in to_chunks(meta, enc, self.t.chunk_bytes):
                yield chunk


class GrpcTransport:
    """Server plus peer channels of one gateway.

    Args:
        identity: this gateway's job, center, token and accepted peers.
        host: interface to listen on (``127.0.0.1`` embedded).
        port: port to listen on (0: any free port).
        chunk_bytes: chunk size for streamed payloads.
        tls: CA, certificate and key for mutual TLS; ``None`` means plaintext.
    """

    def __init__(
        self,
        identity: Identity,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_bytes: int = 2**20,
        tls: TlsFiles | None = None,
    ):
        self.identity = identity
        self.host = host
        self.port = port
        self.chunk_bytes = chunk_bytes
        self.tls = tls
        self.inbound: Inbound | None = None
        self.stats = TransportStats()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"wan-{identity.center}", daemon=True
        )
        self._server: grpc.aio.Server | None = None
        self._health: health.HealthServicer | None = None
        self.faults: LinkFaults | None = None
        self.links: dict[str, LinkEstimate] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, wan_pb2_grpc.GatewayStub] = {}
        self.address: str | None = None

    # ------------------------------------------------------------------ plumbing
    def _run(self, coro, timeout: float | None = None):
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def _record_reject(self, msg: str) -> None:
        with self._lock:
            self.stats.rejected.append(msg)

    def _count_received(self, peer: str, n: int) -> None:
        with self._lock:
            self.stats.bytes_received[peer] = self.stats.bytes_received.get(peer, 0) + n

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        i = self.identity
        return (
            (MD_TOKEN, i.token),
            (MD_JOB, i.job_id),
            (MD_CENTER, i.center),
            (MD_VERSION, str(PROTOCOL_VERSION)),
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self, inbound: Inbound, listen: str | None = None) -> str:
        """Start serving on ``listen`` (a gRPC bind target such as ``unix:/path``; default
        ``host:port``); returns the address peers dial."""
        self.inbound = inbound
        self._thread.start()
        return self._run(self._start(listen))

    async def _start(self, listen: str | None) -> str:
        self._server = grpc.aio.server(options=server_options(self.chunk_bytes))
        wan_pb2_grpc.add_GatewayServicer_to_server(_Servicer(self), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        bind = listen or f"{self.host}:{self.port}"
        if self.tls is not None:
            port = self._server.add_secure_port(bind, self.tls.server_credentials())
        else:
            port = self._server.add_insecure_port(bind)
        if port == 0:
            raise OSError(f"gateway {self.identity.center}: cannot listen on {bind}")
        await self._server.start()
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.address = bind if bind.startswith("unix:") else f"{self.host}:{port}"
        return self.address

    def connect(self, peers: dict[str, str], timeout: float = 30.0) -> dict[str, float]:
        """Open a channel to each peer and handshake; returns RTT seconds per peer.

        Raises:
            ConnectionError: a peer is unreachable or refuses the handshake.
        """
        return self._run(self._connect(peers, timeout))

    async def _connect(self, peers: dict[str, str], timeout: float) -> dict[str, float]:
        opts = channel_options(self.chunk_bytes)
        for name, addr in peers.items():
            if self.tls is not None:
                # the peer must present a certificate issued to its center name
                ch = grpc.aio.secure_channel(
                    addr,
                    self.tls.channel_credentials(),
                    options=opts + [("grpc.ssl_target_name_override", name)],
                )
            else:
                ch = grpc.aio.insecure_channel(addr, options=opts)
            self._channels[name] = ch
            self._stubs[name] = wan_pb2_grpc.GatewayStub(ch)

        async def hello(name: str) -> tuple[str, float]:
            req = wan_pb2.HandshakeRequest(
                protocol_version=PROTOCOL_VERSION,
                job_id=self.identity.job_id,
                center=self.identity.center,
                token=self.identity.token,
            )
            t0 = time.perf_counter()
            try:
                resp = await self._stubs[name].Handshake(
                    req, metadata=self._metadata(), timeout=timeout, wait_for_ready=True
                )
            except grpc.aio.AioRpcError as err:
                raise ConnectionError(
                    f"{self.identity.center}: handshake with {name} at {peers[name]} failed: "
                    f"{err.code().name}: {err.details()}"
                ) from None
            if resp.center != name or resp.job_id != self.identity.job_id:
                raise ConnectionError(
                    f"{self.identity.center}: {peers[name]} answered as {resp.center!r} of job "
                    f"{resp.job_id!r}, expected {name!r} of {self.identity.job_id!r}"
                )
            return name, time.perf_counter() - t0

        return dict(await asyncio.gather(*(hello(n) for n in peers)))

    def close(self, grace: float = 5.0) -> None:
        """Stop serving after draining in-flight calls for up to ``grace`` seconds."""
        if not self._thread.is_alive():
            return

        async def _close():
            if self._health is not None:
                # peers' health checks see us leave before in-flight calls finish draining
                self._health.enter_graceful_shutdown()
            if self._server is not None:
                await self._server.stop(grace)
            for ch in self._channels.values():
                await ch.close()

        try:
            self._run(_close(), timeout=grace + 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ traffic
    def send_batch(
        self, peers: Iterable[str], items: list[tuple[Meta, Encoded]], timeout: float
    ) -> dict[str, SendResult]:
        """Stream several payloads to each of ``peers``, all at once (gRPC multiplexes them
        on one connection per peer, so a batch costs about one round trip, not one per
        payload). Results are summed per peer; the first error is kept."""
        return self._run(self._send_all(list(peers), items, timeout))

    def send_batch_async(
        self, peers: Iterable[str], items: list[tuple[Meta, Encoded]], timeout: float
    ) -> Future:
        """:meth:`send_batch` without waiting: a future of its result. The payloads reach the
        peers about half a round trip before their acks come back; a schedule whose next
        step waits on what peers send, not on acks, joins the future at its end."""
        return asyncio.run_coroutine_threadsafe(self._send_all(list(peers), items, timeout), self._loop)

    async def _send_all(self, peers, items, timeout) -> dict[str, SendResult]:
        results = await asyncio.gather(
            *(self._send_one(p, meta, enc, timeout) for p in peers for meta, enc in items)
        )
        out: dict[str, SendResult] = {}
        for r in results:
            prev = out.get(r.peer)
            if prev is None:
                out[r.peer] = r
            else:
                prev.bytes_sent += r.bytes_sent
                prev.seconds = max(prev.seconds, r.seconds)
                prev.error = prev.error or r.error
        return out

    async def _send_one(self, peer: str, meta: Meta, enc: Encoded, timeout: float) -> SendResult:
        res = SendResult(peer)
        t0 = time.perf_counter()
        hits = {f.action: f for f in (self.faults.for_send(peer, meta.round, meta.name) if self.faults else [])}
        if "partition" in hits or "drop" in hits:
            res.error = "UNAVAILABLE: partitioned (fault injection)" if "partition" in hits else "dropped (fault injection)"
            return res
        if "delay" in hits:
            await asyncio.sleep(hits["delay"].seconds)
        stub = self._stubs.get(peer)
        if stub is None:
            res.error = f"no channel to {peer}"
            return res
        deadline = t0 + timeout
        counted = 0

        async def chunks():
            nonlocal counted
            throttle = hits.get("throttle")
            for c in to_chunks(meta, enc, self.chunk_bytes):
                if "corrupt" in hits and c.index == 0 and c.data:
                    c.data = bytes([c.data[0] ^ 0x40]) + c.data[1:]
                if throttle is not None:
                    await asyncio.sleep(len(c.data) * 8 / (throttle.rate_mbit * 1e6))
                counted += c.ByteSize()
                yield c

        async def push(left: float) -> wan_pb2.PushAck | None:
            """One copy of the payload; ``None``: its time ran out before it was sent."""
            if enc.data.numel() > self.chunk_bytes:
                return await stub.Push(chunks(), metadata=self._metadata(), timeout=left)
            # fits in one chunk: one unary call. Its time, like a stream's, includes a
            # throttle's pacing of the chunk, which here happens before the call.
            until = time.perf_counter() + left
            [one] = [c async for c in chunks()]
            if time.perf_counter() >= until:
                return None
            return await stub.PushOne(one, metadata=self._metadata(), timeout=until - time.perf_counter())

        copies = 2 if "duplicate" in hits else 1
        attempt = 0
        while True:
            try:
                for copy in range(copies):
                    left = deadline - time.perf_counter()
                    ack = await push(max(0.05, left))
                    if ack is None:
                        res.error = "DEADLINE_EXCEEDED: the deadline passed while the payload was paced (throttle)"
                        break
                    # A retry of a payload whose ack was lost finds it already delivered.
                    if ack.accepted or (attempt > 0 and ack.reason.endswith("duplicate")):
                        continue
                    if copy == 0:
                        res.error = f"refused by {peer}: {ack.reason}"
                break
            except grpc.aio.AioRpcError as err:
                transient = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                backoff = min(2.0, 0.1 * 2**attempt)
                if transient and time.perf_counter() + backoff < deadline:
                    log.info("%s: send to %s: %s; retry %d in %.1f s", self.identity.center, peer, err.code().name, attempt + 1, backoff)
                    attempt += 1
                    await asyncio.sleep(backoff)
                    continue
                res.error = f"{err.code().name}: {err.details()}"
                break
        res.seconds = time.perf_counter() - t0
        res.bytes_sent = counted
        with self._lock:
            self.stats.bytes_sent[peer] = self.stats.bytes_sent.get(peer, 0) + counted
            if res.error is None and counted > 64 * 1024:
                link = self.links.setdefault(peer, LinkEstimate())
                link.observe_transfer(counted, res.seconds)
        return res

    def fetch_state(
        self, peer: str, expect: Expectation, timeout: float
    ) -> list[tuple[wan_pb2.PayloadHeader, Encoded]]:
        """Download ``peer``'s committed state; every tensor validated like a payload."""
        return self._run(self._fetch_state(peer, expect, timeout))

    async def _fetch_state(self, peer, expect, timeout):
        out = []
        asm: Assembler | None = None
        call = self._stubs[peer].FetchState(
            wan_pb2.StateRequest(job_id=self.identity.job_id, center=self.identity.center),
            metadata=self._metadata(),
            timeout=timeout,
        )
        nbytes = 0
        async for chunk in call:
            nbytes += chunk.ByteSize()
            if chunk.HasField("header"):
                if asm is not None:
                    out.append(asm.finish())
                asm = Assembler(expect)
            if asm is None:
                raise PayloadError(f"state from {peer}: first chunk has no header")
            asm.feed(chunk)
        if asm is not None:
            out.append(asm.finish())
        self._count_received(peer, nbytes)
        return out

    def probe(self, peer: str, nbytes: int = 0, timeout: float = 10.0) -> float:
        """Round-trip seconds of a probe carrying ``nbytes`` each way."""

        async def _probe():
            t0 = time.perf_counter()
            await self._stubs[peer].Probe(
                wan_pb2.ProbeRequest(padding=b"\0" * nbytes, reply_bytes=nbytes),
                metadata=self._metadata(),
                timeout=timeout,
            )
            return time.perf_counter() - t0

        return self._run(_probe())

    def measure(self, peers: Iterable[str], probe_bytes: int = 256 * 1024, repeats: int = 3) -> dict[str, "LinkEstimate"]:
        """Probe each peer: RTT from the fastest of ``repeats`` empty probes, bandwidth from
        probes carrying ``probe_bytes`` each way (beyond the RTT)."""
        for peer in peers:
            rtt = min(self.probe(peer) for _ in range(repeats))
            big = min(self.probe(peer, min(probe_bytes, self.chunk_bytes)) for _ in range(repeats))
            with self._lock:
                link = self.links.setdefault(peer, LinkEstimate())
                link.rtt_ms = rtt * 1e3
                payload_bits = 2 * min(probe_bytes, self.chunk_bytes) * 8
                link.probe_mbit = payload_bits / max(big - rtt, 1e-6) / 1e6
        with self._lock:
            return {p: dataclasses.replace(self.links[p]) for p in peers if p in self.links}


@dataclasses.dataclass
class LinkEstimate:
    """What a gateway knows of its link to one peer.

    ``rtt_ms`` and ``probe_mbit`` come from probes at start; ``transfer_mbit`` is a moving
    average over real payload transfers (bytes / time from first byte to acknowledgement).
    """

    rtt_ms: float | None = None
    probe_mbit: float | None = None
    transfer_mbit: float | None = None
    transfers: int = 0

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        rate = nbytes * 8 / max(seconds, 1e-9) / 1e6
        self.transfer_mbit = rate if self.transfer_mbit is None else 0.8 * self.transfer_mbit + 0.2 * rate
        self.transfers += 1


TransportFactory = Callable[[Identity], GrpcTransport]
