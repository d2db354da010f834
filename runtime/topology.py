"""The link graph between centers and the schedules it favours."""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

from suanwang.v1 import wan_pb2

Bandwidth = Callable[[str, str], float]

# Codecs whose decoded values can be summed and re-encoded hop by hop without error
# feedback; the others (sparse, sign, low-rank) are all-gathered.
RING_CODECS = frozenset(
    {wan_pb2.CODEC_NONE, wan_pb2.CODEC_FP16, wan_pb2.CODEC_BF16, wan_pb2.CODEC_INT8, wan_pb2.CODEC_INT4}
)
SCHEDULES = ("auto", "gather", "two_shot", "ring")


def pick_schedule(configured: str, codec_kind: int, centers: int, matrix: bool = False) -> str:
    """The schedule a tensor group runs: ``gather`` for codecs that cannot be summed hop by
    hop (and matrix-shaped groups), when configured, or with fewer than 3 centers (then
    every schedule moves the same bytes); else the configured one, ``auto`` meaning
    ``two_shot``. On the full mesh of gateways two-shot moves what a ring moves,
    ``2 (n - 1) / n`` payloads per center, in two hops instead of ``2 (n - 1)``, spread
    over all of a center's links instead of one."""
    if configured not in SCHEDULES:
        raise ValueError(f"schedule {configured!r}: expected one of {', '.join(SCHEDULES)}")
    if codec_kind not in RING_CODECS or matrix or configured == "gather":
        return "gather"
    if configured == "auto":
        return "two_shot" if centers >= 3 else "gather"
    return configured


def ring_order(names: Sequence[str], bandwidth: Bandwidth) -> list[str]:
    """The ring through ``names`` whose slowest hop is fastest (ties: higher total, then
    name order), so a ring reduce is paced by the best bottleneck the links allow.

    Exhaustive up to 8 centers (first center fixed: rotations are the same ring), greedy
    nearest-fastest-neighbour beyond.
    """
    names = sorted(names)
    if len(names) <= 3:
        return names

    def score(order: Sequence[str]) -> tuple[float, float]:
        hops = [bandwidth(a, b) for a, b in zip(order, [*order[1:], order[0]])]
        return min(hops), sum(hops)

    if len(names) <= 8:
        first, rest = names[0], names[1:]
        # permutations come in lexicographic order and max keeps the first best one
        return max(([first, *p] for p in itertools.permutations(rest)), key=score)
    order, left = [names[0]], set(names[1:])
    while left:
        nxt = max(sorted(left), key=lambda c: bandwidth(order[-1], c))
        order.append(nxt)
        left.remove(nxt)
    return order


def segments(numel: int, parts: int) -> list[tuple[int, int]]:
    """Split ``numel`` elements into ``parts`` contiguous (start, stop) ranges of near-equal size."""
    if parts < 1:
        raise ValueError(f"segments: parts={parts}, expected >= 1")
    base, extra = divmod(numel, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out
