"""What a user hands the runtime: plain callables, pickled to every worker.

The runtime never imports a model or a data set; it calls these.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class DataShard:
    """Which part of the data a worker owns.

    Data never leaves its center: ``center_index`` of ``num_centers`` picks the center's
    shard, ``rank`` of ``world_size`` the worker's part of it.
    """

    center: str
    center_index: int
    num_centers: int
    rank: int
    world_size: int
    seed: int


Batch = Any
"""A batch: a tensor or a tuple/list/dict of tensors; its first tensor's leading dimension
counts the samples."""


@dataclasses.dataclass
class JobFunctions:
    """The user's side of a job.

    Attributes:
        model_fn: builds the model (called after seeding, so every replica starts equal).
        data_fn: yields this shard's training batches forever.
        loss_fn: ``(model, batch) -> scalar loss``.
        eval_fn: ``(model) -> held-out loss``; run on one worker after a round.
        optimizer_fn: ``(parameters) -> inner optimizer``; ``None`` uses the config's.
    """

    model_fn: Callable[[], nn.Module]
    data_fn: Callable[[DataShard], Iterator[Batch]]
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor]
    eval_fn: Callable[[nn.Module], float] | None = None
    optimizer_fn: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    return batch


def batch_samples(batch: Batch) -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return batch_samples(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_samples(next(iter(batch.values())))
    raise TypeError(f"cannot count the samples of a batch of type {type(batch).__name__}")
