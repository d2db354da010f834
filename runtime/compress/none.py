"""The identity codec: the tensor's own bytes."""

from __future__ import annotations

import torch

from suanwang.runtime.compress.base import Codec, CodecState, Encoded, PayloadError
from suanwang.v1 import wan_pb2


class NoneCodec(Codec):
    """Sends the raw bytes of the tensor (made contiguous)."""

    kind = wan_pb2.CODEC_NONE

    def encode(self, tensor: torch.Tensor, state: CodecState | None = None) -> Encoded:
        flat = tensor.detach().contiguous().reshape(-1)
        return Encoded(self.kind, tuple(tensor.shape), tensor.dtype, flat.view(torch.uint8).cpu())

    def decode(self, enc: Encoded, out: torch.Tensor | None = None) -> torch.Tensor:
        numel = 1
        for s in enc.shape:
            numel *= s
        itemsize = torch.empty((), dtype=enc.dtype).element_size()
        if enc.data.numel() != numel * itemsize:
            raise PayloadError(
                f"codec none: expected {numel * itemsize} bytes for shape {list(enc.shape)} "
                f"{enc.dtype}, got {enc.data.numel()}"
            )
        decoded = enc.data.view(enc.dtype).reshape(enc.shape)
        if out is not None:
            out.copy_(decoded)
            return out
        return decoded.clone()

    def estimate_ratio(self, numel: int, dtype: torch.dtype = torch.float32) -> float:
        return 1.0
