"""Carry an embedded job's gateway traffic across the WAN emulator.

Embedded gateways are Ray actors in the host's network namespace; the emulated links live
between per-center namespaces (:mod:`suanwang.runtime.wan.emulator`). A bridge process runs
inside each center's namespace and joins the two worlds through Unix sockets, which are not
namespaced:

* inbound: it listens on TCP ``0.0.0.0:PORT`` inside the namespace and forwards every
  connection to the center's gateway, which listens on a Unix socket;
* outbound: for each peer it listens on a Unix socket and forwards every connection to
  ``emu.endpoint(center, peer, PORT)``, which leads to the peer's bridge across the link:
  through the delaying relay and the shaped veth (``latency="relay"``), or straight to the
  peer's address through the packet delayer (``latency="tun"``).

So a gateway-to-gateway byte takes the path a real WAN byte would: shaped to the link's
rate, delayed by its RTT, counted by the emulator. :class:`BridgedRoutes` starts the bridges and
tells the job where each gateway listens and whom it dials.

Run as a program: ``python -m suanwang.runtime.wan.bridge --port P --gateway UNIX
[--peer NAME=UNIX=HOST:PORT ...]``; it prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Sequence

_READ = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_READ):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(reader, writer, open_other) -> None:
    try:
        r2, w2 = await open_other()
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pump(reader, w2), _pump(r2, writer))


async def _serve(port: int, gateway: str, peers: list[tuple[str, str, str, int]]) -> None:
    servers = [
        await asyncio.start_server(
            lambda r, w: _splice(r, w, lambda: asyncio.open_unix_connection(gateway)), "0.0.0.0", port
        )
    ]
    for _name, path, host, pport in peers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        servers.append(
            await asyncio.start_unix_server(
                lambda r, w, h=host, p=pport: _splice(r, w, lambda: asyncio.open_connection(h, p)), path
            )
        )
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="suanwang-bridge")
    ap.add_argument("--port", type=int, required=True, help="TCP port inside the namespace (inbound)")
    ap.add_argument("--gateway", required=True, help="Unix socket of this center's gateway")
    ap.add_argument("--peer", action="append", default=[], help="NAME=UNIX_PATH=HOST:PORT (outbound)")
    args = ap.parse_args(argv)
    peers = []
    for spec in args.peer:
        name, path, hostport = spec.split("=", 2)
        host, port = hostport.rsplit(":", 1)
        peers.append((name, path, host, int(port)))
    try:
        asyncio.run(_serve(args.port, args.gateway, peers))
    except KeyboardInterrupt:
        pass
    return 0


class BridgedRoutes:
    """Routes of an embedded job through a running :class:`WanEmulator`.

    Use as a context manager around ``Job(..., routes=routes).run()``: it starts one bridge
    per center and removes them and their sockets on exit.

    Args:
        emu: a started emulator whose centers are the job's centers.
        port: the bridges' TCP port inside every namespace.
    """

    def __init__(self, emu, port: int = 47000):
        self.emu = emu
        self.port = port
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []

    def listen(self, center: str) -> str:
        """Where ``center``'s gateway listens."""
        return f"unix:{self.dir / (center + '.sock')}"

    def dial(self, src: str, dst: str) -> str:
        """What ``src``'s gateway dials to reach ``dst``."""
        return f"unix:{self.dir / f'{src}-{dst}.sock'}"

    def __enter__(self) -> "BridgedRoutes":
        centers = list(self.emu.centers)
        for c in centers:
            peers = []
            for p in centers:
                if p == c:
                    continue
                host, port = self.emu.endpoint(c, p, self.port)
                peers.append(f"{p}={self.dial(c, p)[5:]}={host}:{port}")
            argv = [sys.executable, "-m", "suanwang.runtime.wan.bridge", "--port", str(self.port),
                    "--gateway", self.listen(c)[5:]] + [x for spec in peers for x in ("--peer", spec)]
            proc = self.emu.popen(c, argv, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            line = proc.stdout.readline().strip()
            if line != "ready":
                self.__exit__(None, None, None)
                raise RuntimeError(f"bridge of {c} did not start (said {line!r})")
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
