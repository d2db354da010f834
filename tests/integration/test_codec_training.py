"""The demo job trains with every codec to within 5% of the uncompressed held-out loss."""

from __future__ import annotations

import logging

import pytest
import ray
import yaml

from suanwang.launch.demo import demo_functions
from suanwang.runtime import Job, parse_config
from suanwang.runtime.config import demo_config_path

pytestmark = pytest.mark.slow

CODECS = [
    {"kind": "fp16"},
    {"kind": "bf16"},
    {"kind": "int8"},
    {"kind": "int4"},
    {"kind": "topk", "ratio": 0.1, "values": "int8"},
    {"kind": "sign"},
    # the tiny model's matrices are 64 wide: compress those of 1k elements and more, rank 8
    # (rank 4 ends ~20% above the uncompressed loss on this model)
    {"kind": "powersgd", "rank": 8, "min_compress_numel": 1024},
]


@pytest.fixture(scope="module")
def run_demo():
    ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING, namespace="suanwang-codec-tests")
    results = {}

    def run(codec: dict):
        key = yaml.safe_dump(codec)
        if key not in results:
            d = yaml.safe_load(demo_config_path().read_text())
            d["codec"] = codec
            cfg = parse_config(d, environ={})
            results[key] = Job(cfg, demo_functions(cfg)).run()
        return results[key]

    yield run
    ray.shutdown()


@pytest.mark.parametrize("codec", CODECS, ids=[c["kind"] for c in CODECS])
def test_codec_trains_like_uncompressed(run_demo, codec):
    base = run_demo({"kind": "none"})
    res = run_demo(codec)
    assert res.params_agree
    assert res.final_eval_loss <= 1.05 * base.final_eval_loss, (codec, res.final_eval_loss, base.final_eval_loss)
    assert res.wan_bytes < base.wan_bytes, "a compressing codec must send fewer bytes"
