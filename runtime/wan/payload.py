"""Cutting an encoded tensor into chunks and putting it back together, validating as it goes.

The receiving side treats everything as untrusted: an :class:`Assembler` checks each chunk
against the first chunk's header, the expected job/round window/sender, the size limits and
a CRC-32 per chunk, and only then hands out an :class:`~suanwang.runtime.compress.Encoded`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Callable, Iterator

import numpy as np
import torch

from suanwang.runtime.compress import Encoded, PayloadError
from suanwang.v1 import wan_pb2

_DTYPES = {
    torch.float32: wan_pb2.DTYPE_FLOAT32,
    torch.float16: wan_pb2.DTYPE_FLOAT16,
    torch.bfloat16: wan_pb2.DTYPE_BFLOAT16,
    torch.float64: wan_pb2.DTYPE_FLOAT64,
}
_FROM_PROTO = {v: k for k, v in _DTYPES.items()}


def dtype_to_proto(dtype: torch.dtype) -> int:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot cross the WAN; use one of {list(_DTYPES)}") from None


def dtype_from_proto(value: int) -> torch.dtype:
    try:
        return _FROM_PROTO[value]
    except KeyError:
        raise PayloadError(f"unknown dtype enum value {value}") from None


@dataclasses.dataclass(frozen=True)
class Meta:
    """What travels in a payload's header besides the encoded bytes."""

    job_id: str
    round: int
    sender: str
    name: str
    samples: int
    sha256: str = ""


def to_chunks(meta: Meta, enc: Encoded, chunk_bytes: int) -> Iterator[wan_pb2.Chunk]:
    """Yield the chunks of one payload; the first carries the header.

    Each chunk's bytes are a slice of ``enc.data`` copied once into the message.
    """
    data = enc.data.numpy() if enc.data.numel() else memoryview(b"")
    total = int(enc.data.numel())
    n = max(1, math.ceil(total / chunk_bytes))
    header = wan_pb2.PayloadHeader(
        job_id=meta.job_id,
        round=meta.round,
        sender=meta.sender,
        name=meta.name,
        codec=enc.codec,
        dtype=dtype_to_proto(enc.dtype),
        shape=list(enc.shape),
        num_chunks=n,
        total_bytes=total,
        samples=meta.samples,
        codec_params=enc.params,
        sha256=meta.sha256,
    )
    for i in range(n):
        piece = bytes(data[i * chunk_bytes : (i + 1) * chunk_bytes])
        chunk = wan_pb2.Chunk(index=i, data=piece, crc32=zlib.crc32(piece))
        if i == 0:
            chunk.header.CopyFrom(header)
        yield chunk


@dataclasses.dataclass
class Expectation:
    """What the receiver will accept.

    Attributes:
        job_id: this job.
        sender: the authenticated peer the stream comes from.
        round_ok: predicate on the round number (the receiver's window).
        shape_of: expected decoded shape for a payload name (raises KeyError if unknown).
        max_bytes: largest total payload size accepted.
        chunk_bytes: largest chunk accepted.
    """

    job_id: str
    sender: str
    round_ok: Callable[[int], bool]
    shape_of: Callable[[str], tuple[int, ...]]
    max_bytes: int
    chunk_bytes: int


class Assembler:
    """Reassembles one payload stream, rejecting anything inconsistent."""

    def __init__(self, expect: Expectation):
        self.expect = expect
        self.header: wan_pb2.PayloadHeader | None = None
        self.buf: torch.Tensor | None = None
        self.next_index = 0
        self.received = 0
        # Raw fp32 payloads (codec none) are checked for NaN/Inf chunk by chunk as they
        # arrive, overlapping the check with the transfer; stays True only if every chunk
        # was checked whole.
        self.finite_checked = False

    def _fail(self, reason: str) -> PayloadError:
        h = self.header
        where = f"from {self.expect.sender}"
        if h is not None:
            where += f", round {h.round}, tensor {h.name!r}"
        return PayloadError(f"payload {where}: {reason}")

    def _check_header(self, h: wan_pb2.PayloadHeader) -> None:
        e = self.expect
        if h.job_id != e.job_id:
            raise self._fail(f"wrong job {h.job_id!r} (this job is {e.job_id!r})")
        if h.sender != e.sender:
            raise self._fail(f"sender field {h.sender!r} differs from the authenticated peer")
        if not e.round_ok(h.round):
            raise self._fail("round outside the accepted window (stale, replayed or too early)")
        try:
            shape = tuple(e.shape_of(h.name))
        except KeyError:
            raise self._fail("unknown tensor name") from None
        if tuple(h.shape) != shape:
            raise self._fail(f"shape {list(h.shape)} differs from the expected {list(shape)}")
        if h.codec == wan_pb2.CODEC_UNSPECIFIED or h.codec not in wan_pb2.Codec.values():
            raise self._fail(f"unknown codec enum value {h.codec}")
        dtype_from_proto(h.dtype)
        if h.total_bytes > e.max_bytes:
            raise self._fail(f"{h.total_bytes} bytes exceeds the limit of {e.max_bytes}")
        want_chunks = max(1, math.ceil(h.total_bytes / e.chunk_bytes)) if h.total_bytes else 1
        if h.num_chunks < want_chunks or h.num_chunks > max(1, h.total_bytes):
            raise self._fail(f"{h.num_chunks} chunks cannot carry {h.total_bytes} bytes")

    def feed(self, chunk: wan_pb2.Chunk) -> None:
        """Take the next chunk. Raises PayloadError on any inconsistency."""
        if self.header is None:
            if not chunk.HasField("header"):
                raise self._fail("first chunk has no header")
            self._check_header(chunk.header)
            self.header = chunk.header
            self.buf = torch.empty(self.header.total_bytes, dtype=torch.uint8)
            self._view = self.buf.numpy()
            self.finite_checked = (
                self.header.codec == wan_pb2.CODEC_NONE and self.header.dtype == wan_pb2.DTYPE_FLOAT32
            )
        elif chunk.HasField("header"):
            raise self._fail(f"chunk {chunk.index} repeats the header")
        h = self.header
        if chunk.index != self.next_index:
            raise self._fail(f"chunk {chunk.index} arrived, expected chunk {self.next_index}")
        if chunk.index >= h.num_chunks:
            raise self._fail(f"chunk {chunk.index} beyond the announced {h.num_chunks}")
        n = len(chunk.data)
        if n > self.expect.chunk_bytes:
            raise self._fail(f"chunk {chunk.index} has {n} bytes, over the chunk limit")
        if self.received + n > h.total_bytes:
            raise self._fail(f"more than the announced {h.total_bytes} bytes")
        if zlib.crc32(chunk.data) != chunk.crc32:
            raise self._fail(f"chunk {chunk.index} fails its CRC-32 check")
        if n:
            self._view[self.received : self.received + n] = np.frombuffer(chunk.data, np.uint8)
            if self.finite_checked:
                if n % 4 or self.received % 4:
                    self.finite_checked = False
                else:
                    # float64 sum of float32 values is finite exactly when all values are
                    values = self._view[self.received : self.received + n].view(np.float32)
                    if not np.isfinite(values.sum(dtype=np.float64)):
                        raise self._fail(f"chunk {chunk.index} holds non-finite values")
        self.received += n
        self.next_index += 1

    def finish(self) -> tuple[wan_pb2.PayloadHeader, Encoded]:
        """The complete payload. Raises PayloadError if it is truncated."""
        if self.header is None:
            raise self._fail("empty stream")
        h = self.header
        if self.next_index != h.num_chunks or self.received != h.total_bytes:
            raise self._fail(
                f"truncated: {self.next_index}/{h.num_chunks} chunks, "
                f"{self.received}/{h.total_bytes} bytes"
            )
        assert self.buf is not None
        enc = Encoded(
            codec=h.codec,
            shape=tuple(h.shape),
            dtype=dtype_from_proto(h.dtype),
            data=self.buf,
            params=dict(h.codec_params),
        )
        return h, enc
