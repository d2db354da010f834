"""The bf16 codec: bfloat16 (2 bytes an element, fp32's range, 8-bit significand)."""

from __future__ import annotations

import torch

from suanwang.runtime.compress.cast import CastCodec
from suanwang.v1 import wan_pb2


class BF16Codec(CastCodec):
    """Casts to bfloat16. See :class:`CastCodec`."""

    name = "bf16"
    kind = wan_pb2.CODEC_BF16
    wire_dtype = torch.bfloat16
