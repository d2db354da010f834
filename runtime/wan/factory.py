"""Builds a center's gateway from the launch config."""

from __future__ import annotations

import logging

from suanwang.runtime.config import JobConfig
from suanwang.runtime.groups import build_groups, fragment_bounds
from suanwang.runtime.strategies import center_strategy
from suanwang.runtime.wan.gateway import Gateway
from suanwang.runtime.wan.linkfaults import LinkFault, LinkFaults
from suanwang.runtime.wan.tls import TlsFiles
from suanwang.runtime.wan.transport import GrpcTransport, Identity

log = logging.getLogger(__name__)


def build_gateway(
    center: str,
    cfg: JobConfig,
    layout: list[tuple[int, str, tuple[int, ...]]],
    token: str,
    link_faults: tuple[LinkFault, ...] = (),
) -> Gateway:
    """The gateway of ``center`` for the job ``cfg``; ``layout`` is the workers' flat layout
    (see :mod:`suanwang.runtime.groups`); ``link_faults`` script faults on what it sends
    (drills and tests).

    Raises:
        ValueError: a TLS file is missing or unreadable (naming the config field).
    """
    tls = None
    if not cfg.wan.insecure:
        t = cfg.wan.tls
        assert t is not None  # the config validator guarantees it
        tls = TlsFiles.load(t.ca.format(center=center), t.cert.format(center=center), t.key.format(center=center))
    peers = [c.name for c in cfg.centers if c.name != center]
    identity = Identity(cfg.job.name, center, token, frozenset(peers))
    transport = GrpcTransport(identity, host=cfg.wan.host, chunk_bytes=cfg.wan.chunk_bytes, tls=tls)
    groups = build_groups(layout, cfg, salt=center)
    log.info("%s: %d payload groups: %s", center, len(groups), [(n, s) for n, _, s in groups])
    if link_faults:
        transport.faults = LinkFaults(center, link_faults)
    return Gateway(
        center=center,
        peers=peers,
        transport=transport,
        codec=cfg.codec.build(salt=center),
        groups=groups,
        fragments=fragment_bounds(layout, cfg.strategy.fragments) if cfg.strategy.kind == "streaming" else None,
        strategy=center_strategy(cfg),
        numel=sum(n for n, _, _ in groups),
        job_id=cfg.job.name,
        chunk_bytes=cfg.wan.chunk_bytes,
        max_payload_bytes=cfg.wan.max_payload_bytes,
        schedule=cfg.wan.schedule,
        bandwidth=lambda a, b: cfg.link(a, b).bandwidth_mbit,
    )
