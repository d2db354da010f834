"""The user-space half of the WAN emulator: a delaying TCP relay and a measuring probe.

The kernel shapes bandwidth (``tc tbf`` on the veth links) but netem is not available to
add latency, so latency is added here. :mod:`suanwang.runtime.wan.emulator` starts one relay
process per center under ``ip netns exec``; a program in center A that wants to reach port P
of center B dials a relay listener on A's loopback, and the relay opens a TCP connection from
A's namespace to B's address, so its bytes cross the shaped A->B veth. Every chunk read from
either side is held for the link's one-way delay (rtt/2) before it is written to the other
side, so a request/response pair sees the full RTT, and the pair still sees the link rate
because the relay's outbound socket drains through the tbf qdisc.

Buffering is bounded per direction of each connection: the relay stops reading once it holds
``cap = rate * delay + slack`` bytes (:func:`relay_cap_bytes`), so a sender that outruns the
link is pushed back by TCP flow control after about one bandwidth-delay product, as it would be
on a real path, and the relay can still fill the link (throughput = min(rate, cap / delay)).
The relay's sockets (both hops) have their kernel buffers clamped to a few milliseconds of the
link rate, so that hidden kernel queues add little latency beyond the configured delay.

Opening a connection costs one RTT as it does on a real path: the first byte is released no
earlier than ``accept + 3 * delay`` (handshake, then the data's own trip), because the client's
``connect()`` returns at once against the local listener.

The relay is controlled with JSON lines on stdin (one reply line on stdout per request;
:class:`RelayClient` speaks it) and exits when stdin closes, so it never outlives the emulator
that started it::

    {"op": "listen", "host": "198.18.0.2", "port": 5000, "delay_s": 0.02, "rate_bps": 1.25e7}
    -> {"ok": true, "port": 41235}
    {"op": "close", "port": 41235}  -> {"ok": true}

The same file holds the probe that :meth:`WanEmulator.measure` runs: ``sink`` (in the
destination center) echoes pings and counts bulk bytes; ``probe`` (in the source center)
measures ping-pong RTT and then streams bulk data for a fixed time.

Run as ``python -m suanwang.runtime.wan.relay {relay|sink|probe} ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import select
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

# Chunks due within this of "now" go out in the same wakeup (the kernel's default timer slack
# is 50 us). Timers are precise because the relay's event loop uses select(), whose timeout
# has microsecond resolution; epoll rounds up to whole milliseconds, which would add ~1 ms to
# every RTT. select() limits a relay to fds below 1024, about 500 concurrent connections.
_EARLY_S = 0.00005
# Pause/resume hysteresis on the reading side, so that a full pipe does not toggle its
# selector registration for every read.
_HYSTERESIS = 64 * 1024
MODULE = "suanwang.runtime.wan.relay"


def relay_cap_bytes(rate_bps: float, delay_s: float) -> int:
    """Bytes one direction of one relayed connection may hold before it stops reading.

    ``rate * delay`` is what is in flight on the emulated wire; the slack (128 KiB plus 2 ms of
    the rate) absorbs event-loop wakeup jitter so that the relay never starves the link.

    Args:
        rate_bps: link rate in bytes per second.
        delay_s: one-way delay in seconds.
    """
    return int(math.ceil(rate_bps * delay_s)) + 128 * 1024 + int(rate_bps * 0.002)


def wan_socket_buffer_bytes(rate_bps: float) -> int:
    """SO_SNDBUF/SO_RCVBUF for the relay's sockets: 4 ms of the rate, at least 128 KiB.

    Neither hop (loopback, veth) has real delay, so a few milliseconds of data keep it busy
    even when the relay is briefly descheduled; larger (autotuned, up to tens of MB) buffers
    would only add queueing delay that the configured RTT does not account for.
    """
    return max(128 * 1024, int(rate_bps * 0.004))


class _Pipe:
    """One direction of a relayed connection: hold each chunk ``delay`` s, then write it."""

    def __init__(self, conn: "_Connection", delay: float, cap: int, not_before: float) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.delay = delay
        self.cap = cap
        self.not_before = not_before
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.eof_written = False

    def push(self, data: bytes | None) -> None:
        """Queue ``data`` (None means EOF) for release after the one-way delay."""
        when = max(self.loop.time() + self.delay, self.not_before)
        self.queue.append((when, data))
        if data:
            self.held += len(data)
        if self.timer is None:
            self._arm()
        if not self.paused and self.src is not None and self._occupancy() > self.cap:
            self.src.pause_reading()
            self.paused = True

    def attach_dst(self, dst: asyncio.Transport) -> None:
        self.dst = dst
        if self.queue and self.timer is None:
            self._arm()

    def _occupancy(self) -> int:
        return self.held + (self.dst.get_write_buffer_size() if self.dst is not None else 0)

    def _arm(self) -> None:
        self.timer = self.loop.call_at(self.queue[0][0] - _EARLY_S, self._release)

    def _release(self) -> None:
        self.timer = None
        dst = self.dst
        if dst is None or dst.is_closing():
            return
        horizon = self.loop.time() + _EARLY_S
        queue = self.queue
        while queue and queue[0][0] <= horizon:
            _, data = queue.popleft()
            if data is None:
                self.eof_written = True
                if dst.can_write_eof():
                    try:
                        dst.write_eof()
                    except OSError:  # the far side is already gone: nothing left to half-close
                        pass
                self.conn.maybe_close()
                return
            self.held -= len(data)
            dst.write(data)
        if queue:
            self._arm()
        self.maybe_resume()

    def maybe_resume(self) -> None:
        if self.paused and self.src is not None and self._occupancy() <= self.cap - _HYSTERESIS:
            self.paused = False
            if not self.src.is_closing():
                self.src.resume_reading()


class _Side(asyncio.Protocol):
    """Protocol of one socket of a relayed connection; forwards events to the connection."""

    def __init__(self, conn: "_Connection", inbound: bool) -> None:
        self.conn = conn
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # resume_writing must come whenever the write buffer alone keeps a pipe paused
        # (occupancy > cap - hysteresis with nothing left to release): high < cap - hysteresis.
        high = min(256 * 1024, self.conn.listener.cap - _HYSTERESIS - 1)
        transport.set_write_buffer_limits(high=high, low=high // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.pipe_from(self).push(data)

    def eof_received(self) -> bool:
        self.conn.pipe_from(self).push(None)
        return True  # keep the write half open: TCP half-close crosses the relay

    def resume_writing(self) -> None:
        self.conn.pipe_to(self).maybe_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self, exc)


class _Connection:
    """A client accepted on a listener, relayed to the listener's target, delayed each way."""

    def __init__(self, listener: "_Listener") -> None:
        self.listener = listener
        self.loop = listener.loop
        now = self.loop.time()
        d = listener.delay
        # The client's connect() already returned; on a real path it would return after one
        # RTT, so its first byte could not arrive before accept + 3 one-way delays.
        self.fwd = _Pipe(self, d, listener.cap, not_before=now + 3 * d)
        self.rev = _Pipe(self, d, listener.cap, not_before=0.0)
        self.inbound: _Side | None = None
        self.outbound: _Side | None = None
        self.closed = False

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.fwd if side.inbound else self.rev

    def pipe_to(self, side: _Side) -> _Pipe:
        return self.rev if side.inbound else self.fwd

    def side_made(self, side: _Side) -> None:
        if side.inbound:
            self.inbound = side
            self.fwd.src = side.transport
            self.rev.attach_dst(side.transport)  # type: ignore[arg-type]
            self.listener.conns.add(self)
            self.loop.create_task(self._dial())
        else:
            self.outbound = side
            self.rev.src = side.transport
            self.fwd.attach_dst(side.transport)  # type: ignore[arg-type]

    async def _dial(self) -> None:
        lst = self.listener
        buf = wan_socket_buffer_bytes(lst.rate_bps)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf)  # before connect: wscale
            sock.setblocking(False)
            await self.loop.sock_connect(sock, (lst.host, lst.port))
            if self.closed:
                sock.close()
                return
            await self.loop.create_connection(lambda: _Side(self, inbound=False), sock=sock)
        except OSError:
            sock.close()
            # The refusal (RST) would reach the client one round trip after its SYN.
            self.loop.call_later(2 * lst.delay, self.abort)

    def maybe_close(self) -> None:
        if self.fwd.eof_written and self.rev.eof_written:
            self.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closed:
            return
        other = self.outbound if side.inbound else self.inbound
        if exc is None and other is not None:
            # A clean close without a prior EOF callback (rare): pass it on as EOF.
            pipe = self.pipe_from(side)
            if not pipe.eof_written and not (pipe.queue and pipe.queue[-1][1] is None):
                pipe.push(None)
            return
        # A reset travels like data: the other side hears of it one delay later.
        self.loop.call_later(self.listener.delay, self.abort)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.inbound, self.outbound):
            if side is not None and side.transport is not None:
                side.transport.close()
        for pipe in (self.fwd, self.rev):
            if pipe.timer is not None:
                pipe.timer.cancel()
        self.listener.conns.discard(self)

    def abort(self) -> None:
        self.closed = True
        for side in (self.inbound, self.outbound):
            if side is not None and side.transport is not None:
                side.transport.abort()
        for pipe in (self.fwd, self.rev):
            if pipe.timer is not None:
                pipe.timer.cancel()
        self.listener.conns.discard(self)


class _Listener:
    """A loopback listener whose connections are relayed to one (host, port) of a peer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                 delay: float, rate_bps: float) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.delay = delay
        self.rate_bps = rate_bps
        self.cap = relay_cap_bytes(rate_bps, delay)
        self.conns: set[_Connection] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, bind: str) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Accepted sockets inherit these: without them the loopback hop's autotuned buffers
        # (up to tens of MB) would hide queues the configured delay does not account for.
        buf = wan_socket_buffer_bytes(self.rate_bps)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf)
        sock.bind((bind, 0))
        self.server = await self.loop.create_server(
            lambda: _Side(_Connection(self), inbound=True), sock=sock, backlog=128)
        return sock.getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            conn.abort()


async def _serve_relay(bind: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    listeners: dict[int, _Listener] = {}

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ok": True, "ready": True, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break  # the emulator is gone: so are we
        try:
            req = json.loads(line)
            if req["op"] == "listen":
                lst = _Listener(loop, req["host"], int(req["port"]),
                                float(req["delay_s"]), float(req["rate_bps"]))
                port = await lst.start(bind)
                listeners[port] = lst
                reply({"ok": True, "port": port})
            elif req["op"] == "close":
                lst = listeners.pop(int(req["port"]), None)
                if lst is not None:
                    lst.close()
                reply({"ok": True})
            else:
                reply({"ok": False, "error": f"unknown op {req['op']!r}"})
        except Exception as exc:  # report, keep serving: one bad request is not fatal
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    for lst in listeners.values():
        lst.close()


# ---------------------------------------------------------------------------------------
# Control client: what the emulator uses to start and drive a relay.


class EmulatorError(RuntimeError):
    """Creating, driving or measuring the emulated WAN failed."""


def read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """One line of ``proc``'s stdout (unbuffered, so later lines stay in the pipe).

    Raises:
        EmulatorError: nothing within ``timeout`` s, or the process exited.
    """
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise EmulatorError(f"{proc.args} printed no line within {timeout} s")
        part = os.read(fd, 1)  # replies are a few dozen bytes: byte reads are cheap enough
        if not part:
            raise EmulatorError(f"{proc.args} exited ({proc.wait()})")
        buf += part
    return buf


class JsonLinesProcess:
    """A child process driven by JSON lines: one request on its stdin, one reply line on
    its stdout. It exits when its stdin closes.

    A reply that does not come within its timeout leaves the channel out of step (a late
    reply would be read as the answer to the next request), so every later request fails.
    """

    def __init__(self, argv: Sequence[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._lock = threading.Lock()
        self._out_of_step = ""

    def _send(self, req: dict, timeout: float) -> dict:
        """Send ``req`` (``None``: send nothing) and return the next reply."""
        with self._lock:
            if self._out_of_step:
                raise EmulatorError(f"{self.name}: no answers after an earlier one was late ({self._out_of_step})")
            if req is not None:
                assert self.proc.stdin is not None
                try:
                    self.proc.stdin.write((json.dumps(req) + "\n").encode())
                    self.proc.stdin.flush()
                except (BrokenPipeError, ValueError):
                    raise EmulatorError(f"{self.name} is gone ({self.proc.poll()})") from None
            try:
                return json.loads(read_line(self.proc, timeout))
            except EmulatorError as err:
                self._out_of_step = str(err)
                raise

    def _request(self, req: dict, timeout: float = 10.0) -> dict:
        """:meth:`_send`, failing unless the reply says ``ok``."""
        msg = self._send(req, timeout)
        if not msg.get("ok"):
            raise EmulatorError(f"{self.name} refused {req.get('op')}: {msg.get('error')}")
        return msg

    def close(self, timeout: float = 2.0) -> None:
        """Stop the process (close its stdin; killed after ``timeout``)."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class RelayClient(JsonLinesProcess):
    """Starts a relay process and drives it over its stdin/stdout.

    Args:
        prefix: command prefix, e.g. ``["ip", "netns", "exec", ns]`` to run it in a namespace.
        python: interpreter to run the relay with.
        bind: address the relay's listeners bind to (in its namespace).
        wait: wait for the relay to be ready (else call :meth:`wait_ready`).
    """

    def __init__(self, prefix: Sequence[str] = (), *, python: str = sys.executable,
                 bind: str = "127.0.0.1", wait: bool = True) -> None:
        super().__init__([*prefix, python, "-m", MODULE, "relay", "--bind", bind], "relay")
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        msg = self._send(None, timeout)
        if not msg.get("ready"):
            raise EmulatorError(f"relay did not start: {msg}")

    def listen(self, host: str, port: int, *, delay_s: float, rate_bps: float) -> int:
        """Open a listener relaying to ``(host, port)``; returns the listener's port."""
        return int(self._request({"op": "listen", "host": host, "port": port,
                                  "delay_s": delay_s, "rate_bps": rate_bps})["port"])

    def unlisten(self, port: int) -> None:
        """Close the listener on ``port`` and abort its connections."""
        self._request({"op": "close", "port": port})


# ---------------------------------------------------------------------------------------
# Probe: what WanEmulator.measure runs at both ends.

_PING = b"P"
_BULK = b"B"
_PING_SIZE = 64


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("peer closed mid-message")
        buf += part
    return bytes(buf)


def _sink_conn(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == _PING:
            while True:
                msg = conn.recv(_PING_SIZE)
                if not msg:
                    return
                conn.sendall(msg)
        elif mode == _BULK:
            buf = bytearray(4 << 20)
            view = memoryview(buf)
            total = 0
            first = last = 0.0
            while True:
                n = conn.recv_into(view)
                if n == 0:
                    break
                last = time.monotonic()
                if total == 0:
                    first = last
                total += n
            report = {"bytes": total, "seconds": last - first}
            conn.sendall(json.dumps(report).encode())


def _serve_sink(host: str) -> None:
    srv = socket.create_server((host, 0))
    print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
    # The sink lives until its stdin closes (the emulator closes it after measuring).
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_sink_conn, args=(conn,), daemon=True).start()


def _probe(host: str, port: int, seconds: float, pings: int) -> dict:
    rtts = []
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(_PING)
        msg = b"x" * _PING_SIZE
        for i in range(pings + 1):
            t0 = time.monotonic()
            s.sendall(msg)
            _recv_exact(s, _PING_SIZE)
            if i:  # the first ping also pays for the connection setup
                rtts.append((time.monotonic() - t0) * 1e3)
    block = memoryview(bytes(1 << 20))
    sent = 0
    with socket.create_connection((host, port)) as s:
        s.sendall(_BULK)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
        report = b""
        while part := s.recv(65536):
            report += part
    sink = json.loads(report)
    return {"rtts_ms": rtts, "sent_bytes": sent, "sink_bytes": sink["bytes"],
            "sink_seconds": sink["seconds"],
            "rtt_ms": statistics.median(rtts) if rtts else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m suanwang.runtime.wan.relay")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_relay = sub.add_parser("relay", help="delaying relay, controlled by JSON lines on stdin")
    p_relay.add_argument("--bind", default="127.0.0.1")
    p_sink = sub.add_parser("sink", help="measurement sink: echoes pings, counts bulk bytes")
    p_sink.add_argument("--host", required=True)
    p_probe = sub.add_parser("probe", help="measurement source: pings, then bulk for --seconds")
    p_probe.add_argument("--host", required=True)
    p_probe.add_argument("--port", type=int, required=True)
    p_probe.add_argument("--seconds", type=float, default=2.0)
    p_probe.add_argument("--pings", type=int, default=10)
    args = parser.parse_args(argv)
    # The relay stands in for network hardware, and the probe/sink are the instruments that
    # measure it: none should lose the link's capacity to CPU contention from the programs
    # under test, so they ask for a better CPU share (root only; best effort).
    try:
        os.nice(-10)
    except OSError:
        pass
    if args.cmd == "relay":
        loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        try:
            loop.run_until_complete(_serve_relay(args.bind))
        finally:
            loop.close()
    elif args.cmd == "sink":
        _serve_sink(args.host)
    else:
        print(json.dumps(_probe(args.host, args.port, args.seconds, args.pings)), flush=True)


if __name__ == "__main__":
    main()
