"""The identity codec: the tensor's own bytes."""

from __future__ import annotations

import torch

from suanwang.runtime.compress.base import Codec, CodecState, Encoded, PayloadError
from suanwang.runtime.compress.wire import DEFAULT_MAX_NUMEL, aligned, check_header, itemsize
from suanwang.v1 import wan_pb2


class NoneCodec(Codec):
    """Sends the raw bytes of the tensor (made contiguous); decode refuses NaN/Inf."""

    kind = wan_pb2.CODEC_NONE
    name = "none"

    def encode(self, tensor: torch.Tensor, state: CodecState | None = None) -> Encoded:
        flat = tensor.detach().contiguous().reshape(-1)
        return Encoded(self.kind, tuple(tensor.shape), tensor.dtype, flat.view(torch.uint8).cpu())

    def decode(self, enc: Encoded, out: torch.Tensor | None = None) -> torch.Tensor:
        numel = check_header(self.name, self.kind, enc, DEFAULT_MAX_NUMEL)
        if enc.params:
            raise PayloadError(f"codec none: takes no params, got {sorted(enc.params)}")
        nbytes = numel * itemsize(enc.dtype)
        if enc.data.numel() != nbytes:
            raise PayloadError(
                f"codec none: expected {nbytes} bytes for shape {list(enc.shape)} "
                f"{enc.dtype}, got {enc.data.numel()}"
            )
        if out is not None and (tuple(out.shape) != tuple(enc.shape) or out.dtype != enc.dtype):
            raise PayloadError(
                f"codec none: payload is {list(enc.shape)} {enc.dtype}, out is {list(out.shape)} {out.dtype}"
            )
        decoded = aligned(enc.data).view(enc.dtype).reshape(enc.shape)
        if numel and not bool(torch.isfinite(decoded.sum(dtype=torch.float64))) and not bool(
            torch.isfinite(decoded).all()
        ):
            raise PayloadError("codec none: payload holds non-finite values")
        if out is not None:
            out.copy_(decoded)
            return out
        return decoded.clone()

    def estimate_ratio(self, numel: int, dtype: torch.dtype = torch.float32) -> float:
        return 1.0
