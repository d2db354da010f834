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


def worker_strategy(cfg: JobConfig) -> WorkerStrategy:
    s = cfg.strategy
    if isinstance(s, DilocoStrategy):
        return DilocoWorker(s.inner_steps)
    if isinstance(s, SyncStrategy):
        return SyncWorker()
    if isinstance(s, StreamingStrategy):
        return StreamingWorker(s.inner_steps // s.fragments, s.mix)
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
