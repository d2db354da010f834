"""Device dispatch of the codecs, with the device faked on a CPU-only machine.

``backend.device_kind`` is the one place that looks at a tensor's device; patching it makes
CPU tensors take the CUDA or NPU kernel variant. Every variant must give the same result,
and the NPU variant must run only aten ops that torch_npu implements. On CPU, large
tensors go through torch.compile'd kernels, which fall back to eager ops when compilation
fails (their equivalence with eager is in test_codecs_compiled.py, marked slow).
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from suanwang.runtime.compress import CodecState, compiled, make_codec
from suanwang.runtime.compress import backend as backend_mod
from suanwang.runtime.compress.backend import BACKENDS, GENERIC, HOST_SIDE, NPU_OPS, backend_for

CONFIGS = [
    ("fp16", {}),
    ("bf16", {}),
    ("int8", {}),
    ("int8", {"rounding": "stochastic"}),
    ("int4", {"block_size": 32}),
    ("topk", {"ratio": 0.01}),
    ("topk", {"ratio": 0.02, "values": "int8"}),
    ("sign", {"block_size": 128}),
    ("powersgd", {"rank": 3}),
]


class OpRecorder(TorchDispatchMode):
    """Records the aten ops run outside functions marked host_side."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code in HOST_SIDE:
                break
            frame = frame.f_back
        else:
            self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _run(kind, kw, inputs):
    """Encode the inputs in sequence, one state per shape; returns (payload bytes, decoded)."""
    codec, states = make_codec(kind, **kw), {}
    out = []
    for x in inputs:
        enc = codec.encode(x, states.setdefault(tuple(x.shape), CodecState()))
        out.append((enc.data.clone(), codec.decode(enc)))
    return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    # Large enough for topk to sample and for several chunks on CPU; odd for the tails;
    # and all-equal values, which send topk down its exact path.
    return [torch.randn(300_001, generator=g) for _ in range(2)] + [
        torch.randn(96, 100, generator=g),
        torch.full((290_000,), 0.5),
    ]


def test_backend_by_device(monkeypatch):
    assert backend_for(torch.device("cpu")) is BACKENDS["cpu"]
    for kind in ["cuda", "npu", "xla"]:
        monkeypatch.setattr(backend_mod, "device_kind", lambda device, kind=kind: kind)
        assert backend_for(torch.device("cpu")) is BACKENDS.get(kind, GENERIC)
    assert not BACKENDS["npu"].bittricks and BACKENDS["npu"].ops == NPU_OPS


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=[f"{k}-{'-'.join(map(str, kw.values()))}" for k, kw in CONFIGS])
@pytest.mark.parametrize("device", ["cuda", "npu", "xla"])
def test_every_device_variant_gives_the_cpu_result(monkeypatch, device, kind, kw):
    inputs = _inputs()
    expected = _run(kind, kw, inputs)
    monkeypatch.setattr(backend_mod, "device_kind", lambda d: device)
    recorder = OpRecorder()
    with recorder:
        got = _run(kind, kw, inputs)
    for (data_e, dec_e), (data_g, dec_g) in zip(expected, got):
        assert torch.equal(data_e, data_g)
        torch.testing.assert_close(dec_g, dec_e, rtol=0, atol=0)
    if device == "npu":
        assert recorder.ops <= NPU_OPS, f"ops torch_npu may lack: {sorted(recorder.ops - NPU_OPS)}"


def test_failed_compilation_falls_back_to_eager(monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **kw):
        calls.append(fn)

        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    def double(x: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(x * 2)

    monkeypatch.setattr(torch, "compile", broken_compile)
    x, out = torch.ones(4), torch.zeros(4)
    big = compiled.MIN_NUMEL
    assert compiled.run(double, x, out, numel=big, enabled=True) is False
    assert "double" in compiled.failed() and "no C++ compiler" in caplog.text
    assert compiled.run(double, x, out, numel=big, enabled=True) is False
    assert len(calls) == 1  # not retried
    # Small tensors and disabled codecs never try.
    assert compiled.run(lambda *a: None, numel=big - 1, enabled=True) is False
    assert compiled.run(lambda *a: None, numel=big, enabled=False) is False


def _rel_err(got: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(got.float().cpu() - x) / torch.linalg.vector_norm(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on an H200: see the README)")
@pytest.mark.parametrize("kind,kw", CONFIGS, ids=[f"{k}-{'-'.join(map(str, kw.values()))}" for k, kw in CONFIGS])
def test_a_real_gpu_encodes_as_well_as_the_cpu(kind, kw):
    """On a real GPU (unlike the faked one) float32 arithmetic may differ in the last bit, and
    random draws differ: the payloads need not be CPU-identical, but they must be the same
    size, as accurate, and decode alike on the host (what every gateway does) and on the
    device; error-feedback state stays on the device."""
    inputs = _inputs()
    expected = _run(kind, kw, inputs)
    codec, states = make_codec(kind, **kw), {}
    for x, (data_c, dec_c) in zip(inputs, expected):
        state = states.setdefault(tuple(x.shape), CodecState())
        enc = codec.encode(x.cuda(), state)
        assert enc.data.device.type == "cpu", "the payload goes on the wire from host memory"
        if kind != "topk":  # topk gathers its few values and indices on the host
            assert enc.data.is_pinned(), "the device copies the payload by DMA into page-locked memory"
        assert abs(enc.nbytes - data_c.numel()) <= 0.01 * data_c.numel(), (enc.nbytes, data_c.numel())
        on_host = codec.decode(enc)
        on_gpu = codec.decode(enc, out=torch.empty(x.shape, device="cuda"))
        assert on_gpu.device.type == "cuda"
        if kind == "powersgd":  # a matrix product: summation order differs by device
            torch.testing.assert_close(on_gpu.cpu(), on_host, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(on_gpu.cpu(), on_host)
        err_c, err_g = _rel_err(dec_c, x), _rel_err(on_host, x)
        assert abs(err_g - err_c) <= 0.1 * err_c + 1e-6, (err_g, err_c)
        assert all(t.device.type == "cuda" for t in state.tensors.values()), {k: t.device for k, t in state.tensors.items()}


def test_buffer_pool_reuses_buffers_and_falls_back_to_pageable_memory():
    from suanwang.runtime.compress.buffers import BufferPool

    pool = BufferPool(max_free=1)
    view, buf = pool.take(13)
    assert view.numel() == 13 and buf.numel() == 16  # whole 8-byte words
    pool.give(buf)
    again, buf2 = pool.take(9)
    assert buf2.data_ptr() == buf.data_ptr() and again.numel() == 9
    pool.give(buf2)
    pinned_view, pinned = pool.take(13, pinned=True)  # never the pageable one it holds
    assert pinned.data_ptr() != buf.data_ptr()
    assert pinned.is_pinned() == torch.cuda.is_available()  # pageable where nothing can pin
    pool.give(pinned)
    _, big = pool.take(1000)
    pool.give(big)  # keeps one free buffer of a kind: the larger
    assert pool.take(8)[1].data_ptr() == big.data_ptr()
