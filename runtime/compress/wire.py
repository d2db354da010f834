"""Wire-format helpers shared by codecs: byte layouts, parameter parsing, validation.

Everything here treats an :class:`Encoded` as untrusted: sizes named in ``params`` are
parsed strictly and checked against the data length *before* anything is allocated.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping

import torch

from suanwang.runtime.compress.base import Encoded, PayloadError

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("suanwang's codec wire format is little-endian; this host is big-endian")

ALIGN = 8
"""Every section of a payload starts at a multiple of this many bytes."""

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
"""Dtypes a codec accepts and decodes to."""

DEFAULT_MAX_NUMEL = 1 << 32
"""Largest tensor (in elements) a codec decodes unless told otherwise."""

_UINT = re.compile(r"[0-9]{1,19}")


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def numel_of(shape: Iterable[int]) -> int:
    return math.prod(shape)


class Layout:
    """Named, aligned, typed sections of one payload.

    Args:
        sections: ``(name, dtype, count)`` in wire order.
    """

    def __init__(self, sections: Iterable[tuple[str, torch.dtype, int]]) -> None:
        self.sections: dict[str, tuple[int, torch.dtype, int]] = {}
        self.gaps: list[tuple[int, int]] = []
        off = 0
        for name, dtype, count in sections:
            start = -(-off // ALIGN) * ALIGN
            if start > off:
                self.gaps.append((off, start))
            self.sections[name] = (start, dtype, count)
            off = start + count * itemsize(dtype)
        self.nbytes = off

    def views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        """Typed views of ``buf`` (a 1-D uint8 tensor, at least ``nbytes`` long, 8-aligned)."""
        out = {}
        for name, (off, dtype, count) in self.sections.items():
            size = itemsize(dtype)
            out[name] = buf[off : off + count * size].view(dtype)
        return out


def aligned(data: torch.Tensor) -> torch.Tensor:
    """``data`` itself, or a copy when its start is not 8-byte aligned (typed views need it)."""
    if not data.is_contiguous() or data.storage_offset() % ALIGN or data.data_ptr() % ALIGN:
        return data.clone()
    return data


def check_keys(codec: str, params: Mapping[str, str], allowed: Iterable[str]) -> None:
    extra = set(params) - set(allowed)
    if extra:
        raise PayloadError(f"codec {codec}: unknown params {sorted(extra)}; allowed: {sorted(allowed)}")


def param_int(codec: str, params: Mapping[str, str], key: str, lo: int, hi: int) -> int:
    """The integer ``params[key]``, which must be written in decimal and lie in [lo, hi]."""
    value = params.get(key)
    if value is None:
        raise PayloadError(f"codec {codec}: missing param {key!r}")
    if not isinstance(value, str) or not _UINT.fullmatch(value):
        raise PayloadError(f"codec {codec}: param {key}={value!r} is not a non-negative integer")
    out = int(value)
    if not lo <= out <= hi:
        raise PayloadError(f"codec {codec}: param {key}={out} outside [{lo}, {hi}]")
    return out


def param_choice(codec: str, params: Mapping[str, str], key: str, choices: Iterable[str]) -> str:
    value = params.get(key)
    choices = tuple(choices)
    if value not in choices:
        raise PayloadError(f"codec {codec}: param {key}={value!r} not one of {list(choices)}")
    return value


def check_header(codec: str, kind: int, enc: Encoded, max_numel: int) -> int:
    """Validate what every payload carries; returns the decoded numel.

    Raises:
        PayloadError: wrong codec, dtype, shape or data container.
    """
    if enc.codec != kind:
        raise PayloadError(f"codec {codec}: payload is for codec enum {enc.codec}, not {kind}")
    if enc.dtype not in FLOAT_DTYPES:
        raise PayloadError(f"codec {codec}: unsupported dtype {enc.dtype}")
    shape = enc.shape
    if not isinstance(shape, (tuple, list)) or len(shape) > 16:
        raise PayloadError(f"codec {codec}: malformed shape {shape!r}")
    numel = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise PayloadError(f"codec {codec}: malformed shape {list(shape)!r}")
        numel *= dim
    if numel > max_numel:
        raise PayloadError(f"codec {codec}: shape {list(shape)} has {numel} elements, over the limit {max_numel}")
    data = enc.data
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
        raise PayloadError(f"codec {codec}: data must be a 1-D uint8 tensor")
    if data.device.type != "cpu":
        raise PayloadError(f"codec {codec}: data must be on the CPU, not {data.device}")
    if not isinstance(enc.params, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in enc.params.items()
    ):
        raise PayloadError(f"codec {codec}: params must map str to str")
    return numel


def check_size(codec: str, layout: Layout, data: torch.Tensor) -> None:
    if data.numel() != layout.nbytes:
        raise PayloadError(
            f"codec {codec}: expected {layout.nbytes} bytes of data, got {data.numel()} "
            "(truncated, or params do not match the data)"
        )
