"""How inner steps and WAN rounds interleave.

A strategy has two halves. The worker half runs inside every worker of a center: it does
the local work of a round, says what the center contributes (a pseudo-gradient, a gradient)
and applies what the round produced. The center half runs in the gateway: it turns the
cross-center mean into what is broadcast back (DiLoCo's outer step; identity for ``sync``)
and holds the state a rejoining center fetches.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from suanwang.runtime.worker import Worker


@dataclasses.dataclass
class LocalStats:
    """What a center's workers did in one round (already summed over the center)."""

    steps: int
    samples: int
    loss: float
    compute_s: float
    # samples the round's contribution stands for, its weight in the cross-center mean
    # (None: ``samples``); under streaming a fragment's pseudo-gradient spans F slots
    weight: int | None = None

    @property
    def contribution_weight(self) -> int:
        return self.samples if self.weight is None else self.weight


class WorkerStrategy(abc.ABC):
    """The worker half of a strategy."""

    # Whether a replica's parameters hold more than the agreement tensor (streaming's
    # local progress): then each worker also hashes its own, to be compared within its
    # center. Otherwise the agreed digest, compared across every worker, covers them.
    keeps_local_progress = False

    @abc.abstractmethod
    def local_work(self, worker: "Worker", round: int, steps: int | None = None, until: float | None = None) -> LocalStats:
        """Do this round's computation (inner steps and intra-center all-reduces): ``steps``
        inner steps (``None``: the strategy's own count), stopping early at the wall-clock
        deadline ``until`` (see :meth:`Worker.train_steps`)."""

    @abc.abstractmethod
    def contribution(self, worker: "Worker") -> torch.Tensor:
        """The flat fp32 tensor this center sends (read on the center's leader)."""

    @abc.abstractmethod
    def apply(self, worker: "Worker", result: torch.Tensor | None) -> None:
        """Apply the round's broadcast result to this worker's replica (``None``: the
        round was abandoned and there is nothing to apply)."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep of this strategy's worker-side state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def agreement_tensor(self, worker: "Worker") -> torch.Tensor:
        """What must be bit-identical in every center after a round (default: the global
        parameters the worker last received)."""
        return worker.round_start

    def eval_tensor(self, worker: "Worker") -> torch.Tensor | None:
        """Parameters to evaluate instead of the replica's own (``None``: the replica's)."""
        return None


class CenterStrategy(abc.ABC):
    """The gateway half of a strategy."""

    @abc.abstractmethod
    def init(self, params: torch.Tensor) -> None:
        """Start from the job's initial parameters (identical in every center)."""

    @abc.abstractmethod
    def post(self, mean: torch.Tensor, span: tuple[int, int] | None = None):
        """Turn the cross-center mean (of ``params[span]`` when a span is given) into what
        is broadcast to this center's workers."""

    @abc.abstractmethod
    def rollback(self, span: tuple[int, int] | None = None):
        """What the workers load when a round is abandoned (``None``: nothing to undo)."""

    @abc.abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """State that a rejoining center copies (must make it bit-identical to this one)."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Adopt a peer's state; returns the tensor to broadcast to the workers."""
