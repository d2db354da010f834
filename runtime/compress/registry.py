"""Maps codec names / proto enum values to codec classes."""

from __future__ import annotations

from typing import Any

from suanwang.runtime.compress.base import Codec
from suanwang.runtime.compress.none import NoneCodec
from suanwang.v1 import wan_pb2

# name (as written in launch configs) -> codec class
CODECS: dict[str, type[Codec]] = {
    "none": NoneCodec,
}


def make_codec(kind: str, **params: Any) -> Codec:
    """Build the codec called ``kind`` with its parameters.

    Raises:
        ValueError: no codec has that name.
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
    raise ValueError(f"no codec for enum value {wan_pb2.Codec.Name(value) if value in wan_pb2.Codec.values() else value}")
