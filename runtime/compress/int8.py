"""The int8 codec: blockwise 8-bit quantization (about 3.9x smaller than fp32)."""

from __future__ import annotations

from suanwang.runtime.compress.blockquant import BlockQuantCodec
from suanwang.v1 import wan_pb2


class Int8Codec(BlockQuantCodec):
    """Values in [-127, 127] times a float32 scale per block. See :class:`BlockQuantCodec`."""

    name = "int8"
    kind = wan_pb2.CODEC_INT8
    bits = 8
