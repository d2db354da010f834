"""The fp16 codec: IEEE half precision (2 bytes an element, 11-bit significand)."""

from __future__ import annotations

import torch

from suanwang.runtime.compress.cast import CastCodec
from suanwang.v1 import wan_pb2


class FP16Codec(CastCodec):
    """Casts to float16; values beyond +-65504 saturate. See :class:`CastCodec`."""

    name = "fp16"
    kind = wan_pb2.CODEC_FP16
    wire_dtype = torch.float16
