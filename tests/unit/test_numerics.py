"""Cross-center reduction and the DiLoCo outer step against float64 / stock PyTorch."""

from __future__ import annotations

import pytest
import torch

from suanwang.runtime.flat import digest, flatten, unflatten_into
from suanwang.runtime.outer import OuterSGD
from suanwang.runtime.reduce import weighted_mean


def test_weighted_mean_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    contrib = {c: (torch.randn(1001, generator=g) * (i + 1), s) for i, (c, s) in enumerate([("xian", 64), ("shenzhen", 128), ("wuhan", 32)])}
    got = weighted_mean(contrib)
    total = sum(s for _, s in contrib.values())
    ref = sum(t.double() * s for t, s in contrib.values()) / total
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)


def test_weighted_mean_is_order_independent_bitwise():
    g = torch.Generator().manual_seed(1)
    items = [(c, (torch.randn(513, generator=g), 10 + i)) for i, c in enumerate("abcd")]
    a = weighted_mean(dict(items))
    b = weighted_mean(dict(reversed(items)))
    assert digest(a) == digest(b)


def test_weighted_mean_rejects_bad_input():
    with pytest.raises(ValueError, match="no contributions"):
        weighted_mean({})
    with pytest.raises(ValueError, match="b sent shape"):
        weighted_mean({"a": (torch.zeros(3), 1), "b": (torch.zeros(4), 1)})
    with pytest.raises(ValueError, match="total samples"):
        weighted_mean({"a": (torch.zeros(3), 0)})


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_outer_sgd_matches_torch_sgd(momentum, nesterov):
    g = torch.Generator().manual_seed(2)
    p0 = torch.randn(257, generator=g)
    grads = [torch.randn(257, generator=g) for _ in range(5)]
    ours = p0.clone()
    opt = OuterSGD(0.7, momentum, nesterov)
    ref = torch.nn.Parameter(p0.clone())
    sgd = torch.optim.SGD([ref], lr=0.7, momentum=momentum, nesterov=nesterov)
    for gr in grads:
        opt.step(ours, gr)
        ref.grad = gr.clone()
        sgd.step()
    torch.testing.assert_close(ours, ref.detach(), rtol=0, atol=1e-6)


def test_outer_nesterov_matches_float64_reference():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(100, generator=g)
    grads = [torch.randn(100, generator=g) for _ in range(10)]
    ours = p.clone()
    opt = OuterSGD(0.5, 0.8, True)
    ref, buf = p.double(), None
    for gr in grads:
        opt.step(ours, gr)
        gd = gr.double()
        buf = gd.clone() if buf is None else 0.8 * buf + gd
        ref = ref - 0.5 * (gd + 0.8 * buf)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_outer_state_round_trip():
    opt = OuterSGD(1.0, 0.9, True)
    p = torch.zeros(4)
    opt.step(p, torch.ones(4))
    other = OuterSGD(1.0, 0.9, True)
    other.load_state_dict(opt.state_dict())
    a, b = p.clone(), p.clone()
    opt.step(a, torch.ones(4))
    other.step(b, torch.ones(4))
    assert torch.equal(a, b)


def test_flatten_unflatten_round_trip():
    ts = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 1, 2)]
    flat = flatten(ts)
    assert flat.shape == (12 + 5 + 4,)
    out = [torch.zeros_like(t) for t in ts]
    unflatten_into(flat, out)
    for a, b in zip(ts, out):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="tensors need 21"):
        unflatten_into(flat[:-1], out)
