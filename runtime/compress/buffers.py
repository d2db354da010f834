"""Reusable memory for codecs: a scratch workspace and a pool of wire buffers.

A codec's arithmetic on a 256 MiB tensor takes tens of milliseconds; a fresh 256 MiB
allocation costs as much again in page faults (the CPU allocator hands large blocks back to
the kernel on free). So codecs keep their temporaries in a :class:`Workspace` and lend their
outputs out of a :class:`BufferPool`.
"""

from __future__ import annotations

import threading

import torch


class Workspace:
    """Named scratch buffers, grown on demand and reused across calls.

    Not thread-safe: the owning codec serialises its calls.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 1-D tensor of ``numel`` elements (uninitialised) that stays valid until the
        next ``get`` of the same name, dtype and device."""
        key = (name, dtype, torch.device(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]

    def zeros(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.get(name, numel, dtype, device).zero_()

    def clear(self) -> None:
        self._bufs.clear()


class BufferPool:
    """Lends 1-D uint8 CPU buffers and takes them back.

    A payload encoded on an accelerator is copied into a *pinned* (page-locked) buffer: the
    device then writes it by DMA at the link's full rate, where a pageable buffer is filled
    through the driver's small staging buffers at a fraction of it (on an H200, pageable
    device-to-host copies held the codecs' encode at 14 GB/s of payload). Pinned and
    pageable buffers are pooled apart.

    Args:
        max_free: how many returned buffers of each kind to keep; beyond that the smallest
            are dropped.
    """

    def __init__(self, max_free: int = 4) -> None:
        self._free: dict[bool, list[torch.Tensor]] = {False: [], True: []}
        self._max_free = max_free
        self._lock = threading.Lock()
        self._pins = False  # any pinned buffer lent yet (CPU-only jobs never ask is_pinned)
        self._can_pin = True  # until pinning fails once (no accelerator runtime, a memlock limit)

    def take(self, nbytes: int, pinned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(view, buffer)``: ``view`` is ``nbytes`` long; give ``buffer`` back.
        ``pinned``: page-locked memory for an accelerator to copy into (pageable where
        pinning fails)."""
        with self._lock:
            free = self._free[pinned and self._can_pin]
            best = None
            for i, buf in enumerate(free):
                if buf.numel() >= nbytes and (best is None or buf.numel() < free[best].numel()):
                    best = i
            buf = free.pop(best) if best is not None else None
        if buf is None:
            # Whole 8-byte words, so that typed views of the buffer are always possible.
            size = max(-(-nbytes // 8) * 8, 8)
            buf = None
            if pinned and self._can_pin:
                try:
                    buf = torch.empty(size, dtype=torch.uint8, pin_memory=True)
                    self._pins = True
                except RuntimeError:  # no accelerator runtime to pin with: pageable will do
                    self._can_pin = False
            if buf is None:
                buf = torch.empty(size, dtype=torch.uint8)
        return buf[:nbytes], buf

    def give(self, buf: torch.Tensor) -> None:
        pinned = self._pins and bool(buf.is_pinned())
        with self._lock:
            free = self._free[pinned]
            free.append(buf)
            if len(free) > self._max_free:
                free.sort(key=lambda b: b.numel())
                del free[0]
