"""The demo job's callables: the CLIP-style model on the offline digits pairs.

Kept out of ``runtime/`` (which knows no model) and out of ``models/`` (which knows no
runtime): this is where a launch config's ``model`` and ``data`` sections meet the code.
Module-level classes rather than closures, so Ray pickles them by reference.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from suanwang.models.clip import ClipConfig, ClipModel
from suanwang.models.data import Batches, eval_loss, load_digits_pairs, shard
from suanwang.runtime.config import JobConfig
from suanwang.runtime.functions import DataShard, JobFunctions


class ModelFactory:
    def __init__(self, size: str):
        self.size = size

    def __call__(self) -> nn.Module:
        return ClipModel(ClipConfig.preset(self.size))


class DigitsShard:
    """Training batches of one worker: its part of its center's shard of the train split."""

    def __init__(self, batch_size: int, eval_fraction: float):
        self.batch_size = batch_size
        self.eval_fraction = eval_fraction

    def __call__(self, s: DataShard) -> Iterator:
        train, _ = load_digits_pairs(s.seed, self.eval_fraction)
        mine = shard(shard(train, s.center_index, s.num_centers), s.rank, s.world_size)
        return iter(Batches(mine, min(self.batch_size, len(mine)), seed=s.seed * 1009 + s.center_index * 101 + s.rank))


def clip_batch_loss(model: nn.Module, batch) -> torch.Tensor:
    return model.loss(batch)


class HeldOutLoss:
    """Contrastive loss on the held-out split (the same split in every center)."""

    def __init__(self, seed: int, eval_fraction: float, batch_size: int):
        self.seed = seed
        self.eval_fraction = eval_fraction
        self.batch_size = batch_size
        self._data = None

    def __call__(self, model: nn.Module) -> float:
        if self._data is None:
            _, self._data = load_digits_pairs(self.seed, self.eval_fraction)
        return eval_loss(model, self._data, self.batch_size)


def demo_functions(cfg: JobConfig) -> JobFunctions:
    """The callables for a config whose model is ``clip`` and data ``digits``."""
    if cfg.model.name != "clip" or cfg.data.name != "digits":
        raise ValueError(f"model.name/data.name: no built-in job for {cfg.model.name}/{cfg.data.name}")
    return JobFunctions(
        model_fn=ModelFactory(cfg.model.size),
        data_fn=DigitsShard(cfg.data.batch_size, cfg.data.eval_fraction),
        loss_fn=clip_batch_loss,
        eval_fn=HeldOutLoss(cfg.job.seed, cfg.data.eval_fraction, cfg.data.eval_batch_size),
    )
