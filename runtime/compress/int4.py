"""The int4 codec: blockwise 4-bit quantization, two values a byte (about 7x smaller)."""

from __future__ import annotations

from suanwang.runtime.compress.blockquant import BlockQuantCodec
from suanwang.v1 import wan_pb2


class Int4Codec(BlockQuantCodec):
    """Values in [-7, 7] times a float32 scale per block (default 64 elements).

    See :class:`BlockQuantCodec`.
    """

    name = "int4"
    kind = wan_pb2.CODEC_INT4
    bits = 4

    def __init__(self, *, block_size: int = 64, **kw) -> None:
        super().__init__(block_size=block_size, **kw)
