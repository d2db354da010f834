"""Compression codecs for the WAN plane, named by ``suanwang.v1.Codec``."""

from suanwang.runtime.compress.base import Codec, CodecState, Encoded, PayloadError
from suanwang.runtime.compress.registry import CODECS, make_codec

__all__ = ["Codec", "CodecState", "Encoded", "PayloadError", "CODECS", "make_codec"]
