"""Combining the contributions of centers: a sample-weighted mean in a fixed order.

Every gateway sums the same payloads in the same (sorted by center name) order with the
same operations, so every center computes bit-identical results without a second exchange.
"""

from __future__ import annotations

from typing import Mapping

import torch


def weighted_mean(
    contributions: Mapping[str, tuple[torch.Tensor, int]], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Sample-weighted mean of ``{center: (tensor, samples)}``.

    Raises:
        ValueError: no contributions, mismatched shapes, or no samples at all.
    """
    if not contributions:
        raise ValueError("weighted_mean: no contributions")
    names = sorted(contributions)
    total = sum(int(contributions[n][1]) for n in names)
    if total <= 0:
        raise ValueError(f"weighted_mean: total samples is {total}, expected > 0")
    shape = contributions[names[0]][0].shape
    if out is None:
        out = torch.zeros(shape, dtype=torch.float32)
    else:
        out.zero_()
    for n in names:
        t, samples = contributions[n]
        if t.shape != shape:
            raise ValueError(f"weighted_mean: {n} sent shape {tuple(t.shape)}, expected {tuple(shape)}")
        out.add_(t.to(out.dtype), alpha=int(samples) / total)
    return out
