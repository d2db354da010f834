"""Launch-config model of a codec: `codec: {kind: int8, block_size: 256}`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from suanwang.runtime.compress.base import Codec


class CodecConfig(BaseModel):
    """Which codec compresses a payload, with its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none"] = "none"

    def build(self) -> Codec:
        from suanwang.runtime.compress.registry import make_codec

        return make_codec(self.kind, **self.model_dump(exclude={"kind"}))
