"""Tensor groups: which parameters share a codec on the WAN.

Parameters are laid out in the flat contribution group by group (in model order inside a
group), so each group is one contiguous range and one payload.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

from suanwang.runtime.compress import Codec
from suanwang.runtime.config import JobConfig


def group_of(name: str, cfg: JobConfig) -> int:
    """Index of the group of parameter ``name``: 1 + the first matching ``codec_groups``
    entry, or 0 (the default ``codec``)."""
    for i, g in enumerate(cfg.codec_groups):
        if fnmatch.fnmatchcase(name, g.match):
            return i + 1
    return 0


def group_order(names: Sequence[str], cfg: JobConfig) -> tuple[list[int], list[int]]:
    """Returns ``(order, sizes_index)``: parameter indices sorted by group (stable), and the
    group index of each parameter in that order."""
    groups = [group_of(n, cfg) for n in names]
    order = sorted(range(len(names)), key=lambda i: groups[i])
    return order, [groups[i] for i in order]


def group_sizes(names: Sequence[str], numels: Sequence[int], cfg: JobConfig) -> list[tuple[int, int]]:
    """``[(group index, elements)]`` for the non-empty groups, in layout order."""
    order, gidx = group_order(names, cfg)
    sizes: dict[int, int] = {}
    for i, g in zip(order, gidx):
        sizes[g] = sizes.get(g, 0) + numels[i]
    return sorted(sizes.items())


def group_codecs(sizes: list[tuple[int, int]], cfg: JobConfig) -> list[tuple[int, Codec]]:
    """``[(elements, codec)]`` for the gateway, one per non-empty group."""
    specs = [cfg.codec] + [g.codec for g in cfg.codec_groups]
    return [(n, specs[g].build()) for g, n in sizes]
