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
    assert [(n, codec.name if hasattr(codec, "name") else type(codec).__name__, s) for n, codec, s in built][0][2] == (20, 10)
    assert sum(n for n, _, _ in built) == 200 + 20 + 20 + 300 + 500
