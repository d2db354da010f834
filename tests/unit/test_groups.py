"""Tensor groups: config globs, flat layout order, per-tensor payloads for matrix codecs."""

from __future__ import annotations

import yaml

from suanwang.runtime.config import demo_config_path, parse_config
from suanwang.runtime.groups import GroupPlan, build_groups, group_of, group_order, plan_groups


def cfg(**over):
    d = yaml.safe_load(demo_config_path().read_text())
    d.update(over)
    return parse_config(d, environ={})


def test_first_matching_glob_wins_and_default_is_zero():
    c = cfg(codec_groups=[{"match": "*.bias", "codec": {"kind": "none"}}, {"match": "text.*", "codec": {"kind": "fp16"}}])
    assert group_of("visual.blocks.0.attn.bias", c) == 1
    assert group_of("text.blocks.0.attn.bias", c) == 1
    assert group_of("text.embed.weight", c) == 2
    assert group_of("visual.proj.weight", c) == 0
    order, groups = group_order(["a.weight", "a.bias", "b.weight", "b.bias"], c)
    assert order == [0, 2, 1, 3] and groups == [0, 0, 1, 1]


def test_one_payload_per_config_group_for_flat_codecs():
    c = cfg(codec={"kind": "int8"}, codec_groups=[{"match": "*.bias", "codec": {"kind": "none"}}])
    layout = [(0, "w1", (4, 8)), (0, "w2", (8,)), (1, "b1", (4,)), (1, "b2", (8,))]
    assert plan_groups(layout, c) == [GroupPlan(0, 40), GroupPlan(1, 12)]


def test_powersgd_gets_one_payload_per_large_matrix_and_merges_small_tensors():
    c = cfg(codec={"kind": "powersgd", "rank": 2, "min_compress_numel": 100})
    layout = [(0, "w1", (20, 10)), (0, "b1", (20,)), (0, "n1", (20,)), (0, "w2", (10, 30)), (0, "v", (500,))]
    plan = plan_groups(layout, c)
    assert plan == [
        GroupPlan(0, 200, (20, 10)),
        GroupPlan(0, 40, None, dense=True),
        GroupPlan(0, 300, (10, 30)),
        GroupPlan(0, 500, None, dense=True),  # a vector has no matrix structure to exploit
    ]
    built = build_groups(layout, c)
    assert built[0][2] == (20, 10) and built[0][1]().kind != built[1][1]().kind  # powersgd, then dense
    assert sum(n for n, _, _ in built) == 200 + 20 + 20 + 300 + 500


def test_fragments_cut_at_tensor_boundaries_and_cover_everything():
    from suanwang.runtime.groups import fragment_bounds

    layout = [(0, f"p{i}", (n,)) for i, n in enumerate([10, 10, 10, 10, 40, 5, 5, 10])]
    for f in (1, 2, 3, 4, 8):
        b = fragment_bounds(layout, f)
        assert len(b) == f and b[0][0] == 0 and b[-1][1] == 100
        assert all(x[1] == y[0] for x, y in zip(b, b[1:]))
        ends = {0, 10, 20, 30, 40, 80, 85, 90, 100}
        assert all(a in ends and c in ends and a < c for a, c in b), b
    assert fragment_bounds(layout, 2) == [(0, 40), (40, 100)]
    import pytest

    with pytest.raises(ValueError, match="9 fragments but only 8"):
        fragment_bounds(layout, 9)


def test_each_center_gateway_seeds_its_codecs_apart():
    from suanwang.runtime.wan.factory import build_gateway

    c = cfg(codec={"kind": "int8", "rounding": "stochastic"}, codec_groups=[{"match": "b", "codec": {"kind": "topk"}}])
    layout = [(0, "w", (64, 64)), (1, "b", (64,))]
    seeds = {}
    for center in ["shenzhen", "wuhan"]:
        gw = build_gateway(center, c, layout, "token")
        try:
            seeds[center] = [g.codec.seed for g in gw.groups]
        finally:
            gw.close()
    assert len(seeds["shenzhen"]) == 2
    assert all(a != b for a, b in zip(seeds["shenzhen"], seeds["wuhan"]))
    assert [g[1]().seed for g in build_groups(layout, c, salt="wuhan")] == seeds["wuhan"]


def test_cut_at_fragments_splits_only_the_groups_an_edge_crosses():
    from suanwang.runtime.groups import cut_at_fragments

    # groups of 30, 50 and 20 elements; fragments [0, 40) and [40, 100)
    assert cut_at_fragments([30, 50, 20], [(0, 40), (40, 100)]) == [[(0, 30)], [(30, 40), (40, 80)], [(80, 100)]]
    # an edge on a group boundary cuts nothing; no fragments cut nothing
    assert cut_at_fragments([30, 70], [(0, 30), (30, 100)]) == [[(0, 30)], [(30, 100)]]
    assert cut_at_fragments([30, 70], []) == [[(0, 30)], [(30, 100)]]
