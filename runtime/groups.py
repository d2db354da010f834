"""Tensor groups: which parameters share a payload and a codec on the WAN.

Parameters are laid out in the flat contribution config group by config group (model order
inside each), so every payload group is one contiguous range. A config group becomes one
payload group, except under a codec that needs each tensor's shape (``powersgd`` views a
tensor as a matrix): there every tensor of at least ``min_compress_numel`` elements is its
own payload group, and runs of smaller tensors are merged and sent uncompressed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from typing import Callable, Sequence

from suanwang.runtime.compress import Codec, make_codec
from suanwang.runtime.config import JobConfig

PER_TENSOR_CODECS = frozenset({"powersgd"})

LayoutEntry = tuple[int, str, tuple[int, ...]]
"""(config group index, parameter name, shape), in flat-layout order."""


def group_of(name: str, cfg: JobConfig) -> int:
    """Index of the config group of parameter ``name``: 1 + the first matching
    ``codec_groups`` entry, or 0 (the default ``codec``)."""
    for i, g in enumerate(cfg.codec_groups):
        if fnmatch.fnmatchcase(name, g.match):
            return i + 1
    return 0


def group_order(names: Sequence[str], cfg: JobConfig) -> tuple[list[int], list[int]]:
    """Parameter indices sorted by config group (stable), and each one's group index."""
    groups = [group_of(n, cfg) for n in names]
    order = sorted(range(len(names)), key=lambda i: groups[i])
    return order, [groups[i] for i in order]


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """One payload group: ``numel`` consecutive elements of the flat layout."""

    config_index: int
    numel: int
    shape: tuple[int, ...] | None = None  # one tensor, encoded with its shape
    dense: bool = False  # small tensors of a per-tensor codec, sent uncompressed


def plan_groups(layout: Sequence[LayoutEntry], cfg: JobConfig) -> list[GroupPlan]:
    specs = [cfg.codec] + [g.codec for g in cfg.codec_groups]
    out: list[GroupPlan] = []
    for cidx, _name, shape in layout:
        spec = specs[cidx]
        numel = math.prod(shape)
        per_tensor = spec.kind in PER_TENSOR_CODECS
        if per_tensor and numel >= max(spec.min_compress_numel, 1) and len(shape) >= 2:
            out.append(GroupPlan(cidx, numel, tuple(shape)))
            continue
        last = out[-1] if out else None
        if last is not None and last.config_index == cidx and last.shape is None and last.dense == per_tensor:
            out[-1] = dataclasses.replace(last, numel=last.numel + numel)
        else:
            out.append(GroupPlan(cidx, numel, None, per_tensor))
    return out


def build_groups(
    layout: Sequence[LayoutEntry], cfg: JobConfig, salt: str | None = None
) -> list[tuple[int, Callable[[], Codec], tuple[int, ...] | None]]:
    """``[(elements, codec factory, shape or None)]`` for the gateway, in layout order (a
    factory, because a group cut by streaming fragments needs one codec per piece);
    ``salt``: the center's name, mixed into the codecs' seeds (see ``CodecConfig.build``)."""
    specs = [cfg.codec] + [g.codec for g in cfg.codec_groups]
    out = []
    for g in plan_groups(layout, cfg):
        if g.dense:
            factory = functools.partial(make_codec, "none")
        else:
            factory = functools.partial(specs[g.config_index].build, salt)
        out.append((g.numel, factory, g.shape))
    return out


def fragment_bounds(layout: Sequence[LayoutEntry], fragments: int) -> list[tuple[int, int]]:
    """Cut the flat layout into ``fragments`` contiguous ranges of near-equal size, at
    parameter boundaries (a tensor is never split across fragments).

    Raises:
        ValueError: there are fewer parameters than fragments.
    """
    sizes = [math.prod(shape) for _, _, shape in layout]
    if fragments > len(sizes):
        raise ValueError(f"strategy.fragments: {fragments} fragments but only {len(sizes)} parameter tensors")
    total = sum(sizes)
    bounds, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        cuts_left = fragments - 1 - len(bounds)
        if cuts_left and acc > start:
            ideal = total * (len(bounds) + 1) / fragments
            tensors_left = len(sizes) - i  # including this one
            # cut before this tensor if that lands nearer the ideal boundary, or if every
            # remaining tensor must open a fragment of its own
            if abs(acc - ideal) <= abs(acc + n - ideal) or tensors_left == cuts_left:
                bounds.append((start, acc))
                start = acc
        acc += n
    bounds.append((start, total))
    return bounds


def cut_at_fragments(sizes: Sequence[int], fragments: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Per group of ``sizes`` elements (consecutive in the flat layout), the ranges it
    becomes once cut at every fragment edge: a group that a streaming fragment boundary
    crosses is sent as one payload group per piece. ``fragments`` may be empty (no cut)."""
    cuts = sorted({x for span in fragments for x in span})
    out, start = [], 0
    for size in sizes:
        inner = [x for x in cuts if start < x < start + size]
        out.append(list(zip([start, *inner], [*inner, start + size])))
        start += size
    return out
