"""topk selection on tensors big enough to take the sampled path, and on its hard cases."""

from __future__ import annotations

import torch

from suanwang.runtime.compress import CodecState, make_codec
from suanwang.runtime.compress.topk import EXACT_BELOW

N = EXACT_BELOW + 37_001  # sampled path, and not a multiple of anything


def _reference(acc: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the k largest |acc|, ties broken by position."""
    return torch.argsort(-acc.abs(), stable=True)[:k].sort().values


def test_sampled_selection_is_the_exact_top_k_with_error_feedback():
    g = torch.Generator().manual_seed(0)
    codec, state = make_codec("topk", ratio=0.01), CodecState()
    residual = torch.zeros(N, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(N, generator=g)
        acc = residual + x.double()
        y = codec.decode(codec.encode(x, state))
        sent = torch.nonzero(y).view(-1)
        ref = _reference(acc.float(), codec.k_for(N))
        assert torch.equal(sent, ref)
        torch.testing.assert_close(y[sent].double(), acc[sent], rtol=1e-6, atol=1e-6)
        residual = acc.clone()
        residual[sent] = 0
        torch.testing.assert_close(state.tensors["residual"].double(), residual, rtol=1e-6, atol=1e-6)


def test_ties_and_sparse_inputs():
    codec = make_codec("topk", ratio=0.01)
    k = codec.k_for(N)
    # All equal: the sample cannot separate anything; the first k are sent.
    y = codec.decode(codec.encode(torch.ones(N)))
    assert torch.equal(torch.nonzero(y).view(-1), torch.arange(k))
    # Two levels, the top one smaller than k.
    x = torch.full((N,), 2.0)
    x[::1000] = 5.0
    y = codec.decode(codec.encode(x))
    assert torch.equal(torch.nonzero(y).view(-1), _reference(x, k))
    # Fewer nonzeros than k: exactly those are sent.
    x = torch.zeros(N)
    x[torch.randperm(N, generator=torch.Generator().manual_seed(1))[:100]] = torch.randn(100)
    enc = codec.encode(x)
    assert enc.params["k"] == "100"
    assert torch.equal(codec.decode(enc), x)


def test_trimming_many_candidates_keeps_exactly_the_largest():
    # Enough candidates for the sampled two-threshold trim; values with ties.
    g = torch.Generator().manual_seed(2)
    vals = (torch.randn(800_000, generator=g) * 64).round() / 64
    idx = torch.arange(vals.numel()) * 3
    codec = make_codec("topk")
    k = 671_089
    got_idx, got_vals = codec._trim(idx, vals, k, step=0)
    mag = vals.abs()
    # Ties at the k-th magnitude may be broken either way: compare the multisets.
    assert got_idx.numel() == k and bool((got_idx[1:] > got_idx[:-1]).all())
    ref = mag.sort(descending=True).values[:k]
    assert torch.equal(got_vals.abs().sort(descending=True).values, ref)
    assert torch.equal(vals[got_idx // 3], got_vals)
