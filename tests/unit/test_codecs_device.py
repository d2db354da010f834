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
