"""Compression codecs for the WAN plane, named by ``suanwang.v1.Codec``."""

from suanwang.runtime.compress.base import Codec, CodecState, Encoded, PayloadError
from suanwang.runtime.compress.registry import CODECS, codec_for_enum, make_codec, missing_codecs

_missing = missing_codecs()
if _missing:
    raise ImportError(f"suanwang.v1.Codec values without a codec in suanwang.runtime.compress: {_missing}")

__all__ = ["Codec", "CodecState", "Encoded", "PayloadError", "CODECS", "codec_for_enum", "make_codec"]
