"""Maps codec names / proto enum values to codec classes."""

from __future__ import annotations

from typing import Any

from suanwang.runtime.compress.base import Codec
from suanwang.runtime.compress.bf16 import BF16Codec
from suanwang.runtime.compress.fp16 import FP16Codec
from suanwang.runtime.compress.int4 import Int4Codec
from suanwang.runtime.compress.int8 import Int8Codec
from suanwang.runtime.compress.none import NoneCodec
from suanwang.runtime.compress.powersgd import PowerSGDCodec
from suanwang.runtime.compress.sign import SignCodec
from suanwang.runtime.compress.topk import TopKCodec
from suanwang.v1 import wan_pb2

# name (as written in launch configs) -> codec class
CODECS: dict[str, type[Codec]] = {
    "none": NoneCodec,
    "fp16": FP16Codec,
    "bf16": BF16Codec,
    "int8": Int8Codec,
    "int4": Int4Codec,
    "topk": TopKCodec,
    "sign": SignCodec,
    "powersgd": PowerSGDCodec,
}


def make_codec(kind: str, **params: Any) -> Codec:
    """Build the codec called ``kind`` with its parameters.

    Raises:
        ValueError: no codec has that name, or a parameter is invalid.
    """
    try:
        cls = CODECS[kind]
    except KeyError:
        raise ValueError(f"unknown codec {kind!r}; known: {sorted(CODECS)}") from None
    return cls(**params)


def codec_for_enum(value: int) -> type[Codec]:
    """The codec class for a ``suanwang.v1.Codec`` enum value (used when decoding)."""
    for cls in CODECS.values():
        if cls.kind == value:
            return cls
    name = wan_pb2.Codec.Name(value) if value in wan_pb2.Codec.values() else value
    raise ValueError(f"no codec for enum value {name}")


def missing_codecs() -> list[str]:
    """Names of ``suanwang.v1.Codec`` values (other than UNSPECIFIED) with no codec class."""
    have = {cls.kind for cls in CODECS.values()}
    return [
        name for name, value in wan_pb2.Codec.items() if value != wan_pb2.CODEC_UNSPECIFIED and value not in have
    ]
