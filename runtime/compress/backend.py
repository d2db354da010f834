"""Which kernel variant a codec runs, by the device its tensor lives on.

All kernels are plain torch ops, so the same code runs on CPU, CUDA and Ascend NPU; what
differs per device is small and lives in :class:`Backend`:

* ``chunk_elems``: codecs stream over a tensor in chunks of this many elements with scratch
  buffers reused from chunk to chunk. On CPU a chunk (4 MiB of fp32) stays in cache between
  the ops of one chunk, which makes a sequence of eager ops nearly as cheap as one fused
  kernel; on accelerators big chunks only bound the scratch memory.
* ``bitpack``: how eight sign bits become one byte. ``"mul64"`` multiplies eight 0/1 bytes
  read as one int64 by a magic constant (relies on wrapping int64 multiply, which CPU and
  CUDA have); ``"adds"`` sums eight strided uint8 slices, which every device supports.
* ``ops``: for NPU, the set of aten ops the kernels may use (torch_npu implements them);
  tests run the NPU variant on CPU under a dispatch mode that enforces it.

:func:`device_kind` is the single place that looks at ``tensor.device``; tests monkeypatch
it to fake an NPU or a GPU on a CPU-only machine.
"""

from __future__ import annotations

import dataclasses

import torch

# aten ops (overload packet names) the NPU variant may run; all are implemented by
# torch_npu's op-plugin. Views, copies and fills are included.
NPU_OPS = frozenset(
    """
    abs add addmm alias amax arange as_strided clamp clamp_ clone copy_ div div_ empty
    empty_like empty_strided eq expand fill_ floor floor_ ge gt index index_copy_
    index_put_ index_select isfinite le linalg_vector_norm lift_fresh lt mm mul mul_
    ne nonzero reciprocal remainder repeat_interleave reshape round round_ rsub select
    slice sub sub_ sum t transpose unsqueeze view where zero_ zeros _to_copy
    _unsafe_view add_ logical_not masked_fill_ searchsorted sort squeeze cumsum
    uniform_ rand floor_divide bitwise_not mean neg neg_ sign topk detach alias_copy
    _local_scalar_dense isinf isnan all any lerp maximum minimum max min
    """.split()
)


@dataclasses.dataclass(frozen=True)
class Backend:
    """Per-device choices of the codec kernels (see the module docstring)."""

    name: str
    chunk_elems: int
    bitpack: str
    ops: frozenset[str] | None = None


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", chunk_elems=1 << 20, bitpack="mul64"),
    "cuda": Backend("cuda", chunk_elems=1 << 24, bitpack="mul64"),
    "npu": Backend("npu", chunk_elems=1 << 24, bitpack="adds", ops=NPU_OPS),
}
GENERIC = Backend("generic", chunk_elems=1 << 22, bitpack="adds")
"""Any other device: only portable ops."""


def device_kind(device: torch.device) -> str:
    """The kind of ``device`` ('cpu', 'cuda', 'npu', ...)."""
    return torch.device(device).type


def backend_for(device: torch.device) -> Backend:
    """The kernel variant for tensors on ``device``."""
    return BACKENDS.get(device_kind(device), GENERIC)
