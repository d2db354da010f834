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


def _pieces(cfg, span) -> int:
    """How many payload groups the gateway sends for ``span`` (groups cut at its edges)."""
    start, k = 0, 0
    for numel, _, _ in build_groups(model_layout(cfg), cfg):
        k += max(span[0], start) < min(span[1], start + numel)
        start += numel
    return k


def _cfg(**sections):
    d = yaml.safe_load(demo_config_path().read_text())
    d.update(sections)
    return parse_config(d, "t", {})


def test_layout_is_the_workers_and_built_on_the_meta_device(monkeypatch):
    import suanwang.runtime.worker as worker
    from suanwang.models.clip import ClipConfig

    seen = []
    real = worker.flat_layout

    def spy(model, cfg):
        seen.extend(p.is_meta for p in model.parameters())
        return real(model, cfg)

    monkeypatch.setattr(worker, "flat_layout", spy)
    layout = model_layout(_cfg())
    assert sum(math.prod(s) for _, _, s in layout) == ClipConfig.preset("tiny").param_count()
    # the 125M-parameter preset: shapes only, nothing allocated to plan it
    big = model_layout(_cfg(model={"name": "clip", "size": "base"}))
    assert sum(math.prod(s) for _, _, s in big) == ClipConfig.preset("base").param_count()
    assert seen and all(seen)


def test_plan_names_a_layout_the_config_does_not_fit(tmp_path, capsys):
    import argparse

    from suanwang.launch.cli import cmd_plan

    d = yaml.safe_load(demo_config_path().read_text())
    d["strategy"] = {"kind": "streaming", "inner_steps": 60, "fragments": 60}  # 51 tensors
    path = tmp_path / "too_many.yaml"
    path.write_text(yaml.safe_dump(d))
    assert cmd_plan(argparse.Namespace(config=str(path))) == 2
    assert "strategy.fragments: 60 fragments but only" in capsys.readouterr().err


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
    # each round: its two-shot groups one after another (two hops and the last ack each),
    # its bytes at each link's rate; the slowest round on the slowest link
    pieces = [_pieces(cfg, s) for s in spans]
    slowest = max(
        nbytes * (2 / n) * 8 / (ln.bandwidth_mbit * 1e6) + 3 * k * ln.rtt_ms / 2e3
        for nbytes, k in zip(per_fragment, pieces)
        for ln in cfg.links
    )
    assert p["wan_s_per_round"] == pytest.approx(slowest, rel=0.01)
