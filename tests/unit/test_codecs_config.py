"""CodecConfig: the launch-config face of the codecs."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from suanwang.runtime.compress import CODECS, lossless
from suanwang.runtime.compress.spec import OPTIONS, CodecConfig


def test_every_codec_kind_builds_with_defaults():
    assert set(OPTIONS) == set(CODECS)
    for kind in CODECS:
        codec = CodecConfig(kind=kind).build()
        assert isinstance(codec, CODECS[kind])


@pytest.mark.skipif(not lossless.available(), reason="zstandard is not installed (extra 'compress')")
def test_options_reach_the_codec():
    cfg = CodecConfig.model_validate(yaml.safe_load("{kind: topk, ratio: 0.05, values: int8, lossless: true}"))
    codec = cfg.build()
    assert (codec.ratio, codec.values, codec.lossless) == (0.05, "int8", True)
    assert CodecConfig(kind="int8", block_size=64, rounding="stochastic").build().block_size == 64
    assert CodecConfig(kind="int4").build().block_size == 64  # the int4 default, not int8's
    assert CodecConfig(kind="powersgd", rank=2, min_compress_numel=0).build().rank == 2
    assert CodecConfig(kind="sign", nonfinite="zero", compile=False).build().nonfinite == "zero"


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"kind": "topk", "ratio": 0.0}, "ratio"),
        ({"kind": "topk", "ratio": 1.5}, "ratio"),
        ({"kind": "powersgd", "rank": 0}, "rank"),
        ({"kind": "int8", "block_size": 12}, "block_size"),
        ({"kind": "int8", "rounding": "up"}, "rounding"),
        ({"kind": "topk", "values": "int4"}, "values"),
        ({"kind": "int8", "rank": 2}, r"does not take \['rank'\]"),
        ({"kind": "none", "lossless": True}, "does not take"),
        ({"kind": "zip"}, "kind"),
        ({"kind": "int8", "blocksize": 64}, "blocksize"),
    ],
)
def test_bad_configs_name_the_field(fields, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        CodecConfig(**fields)


def test_config_is_frozen_and_round_trips():
    cfg = CodecConfig(kind="sign", block_size=512)
    with pytest.raises(pydantic.ValidationError):
        cfg.kind = "int8"
    again = CodecConfig.model_validate(cfg.model_dump(exclude_unset=True))
    assert again == cfg


def test_every_wire_enum_value_has_a_codec(monkeypatch):
    from suanwang.runtime.compress import registry
    from suanwang.v1 import wan_pb2

    assert registry.missing_codecs() == []
    for value in wan_pb2.Codec.values():
        if value != wan_pb2.CODEC_UNSPECIFIED:
            cls = registry.codec_for_enum(value)
            assert cls.kind == value
            cls()  # the receiving gateway builds decoders with no arguments
    monkeypatch.delitem(registry.CODECS, "sign")
    assert registry.missing_codecs() == ["CODEC_SIGN"]
    with pytest.raises(ValueError, match="CODEC_SIGN"):
        registry.codec_for_enum(wan_pb2.CODEC_SIGN)


def test_each_center_draws_its_own_rounding_noise():
    import torch

    from suanwang.runtime.compress import CodecState

    spec = CodecConfig(kind="int8", rounding="stochastic", block_size=64)
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))

    def decoded(codec):
        return codec.decode(codec.encode(x, CodecState()))

    def mean_error(codecs):
        return float(torch.linalg.vector_norm(sum(decoded(c) for c in codecs) / len(codecs) - x))

    assert torch.equal(decoded(spec.build(salt="wuhan")), decoded(spec.build(salt="wuhan")))  # reproducible
    assert not torch.equal(decoded(spec.build(salt="wuhan")), decoded(spec.build(salt="xian")))
    one = mean_error([spec.build(salt="wuhan")])
    # unbiased, independent rounding: the mean of 4 centers' values errs half as much
    assert mean_error([spec.build(salt=c) for c in ["a", "b", "c", "d"]]) < 0.6 * one
    # one shared seed rounds alike everywhere: no averaging at all
    assert mean_error([spec.build() for _ in range(4)]) == pytest.approx(mean_error([spec.build()]), rel=1e-6)
