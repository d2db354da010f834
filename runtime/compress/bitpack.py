"""Packing 0/1 bytes into bits (LSB first: element ``8i + j`` is bit ``j`` of byte ``i``)."""

from __future__ import annotations

import functools

import torch

_MAGIC = 0x0102040810204080


@functools.cache
def _mul64_works() -> bool:
    """Whether int64 multiplication wraps here as the ``mul64`` packing needs."""
    patterns = torch.tensor([[(b >> j) & 1 for j in range(8)] for b in range(256)], dtype=torch.uint8)
    try:
        got = (patterns.view(torch.int64).view(-1) * _MAGIC).bitwise_right_shift(56).to(torch.uint8)
    except RuntimeError:
        return False
    return bool(torch.equal(got, torch.arange(256).to(torch.uint8)))


def pack(bits: torch.Tensor, out: torch.Tensor, bittricks: bool, scratch: torch.Tensor) -> None:
    """Pack ``bits`` (bool or uint8 0/1, length a multiple of 8) into ``out`` (uint8).

    Args:
        bittricks: read eight bytes as one int64 and multiply by a magic constant (needs a
            wrapping int64 multiply; checked once); else eight strided additions.
        scratch: an int64 tensor of ``len(out)`` elements, for the int64 way.
    """
    u8 = bits.view(torch.uint8)
    if bittricks and _mul64_works():
        torch.mul(u8.view(torch.int64), _MAGIC, out=scratch)
        scratch.bitwise_right_shift_(56)
        out.copy_(scratch)
        return
    cols = u8.view(-1, 8)
    torch.add(cols[:, 0], cols[:, 1], alpha=2, out=out)
    for j in range(2, 8):
        out.add_(cols[:, j], alpha=1 << j)


@functools.cache
def sign_table(device: torch.device) -> torch.Tensor:
    """``table[b, j]`` is -1.0 where bit ``j`` of byte ``b`` is set, else +1.0."""
    t = torch.tensor([[-1.0 if (b >> j) & 1 else 1.0 for j in range(8)] for b in range(256)])
    return t.to(device)


def unpack_signs(packed: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """``out[8i + j]`` = -1 if bit ``j`` of ``packed[i]`` is set else +1 (float32).

    Args:
        scratch: an int64 tensor of ``len(packed)`` elements.
    """
    scratch.copy_(packed)
    torch.index_select(sign_table(packed.device), 0, scratch, out=out.view(-1, 8))
