"""The sign codec: one bit per element plus a float32 scale per block (about 28x smaller).

Each block of ``block_size`` elements is sent as its mean magnitude ``s`` and the sign bit of
every element; it decodes to ``+s`` or ``-s``. Biased on its own, so it is meant to be used
with error feedback (a state), which carries what each round did not send into the next.

Wire layout: ``scales: float32[ceil(n / block)]``, ``bits: uint8[ceil(n / 8)]`` (bit set =
negative, see ``Backend.bittricks``; element ``8i + j`` is bit ``j`` of byte ``i``). Params: ``block``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from suanwang.runtime.compress import bitpack, compiled
from suanwang.runtime.compress.backend import Backend
from suanwang.runtime.compress.base import CodecState, PayloadError
from suanwang.runtime.compress.common import (
    F32,
    BaseCodec,
    NonFiniteInput,
    Output,
    block_chunk,
    check_range,
    max_value,
    chunks,
)
from suanwang.runtime.compress.wire import Layout, param_int
from suanwang.v1 import wan_pb2

MAX_BLOCK = 1 << 20


class SignCodec(BaseCodec):
    """1-bit sign compression with a per-block scale (signSGD with error feedback).

    Args:
        block_size: elements per scale (a multiple of 8).
        **kw: see :class:`~suanwang.runtime.compress.common.BaseCodec`.
    """

    name = "sign"
    kind = wan_pb2.CODEC_SIGN
    PARAM_KEYS = frozenset({"block"})
    detects_nonfinite = True

    def __init__(self, *, block_size: int = 256, **kw) -> None:
        super().__init__(**kw)
        if not isinstance(block_size, int) or not 8 <= block_size <= MAX_BLOCK or block_size % 8:
            raise ValueError(
                f"codec sign: block_size must be a multiple of 8 in [8, {MAX_BLOCK}], not {block_size!r}"
            )
        self.block_size = block_size

    def _describe(self) -> str:
        return f"block_size={self.block_size}, " + super()._describe()

    def _nominal_params(self, numel: int) -> Mapping[str, str]:
        return {"block": str(self.block_size)}

    def _layout(self, numel: int, params: Mapping[str, str], untrusted: bool) -> Layout:
        block = param_int(self.name, params, "block", 8, MAX_BLOCK)
        if block % 8:
            raise PayloadError(f"codec sign: block={block} is not a multiple of 8")
        return Layout([("scales", F32, -(-numel // block)), ("bits", torch.uint8, -(-numel // 8))])

    def _encode(
        self, x: torch.Tensor, state: CodecState | None, backend: Backend, shape: tuple[int, ...]
    ) -> tuple[dict[str, str], Output]:
        n, B, dev = x.numel(), self.block_size, x.device
        params = {"block": str(B)}
        out = self._output(self._layout(n, params, False), dev)
        scales, bits = out.v["scales"], out.v["bits"]
        r = self._residual(state, n, dev)
        main = n // B * B
        nb = main // B
        # (scales go through a workspace tensor: see BlockQuantCodec._encode_compiled)
        s = self._ws.get("scales", nb, F32, dev)
        x2, b = x[:main].view(nb, B), bits[: main // 8]
        if r is None:
            ran = self._compiled(compiled.sign_encode, x2, s, b, numel=main, backend=backend)
        else:
            ran = self._compiled(compiled.sign_encode_ef, x2, r[:main].view(nb, B), s, b, numel=main, backend=backend)
        if ran:
            scales[:nb].copy_(s)
        for lo, hi in chunks(0 if ran else main, block_chunk(backend, B)):
            if r is None:
                acc = self._f32("x", x[lo:hi])
            else:
                acc = torch.add(r[lo:hi], x[lo:hi], out=self._ws.get("acc", hi - lo, F32, dev))
            rc = None if r is None else r[lo:hi]
            self._sign_blocks(acc, scales[lo // B : hi // B], bits[lo // 8 : hi // 8], rc, B, backend)
        if main < n:
            tail = n - main
            acc = self._ws.zeros("tail", B, F32, dev)
            acc[:tail].copy_(x[main:])
            if r is not None:
                acc[:tail].add_(r[main:])
            bt = self._ws.get("btail", B // 8, torch.uint8, dev)
            rt = None if r is None else self._ws.get("rtail", B, F32, dev)
            self._sign_blocks(acc, scales[-1:], bt, rt, tail, backend)
            bits[main // 8 :].copy_(bt[: bits.numel() - main // 8])
            if r is not None:
                r[main:].copy_(rt[:tail])
        # Without a state nothing was checked up front: a block with NaN/Inf has a NaN/Inf scale.
        if r is None and not bool(torch.isfinite(scales).all()):
            raise NonFiniteInput
        return params, out

    def _sign_blocks(
        self,
        acc: torch.Tensor,
        scales: torch.Tensor,
        bits: torch.Tensor,
        r: torch.Tensor | None,
        count: int,
        backend: Backend,
    ) -> None:
        """Encode whole blocks of ``acc``; a block's scale is its magnitude sum / ``count``."""
        nb, B, dev = scales.numel(), self.block_size, acc.device
        t = self._ws.get("t", nb * B, F32, dev)
        torch.abs(acc, out=t)
        torch.sum(t.view(nb, B), dim=1, out=scales)
        scales.mul_(1.0 / count)
        neg = self._ws.get("neg", nb * B, torch.uint8, dev)
        s = scales.unsqueeze(1)
        if backend.bittricks:
            # The top byte of a little-endian float32 starts with its sign bit.
            torch.bitwise_right_shift(acc.view(torch.uint8).view(-1, 4)[:, 3], 7, out=neg)
            bitpack.pack(neg, bits, True, self._ws.get("pack64", nb * B // 8, torch.int64, dev))
            if r is not None:
                torch.copysign(s.expand(nb, B), acc.view(nb, B), out=t.view(nb, B))
                torch.sub(acc, t, out=r)
            return
        isneg = neg.view(torch.bool)
        torch.lt(acc, 0.0, out=isneg)
        bitpack.pack(isneg, bits, False, self._ws.get("pack64", nb * B // 8, torch.int64, dev))
        if r is not None:
            torch.where(isneg.view(nb, B), -s, s, out=t.view(nb, B))
            torch.sub(acc, t, out=r)

    def _decode(self, views, params, numel, dst, backend) -> None:
        scales, bits = views["scales"], views["bits"]
        check_range(self.name, "scales", scales, max_value(dst.dtype), nonneg=True)
        B = int(params["block"])
        dev = dst.device
        main = numel // B * B
        for lo, hi in chunks(main, block_chunk(backend, B)):
            d = dst[lo:hi] if dst.dtype == F32 else self._ws.get("deq", hi - lo, F32, dev)
            self._expand(B, scales[lo // B : hi // B], bits[lo // 8 : hi // 8], d)
            if d.data_ptr() != dst[lo:hi].data_ptr():
                dst[lo:hi].copy_(d)
        if main < numel:
            bt = self._ws.zeros("btail", B // 8, torch.uint8, dev)
            src = bits[main // 8 :]
            bt[: src.numel()].copy_(src)
            d = self._ws.get("deq", B, F32, dev)
            self._expand(B, scales[-1:], bt, d)
            dst[main:].copy_(d[: numel - main])

    def _expand(self, B: int, scales: torch.Tensor, bits: torch.Tensor, out: torch.Tensor) -> None:
        bitpack.unpack_signs(bits, out, self._ws.get("idx", bits.numel(), torch.int64, bits.device))
        out.view(scales.numel(), B).mul_(scales.unsqueeze(1))
