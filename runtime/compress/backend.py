"""Which kernel variant a codec runs, by the device its tensor lives on.

All kernels are plain torch ops, so the same code runs on CPU, CUDA and Ascend NPU; what
differs per device is small and lives in :class:`Backend`:

* ``chunk_elems``: codecs stream over a tensor in chunks of this many elements with scratch
  buffers reused from chunk to chunk. On CPU a chunk (4 MiB of fp32) stays in cache between
  the ops of one chunk, which makes a sequence of eager ops nearly as cheap as one fused
  kernel; on accelerators big chunks only bound the scratch memory.
* ``bittricks``: whether kernels may treat float32 bits as integers (little-endian
  layout, wrapping int64 multiply, integer shifts), as CPU and CUDA allow: eight 0/1 bytes
  read as one int64 and multiplied by a magic constant pack into one byte; a float's sign
  bit is its top byte shifted; |x| >= t is an integer comparison of the bits. Without,
  the same results come from comparisons and strided additions that any device runs.
  The one visible difference: sign takes -0.0 as negative with bit tricks (the IEEE sign
  bit) and as positive without (``x < 0``).
* ``compile``: run the torch.compile'd kernels of :mod:`.compiled` on large tensors (CPU
  only for now: on CUDA they would need triton and have not been measured).
* ``device_topk``: topk finds its k-th largest magnitude with ``torch.topk`` on the device
  and selects exactly, instead of estimating a threshold from a host-side sample and
  gathering candidates chunk by chunk. On a GPU ``torch.topk`` is fast and every chunk's
  ``nonzero`` waits for the device; on CPU the sampled way is ~16x faster than
  ``torch.topk``. Both select the same elements (ties broken by position).
* ``ops``: for NPU, the set of aten ops the kernels may run on the device (torch_npu
  implements them); tests run the NPU variant on CPU under a dispatch mode that enforces
  it, skipping functions marked :func:`host_side`.

:func:`device_kind` is the single place that looks at ``tensor.device``; tests monkeypatch
it to fake an NPU or a GPU on a CPU-only machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)
HOST_SIDE: set[object] = set()
"""Code objects of the functions marked :func:`host_side`."""


def host_side(fn: F) -> F:
    """Mark ``fn`` as running on CPU tensors whatever the codec's device is (small
    bookkeeping: index coding, thresholds, validation). Costs nothing; lets the NPU op test
    tell host ops from device ops."""
    HOST_SIDE.add(fn.__code__)
    return fn


# aten ops (overload packet names) the NPU variant runs on the device: exactly what the
# kernels use today (tests/unit/test_codecs_device.py records them); all are implemented
# by torch_npu's op-plugin. Adding a kernel op means checking it there first.
NPU_OPS = frozenset(
    """
    _local_scalar_dense abs abs_ add add_ addmm_ all amax cat clamp clamp_ clone copy_ detach
    div_ empty eq floor_ ge gt index index_copy_ index_put_ index_select lift_fresh
    linalg_vector_norm lt max min mm mul mul_ mv ne neg nonzero ones randint reciprocal
    resize_ round_ select slice sort sub sub_ sum t topk uniform_ unsqueeze view where
    zero_ zeros zeros_like
    """.split()
)


@dataclasses.dataclass(frozen=True)
class Backend:
    """Per-device choices of the codec kernels (see the module docstring)."""

    name: str
    chunk_elems: int
    bittricks: bool
    compile: bool = False
    ops: frozenset[str] | None = None
    device_topk: bool = False


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", chunk_elems=1 << 20, bittricks=True, compile=True),
    "cuda": Backend("cuda", chunk_elems=1 << 24, bittricks=True, device_topk=True),
    "npu": Backend("npu", chunk_elems=1 << 24, bittricks=False, ops=NPU_OPS),
}
GENERIC = Backend("generic", chunk_elems=1 << 22, bittricks=False)
"""Any other device: only portable ops."""


def device_kind(device: torch.device) -> str:
    """The kind of ``device`` ('cpu', 'cuda', 'npu', ...)."""
    return torch.device(device).type


def backend_for(device: torch.device) -> Backend:
    """The kernel variant for tensors on ``device``."""
    return BACKENDS.get(device_kind(device), GENERIC)
