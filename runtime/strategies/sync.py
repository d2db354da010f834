"""``sync``: every step, the centers' gradients are averaged across the WAN.

Hierarchical: the workers of a center all-reduce first (fast links), then only gateways
exchange. Each worker applies the global mean gradient with its own (inner) optimizer, so
replicas stay identical.
"""

from __future__ import annotations

import torch

from suanwang.runtime.strategies.base import CenterStrategy, LocalStats, WorkerStrategy


class SyncWorker(WorkerStrategy):
    def local_work(self, worker, round: int, steps: int | None = None, until: float | None = None) -> LocalStats:
        return worker.accumulate_gradient()  # one gradient per round, whatever the limits

    def contribution(self, worker) -> torch.Tensor:
        return worker.gradient_vector()

    def apply(self, worker, result: torch.Tensor | None) -> None:
        if result is None:  # abandoned round: this step's gradient is dropped everywhere
            return
        worker.step_with_gradient(result)

    def agreement_tensor(self, worker) -> torch.Tensor:
        return worker.params_vector()


class SyncCenter(CenterStrategy):
    """Nothing to add: the mean gradient is what the workers need."""

    def init(self, params: torch.Tensor) -> None:
        """Nothing to keep: the parameters live in the workers."""

    def post(self, mean: torch.Tensor, span: tuple[int, int] | None = None) -> torch.Tensor:
        return mean

    def rollback(self, span: tuple[int, int] | None = None) -> None:
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """Nothing: under ``sync`` the parameters live in the workers only (a center that
        misses a round is dropped for the rest of the job)."""
        return {}

    def load_state(self, state):
        if state:
            raise ValueError(f"strategy sync keeps no center state, got {sorted(state)}")
        return None
