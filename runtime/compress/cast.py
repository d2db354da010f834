"""Shared code of the cast codecs (fp16, bf16): each element rounded to a 16-bit float."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from suanwang.runtime.compress.backend import Backend
from suanwang.runtime.compress.base import CodecState, PayloadError
from suanwang.runtime.compress.common import F32, BaseCodec, NonFiniteInput, Output, chunks
from suanwang.runtime.compress.wire import Layout


class CastCodec(BaseCodec):
    """Rounds to ``wire_dtype`` (to nearest even), saturating at its largest finite value.

    With a state, the rounding error is fed back into the next encode.
    """

    wire_dtype: ClassVar[torch.dtype]
    detects_nonfinite = True

    def _nominal_params(self, numel: int) -> Mapping[str, str]:
        return {}

    def _layout(self, numel: int, params: Mapping[str, str], untrusted: bool) -> Layout:
        return Layout([("values", self.wire_dtype, numel)])

    def _encode(
        self, x: torch.Tensor, state: CodecState | None, backend: Backend, shape: tuple[int, ...]
    ) -> tuple[dict[str, str], Output]:
        n = x.numel()
        out = self._output(self._layout(n, {}, False), x.device)
        wire = out.v["values"]
        r = self._residual(state, n, x.device)
        big = torch.finfo(self.wire_dtype).max
        for lo, hi in chunks(n, backend.chunk_elems):
            xc, wc = x[lo:hi], wire[lo:hi]
            if r is None:
                wc.copy_(xc)
                # A finite float32 sum of the chunk (in cache) proves every element finite.
                # If not: NaN/Inf input, or a value that overflowed to +-inf.
                if not bool(torch.isfinite(wc.sum(dtype=F32))):
                    if not bool(torch.isfinite(xc).all()):
                        raise NonFiniteInput
                    wc.copy_(self._f32("acc", xc).clamp(-big, big))
                continue
            acc = self._ws.get("acc", hi - lo, F32, x.device)
            torch.add(r[lo:hi], xc, out=acc)
            acc.clamp_(-big, big)
            wc.copy_(acc)
            torch.sub(acc, wc, out=r[lo:hi])
        return {}, out

    def _decode(self, views, params, numel, dst, backend) -> None:
        wire = views["values"]
        for lo, hi in chunks(numel, backend.chunk_elems):
            d = dst[lo:hi]
            d.copy_(wire[lo:hi])
            # A finite sum proves every value finite; else look closer (a sum may overflow).
            if not bool(torch.isfinite(d.sum(dtype=F32))) and not bool(torch.isfinite(d).all()):
                raise PayloadError(f"codec {self.name}: payload holds values that are (or decode to) NaN/Inf")

    def estimate_ratio(self, numel: int, dtype: torch.dtype = torch.float32) -> float:
        return torch.empty((), dtype=dtype).element_size() / 2.0
