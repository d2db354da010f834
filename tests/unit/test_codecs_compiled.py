"""The torch.compile'd CPU kernels give what the eager kernels give.

Slow: compiling the kernels takes tens of seconds on a cold inductor cache.
"""

from __future__ import annotations

import pytest
import torch

from suanwang.runtime.compress import CodecState, compiled, make_codec

pytestmark = pytest.mark.slow

CASES = [
    ("int8", {}),
    ("int4", {}),
    ("sign", {}),
]


@pytest.mark.parametrize("ef", [False, True], ids=["plain", "ef"])
@pytest.mark.parametrize("kind,kw", CASES, ids=[k for k, _ in CASES])
def test_compiled_matches_eager(monkeypatch, kind, kw, ef):
    ran = []
    real_run = compiled.run

    def spy(fn, *args, **kwargs):
        ok = real_run(fn, *args, **kwargs)
        ran.append((fn.__name__, ok))
        return ok

    monkeypatch.setattr(compiled, "run", spy)
    g = torch.Generator().manual_seed(0)
    n = compiled.MIN_NUMEL + 1000  # whole blocks through the kernel, then a tail
    fast, slow = make_codec(kind, **kw), make_codec(kind, compile=False, **kw)
    sf, ss = (CodecState(), CodecState()) if ef else (None, None)
    for _ in range(2):
        x = torch.randn(n, generator=g)
        ef_, es = fast.encode(x, sf), slow.encode(x, ss)
        yf, ys = fast.decode(ef_), slow.decode(es)
        if kind == "sign":
            # Same bits; block sums may be added up in another order.
            tol = 1e-5 * float(ys.abs().max())
        else:
            # Same up to the odd value rounded the other way (fused multiply-adds).
            assert (ef_.data == es.data).float().mean() > 0.999
            tol = float(x.abs().max()) / (127 if kind == "int8" else 7) * 1.01
        assert float((yf - ys).abs().max()) <= tol
        if ef:
            torch.testing.assert_close(sf.tensors["residual"], ss.tensors["residual"], atol=tol, rtol=0)
    assert any(ok for _, ok in ran), ran
    assert not compiled.failed()
