"""Parameters and gradients as one flat fp32 vector: what crosses the WAN and what the
outer optimizer steps."""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch


def flatten(tensors: Iterable[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate ``tensors`` into one contiguous fp32 CPU vector (into ``out`` if given)."""
    tensors = list(tensors)
    numel = sum(t.numel() for t in tensors)
    if out is None:
        out = torch.empty(numel, dtype=torch.float32)
    elif out.numel() != numel:
        raise ValueError(f"flatten: out has {out.numel()} elements, tensors have {numel}")
    offset = 0
    for t in tensors:
        n = t.numel()
        out[offset : offset + n].copy_(t.detach().reshape(-1))
        offset += n
    return out


def unflatten_into(flat: torch.Tensor, tensors: Iterable[torch.Tensor]) -> None:
    """Copy consecutive slices of ``flat`` into ``tensors`` (in place, any device/dtype)."""
    tensors = list(tensors)
    numel = sum(t.numel() for t in tensors)
    if flat.numel() != numel:
        raise ValueError(f"unflatten: vector has {flat.numel()} elements, tensors need {numel}")
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view(t.shape))
            offset += n


def digest(flat: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes: equal digests mean bit-identical parameters."""
    t = flat.detach().contiguous().cpu()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
