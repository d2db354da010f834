"""Device layer: which torch device and collective backend a center's workers use.

CUDA uses nccl, Ascend NPU uses hccl (through the optional ``torch_npu`` package, imported
only when an NPU center asks for it), CPU uses gloo.
"""

from __future__ import annotations

import importlib
from typing import Literal

import torch

DeviceKind = Literal["cpu", "cuda", "npu"]

BACKENDS: dict[str, str] = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


class DeviceUnavailable(RuntimeError):
    """The requested device kind cannot be used in this process."""


def import_torch_npu():  # pragma: no cover - exercised only where CANN exists
    """Import ``torch_npu`` (which registers the ``npu`` device with torch).

    Raises:
        DeviceUnavailable: the package or the Ascend CANN runtime is missing.
    """
    try:
        return importlib.import_module("torch_npu")
    except ImportError as err:
        raise DeviceUnavailable(
            "device 'npu' needs the optional extra: pip install 'suanwang[npu]' "
            f"(torch-npu) and the Ascend CANN toolkit ({err})"
        ) from err


def backend_for(kind: DeviceKind) -> str:
    """The torch.distributed backend for a device kind."""
    try:
        return BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown device kind {kind!r}; known: {sorted(BACKENDS)}") from None


def torch_device(kind: DeviceKind, local_index: int = 0) -> torch.device:
    """The torch device for the ``local_index``-th worker of a center on this node.

    Raises:
        DeviceUnavailable: no such device here.
    """
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_index % torch.cuda.device_count())
    if kind == "npu":
        import_torch_npu()
        npu = getattr(torch, "npu", None)
        if npu is None or not npu.is_available():
            raise DeviceUnavailable("device 'npu' requested but torch.npu.is_available() is False")
        return torch.device("npu", local_index % npu.device_count())
    raise ValueError(f"unknown device kind {kind!r}; known: {sorted(BACKENDS)}")


def ray_resources(kind: DeviceKind) -> dict[str, float]:
    """Ray resources one worker of this kind asks for (besides CPU)."""
    if kind == "cuda":
        return {"GPU": 1.0}
    if kind == "npu":
        return {"NPU": 1.0}
    return {}
