"""Launch-config model of a codec: ``codec: {kind: topk, ratio: 0.01, values: int8}``."""

from __future__ import annotations

import zlib

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suanwang.runtime.compress.base import Codec

CodecKind = Literal["none", "fp16", "bf16", "int8", "int4", "topk", "sign", "powersgd"]

_COMMON = ("nonfinite", "lossless", "compile")
# Which options each kind takes (the codec constructor's keyword arguments).
OPTIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "fp16": _COMMON,
    "bf16": _COMMON,
    "int8": ("block_size", "rounding", "seed", *_COMMON),
    "int4": ("block_size", "rounding", "seed", *_COMMON),
    "topk": ("ratio", "values", "seed", *_COMMON),
    "sign": ("block_size", *_COMMON),
    "powersgd": ("rank", "min_compress_numel", "seed", *_COMMON),
}


class CodecConfig(BaseModel):
    """Which codec compresses a payload, with its options.

    Options a kind does not take are refused, so that a typo or a stale option is an error,
    not silently ignored. Unset options take the codec's defaults (``block_size``: 256 for
    int8 and sign, 64 for int4).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CodecKind = "none"
    block_size: int | None = Field(default=None, ge=8, le=1 << 20, multiple_of=8, description="elements per scale")
    rounding: Literal["nearest", "stochastic"] = "nearest"
    ratio: float = Field(default=0.01, gt=0.0, le=1.0, description="topk: fraction of elements sent")
    values: Literal["fp32", "fp16", "int8"] = "fp32"
    rank: int = Field(default=4, ge=1, le=1024, description="powersgd: rank of the approximation")
    min_compress_numel: int = Field(default=16384, ge=0, description="powersgd: smaller tensors go dense")
    seed: int = Field(default=0, ge=0)
    lossless: bool = Field(default=False, description="zstd over the payload where it saves >= 5%")
    nonfinite: Literal["error", "zero"] = "error"
    compile: bool = Field(default=True, description="use torch.compile'd CPU kernels on large tensors")

    @model_validator(mode="after")
    def _options_apply(self) -> "CodecConfig":
        allowed = set(OPTIONS[self.kind])
        stray = sorted(f for f in self.model_fields_set if f != "kind" and f not in allowed)
        if stray:
            raise ValueError(
                f"codec kind {self.kind!r} does not take {stray}; it takes {sorted(allowed) or 'no options'}"
            )
        if self.lossless:
            from suanwang.runtime.compress import lossless

            lossless.require()
        return self

    def options(self) -> dict[str, object]:
        """The constructor arguments of this codec (unset block_size left to the codec)."""
        opts = {name: getattr(self, name) for name in OPTIONS[self.kind]}
        if opts.get("block_size", 0) is None:
            del opts["block_size"]
        return opts

    def build(self, salt: str | None = None) -> Codec:
        """The codec; ``salt`` (a center's name) mixes into ``seed``, so that centers draw
        different stochastic rounding noise and threshold samples: with one shared seed
        every center rounds the same elements the same way at the same step, and the
        rounding errors add up in the mean instead of averaging out."""
        from suanwang.runtime.compress.registry import make_codec

        opts = self.options()
        if salt is not None and "seed" in opts:
            opts["seed"] = zlib.crc32(f"{self.seed}:{salt}".encode())
        return make_codec(self.kind, **opts)
