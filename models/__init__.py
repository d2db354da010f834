"""Multimodal models and offline data sets: plain ``nn.Module``s, no runtime imports."""

from suanwang.models.clip import ClipConfig, ClipModel, clip_loss
from suanwang.models.data import (
    Batch,
    Batches,
    PairDataset,
    Tokenizer,
    digits_tokenizer,
    eval_loss,
    load_digits_pairs,
    shard,
)

__all__ = [
    "Batch",
    "Batches",
    "ClipConfig",
    "ClipModel",
    "PairDataset",
    "Tokenizer",
    "clip_loss",
    "digits_tokenizer",
    "eval_loss",
    "load_digits_pairs",
    "shard",
]
