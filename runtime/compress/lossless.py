"""The optional lossless stage: zstd over a codec's bytes, kept only where it pays."""

from __future__ import annotations

import torch

from suanwang.runtime.compress.base import PayloadError

try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard is in the test extra
    zstandard = None

NAME = "zstd"
LEVEL = 1
MIN_SAVING = 0.05
"""Keep the compressed bytes only when they are at least this fraction smaller."""


def available() -> bool:
    return zstandard is not None


def require() -> None:
    """Raises ValueError when the lossless stage is asked for but zstandard is missing."""
    if zstandard is None:
        raise ValueError("lossless=True needs the zstandard package: pip install 'suanwang[compress]'")


def compress(data: torch.Tensor, threads: int) -> torch.Tensor | None:
    """zstd-compressed ``data`` (1-D uint8 CPU), or None when that saves too little."""
    if data.numel() == 0:
        return None
    cctx = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True, write_content_size=True,
                                    threads=threads if data.numel() > (4 << 20) else 0)
    packed = cctx.compress(data.numpy())
    if len(packed) > (1.0 - MIN_SAVING) * data.numel():
        return None
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8)


def decompress(codec: str, data: torch.Tensor, expected: int) -> torch.Tensor:
    """Inverse of :func:`compress`; the frame must declare and hold exactly ``expected`` bytes.

    Raises:
        PayloadError: not a single well-formed zstd frame of that size.
    """
    if zstandard is None:
        raise PayloadError(f"codec {codec}: payload is zstd-compressed but zstandard is not installed")
    raw = data.numpy().tobytes() if data.numel() else b""
    try:
        declared = zstandard.frame_content_size(raw)
    except zstandard.ZstdError as err:
        raise PayloadError(f"codec {codec}: lossless stage: not a zstd frame ({err})") from None
    if declared != expected:
        raise PayloadError(f"codec {codec}: lossless stage: frame declares {declared} bytes, expected {expected}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(raw)
    except zstandard.ZstdError as err:
        raise PayloadError(f"codec {codec}: lossless stage: corrupt zstd frame ({err})") from None
    if not dobj.eof or dobj.unused_data or len(out) != expected:
        raise PayloadError(f"codec {codec}: lossless stage: truncated or trailing bytes in the zstd frame")
    return torch.frombuffer(bytearray(out), dtype=torch.uint8)
