"""Fuzzing the receive path: random and mutated bytes give PayloadError, never a crash,
a hang or an unbounded allocation."""

from __future__ import annotations

import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suanwang.runtime.compress import PayloadError
from suanwang.runtime.compress.none import NoneCodec
from suanwang.runtime.wan.gateway import decode
from suanwang.runtime.wan.payload import Assembler, Expectation, Meta, to_chunks
from suanwang.v1 import wan_pb2

NUMEL, CHUNK, LIMIT = 257, 256, 4096


def expectation() -> Expectation:
    return Expectation(
        job_id="j", sender="b", round_ok=lambda r: r in (0, 1), shape_of=lambda n: {"update": (NUMEL,)}[n],
        max_bytes=LIMIT, chunk_bytes=CHUNK,
    )


def good_chunks() -> list[bytes]:
    enc = NoneCodec().encode(torch.arange(NUMEL, dtype=torch.float32))
    return [c.SerializeToString() for c in to_chunks(Meta("j", 0, "b", "update", 4), enc, CHUNK)]


def receive(raw: list[bytes]) -> torch.Tensor:
    """What the server does with a stream: parse, assemble, decode."""
    asm = Assembler(expectation())
    for blob in raw:
        chunk = wan_pb2.Chunk()
        try:
            chunk.ParseFromString(blob)
        except Exception as err:  # protobuf's DecodeError: the stream is refused
            raise PayloadError(f"unparseable chunk: {err}") from None
        asm.feed(chunk)
    _, enc = asm.finish()
    return decode(enc)


def test_unmodified_stream_round_trips():
    assert torch.equal(receive(good_chunks()), torch.arange(NUMEL, dtype=torch.float32))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=600), max_size=6))
def test_random_bytes_are_refused(raw):
    with pytest.raises(PayloadError):
        receive(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_streams_are_refused_or_exact(data):
    raw = good_chunks()
    i = data.draw(st.integers(0, len(raw) - 1))
    blob = bytearray(raw[i])
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "drop_chunk", "dup_chunk"]))
    if op == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
        raw[i] = bytes(blob)
    elif op == "truncate":
        raw[i] = bytes(blob[: data.draw(st.integers(0, len(blob) - 1))])
    elif op == "insert":
        pos = data.draw(st.integers(0, len(blob)))
        raw[i] = bytes(blob[:pos] + data.draw(st.binary(min_size=1, max_size=16)) + blob[pos:])
    elif op == "drop_chunk":
        del raw[i]
    else:
        raw.insert(i, raw[i])
    try:
        out = receive(raw)
    except PayloadError:
        return
    # A mutation that survives every check must not have changed the data: the only
    # bytes it can touch are ones decode ignores (e.g. the samples field of the header).
    assert torch.equal(out, torch.arange(NUMEL, dtype=torch.float32))


def test_announced_size_over_limit_is_refused_before_allocating():
    chunk = wan_pb2.Chunk(index=0, data=b"x", crc32=zlib.crc32(b"x"))
    h = chunk.header
    h.job_id, h.round, h.sender, h.name = "j", 0, "b", "update"
    h.codec, h.dtype, h.num_chunks, h.total_bytes = wan_pb2.CODEC_NONE, wan_pb2.DTYPE_FLOAT32, 1, 2**62
    h.shape.append(NUMEL)
    with pytest.raises(PayloadError, match="exceeds the limit"):
        receive([chunk.SerializeToString()])
