"""``suanwang plan``'s WAN prediction against what the codecs really send for the model's layout."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from suanwang.launch.cli import model_layout, predict
from suanwang.runtime.config import demo_config_path, parse_config
from suanwang.runtime.groups import build_groups, fragment_bounds


def _encoded_payload(cfg, span=None) -> int:
    """Bytes the codecs of ``cfg`` really encode for ``span`` of the flat layout (the whole
    model by default): each payload group's part inside it (a fragment edge cuts a group
    into pieces with a codec each, as the gateway does) encoded once from random values."""
    layout = model_layout(cfg)
    total = sum(math.prod(s) for _, _, s in layout)
    a, b = span or (0, total)
    out, start = 0, 0
    gen = torch.Generator().manual_seed(0)
    for numel, factory, shape in build_groups(layout, cfg):
        lo, hi = max(a, start), min(b, start + numel)
        if lo < hi:
            assert shape is None or (lo, hi) == (start, start + numel), "a fragment edge cut a matrix"
            x = torch.randn(hi - lo, generator=gen)
            out += factory().encode(x.view(shape) if shape else x).nbytes
        start += numel
    return out


def _cfg(**sections):
    d = yaml.safe_load(demo_config_path().read_text())
    d.update(sections)
    return parse_config(d, "t", {})


def test_layout_is_the_workers_and_costs_no_memory():
    from suanwang.models.clip import ClipConfig

    layout = model_layout(_cfg())
    assert sum(math.prod(s) for _, _, s in layout) == ClipConfig.preset("tiny").param_count()
    # the 125M-parameter preset is laid out on the meta device: no allocation to plan it
    big = model_layout(_cfg(model={"name": "clip", "size": "base"}))
    assert sum(math.prod(s) for _, _, s in big) == ClipConfig.preset("base").param_count()


@pytest.mark.parametrize(
    "sections",
    [
        {"codec": {"kind": "int8"}},
        # per-group codecs: the old prediction priced everything with `codec` (fp32 here)
        {"codec": {"kind": "none"}, "codec_groups": [{"match": "visual.*", "codec": {"kind": "int4"}}]},
        {"codec": {"kind": "int8"}, "codec_groups": [{"match": "*.bias", "codec": {"kind": "none"}}]},
        # a per-tensor codec: each matrix by its shape, small tensors dense
        {"codec": {"kind": "powersgd", "rank": 4, "min_compress_numel": 1024}},
    ],
)
def test_payload_is_what_the_codecs_encode(sections):
    cfg = _cfg(**sections)
    if cfg.codec_groups:  # the group must take some parameters, or the case tests nothing
        assert {g for g, _, _ in model_layout(cfg)} == {0, 1}
    p = predict(cfg)
    assert p["payload_bytes"] == pytest.approx(_encoded_payload(cfg), rel=0.01)


def test_streaming_rounds_take_the_real_fragments_in_turn():
    cfg = _cfg(strategy={"kind": "streaming", "inner_steps": 9, "fragments": 3},
               codec={"kind": "int4"}, codec_groups=[{"match": "text.*", "codec": {"kind": "int8"}}])
    p = predict(cfg)
    spans = fragment_bounds(model_layout(cfg), 3)
    per_fragment = [_encoded_payload(cfg, s) for s in spans]
    assert p["payload_bytes"] == pytest.approx(sum(per_fragment) / 3, rel=0.01)
    n = len(cfg.centers)  # two-shot: 2 (n - 1) / n payloads per center, every center
    expected_total = sum(per_fragment[r % 3] for r in range(cfg.rounds)) * 2 * (n - 1)
    assert p["wan_bytes_total"] == pytest.approx(expected_total, rel=0.01)
    # the slowest round is the one with the largest fragment, on the slowest declared link
    link = min(cfg.links, key=lambda ln: ln.bandwidth_mbit)
    slowest = max(per_fragment) * (2 / n) * 8 / (link.bandwidth_mbit * 1e6) + 3 * link.rtt_ms / 2e3
    assert p["wan_s_per_round"] >= slowest * 0.99
