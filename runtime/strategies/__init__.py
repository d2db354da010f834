"""Strategies: ``sync`` and ``diloco`` (``streaming`` builds on diloco)."""

from __future__ import annotations

from suanwang.runtime.config import DilocoStrategy, JobConfig, StreamingStrategy, SyncStrategy
from suanwang.runtime.strategies.base import CenterStrategy, LocalStats, WorkerStrategy
from suanwang.runtime.strategies.diloco import DilocoCenter, DilocoWorker
from suanwang.runtime.strategies.streaming import StreamingCenter, StreamingWorker
from suanwang.runtime.strategies.sync import SyncCenter, SyncWorker

__all__ = [
    "CenterStrategy",
    "LocalStats",
    "WorkerStrategy",
    "worker_strategy",
    "center_strategy",
]


def worker_strategy(cfg: JobConfig, center: str | None = None) -> WorkerStrategy:
    """The worker half for a worker of ``center`` (which may run its own inner steps)."""
    s = cfg.strategy
    if isinstance(s, DilocoStrategy):
        return DilocoWorker(cfg.center_inner_steps(center))
    if isinstance(s, SyncStrategy):
        return SyncWorker()
    if isinstance(s, StreamingStrategy):
        return StreamingWorker(cfg.center_inner_steps(center), s.mix)
    raise ValueError(f"strategy.kind: unsupported {s.kind!r}")


def center_strategy(cfg: JobConfig) -> CenterStrategy:
    s = cfg.strategy
    if isinstance(s, DilocoStrategy):
        return DilocoCenter(s.outer_lr, s.outer_momentum, s.nesterov)
    if isinstance(s, SyncStrategy):
        return SyncCenter()
    if isinstance(s, StreamingStrategy):
        return StreamingCenter(s.outer_lr, s.outer_momentum, s.nesterov)
    raise ValueError(f"strategy.kind: unsupported {s.kind!r}")
