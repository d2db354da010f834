"""Shared code of the blockwise integer quantizers (int8, int4).

A tensor is cut into blocks of ``block_size`` elements; each block is sent as one float32
scale (its largest magnitude / qmax) and one signed integer per element in
``[-qmax, qmax]``. int4 packs two values ``lo, hi`` (elements ``2i, 2i+1``) into the int8
``lo + 8 + 16 * hi``: the low nibble holds ``lo + 8``, the high nibble ``hi`` in two's
complement.

Wire layout: ``scales: float32[ceil(n / block)]``, then ``q: int8[n]`` (int8) or
``q: int8[ceil(n / 2)]`` (int4). Params: ``block``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch

from suanwang.runtime.compress import compiled
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

Rounding = Literal["nearest", "stochastic"]
MAX_BLOCK = 1 << 20
# Blocks whose largest magnitude is below this are sent as zeros: 1/amax would overflow.
TINY = 1e-30


class BlockQuantCodec(BaseCodec):
    """Blockwise symmetric integer quantization with a float32 scale per block.

    Args:
        block_size: elements per block (a multiple of 8).
        rounding: ``"nearest"``, or ``"stochastic"`` (unbiased: E[decode] = input).
        seed: seeds the stochastic rounding noise (mixed with the state's step).
        **kw: see :class:`~suanwang.runtime.compress.common.BaseCodec`.

    With a state, the quantization error is fed back into the next encode.
    """

    bits: ClassVar[int]
    detects_nonfinite = True
    PARAM_KEYS = frozenset({"block"})

    def __init__(self, *, block_size: int = 256, rounding: Rounding = "nearest", seed: int = 0, **kw) -> None:
        super().__init__(**kw)
        if not isinstance(block_size, int) or not 8 <= block_size <= MAX_BLOCK or block_size % 8:
            raise ValueError(
                f"codec {self.name}: block_size must be a multiple of 8 in [8, {MAX_BLOCK}], not {block_size!r}"
            )
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"codec {self.name}: rounding must be 'nearest' or 'stochastic', not {rounding!r}")
        self.block_size = block_size
        self.rounding = rounding
        self.seed = int(seed)
        self.qmax = float(2 ** (self.bits - 1) - 1)

    def _describe(self) -> str:
        return f"block_size={self.block_size}, rounding={self.rounding!r}, " + super()._describe()

    # -- layout ------------------------------------------------------------------------

    def _nominal_params(self, numel: int) -> Mapping[str, str]:
        return {"block": str(self.block_size)}

    def _qbytes(self, numel: int) -> int:
        return numel if self.bits == 8 else (numel + 1) // 2

    def _layout(self, numel: int, params: Mapping[str, str], untrusted: bool) -> Layout:
        block = param_int(self.name, params, "block", 8, MAX_BLOCK)
        if block % 8:
            raise PayloadError(f"codec {self.name}: block={block} is not a multiple of 8")
        return Layout([("scales", F32, -(-numel // block)), ("q", torch.int8, self._qbytes(numel))])

    # -- encode ------------------------------------------------------------------------

    def _encode(
        self, x: torch.Tensor, state: CodecState | None, backend: Backend, shape: tuple[int, ...]
    ) -> tuple[dict[str, str], Output]:
        n, B, dev = x.numel(), self.block_size, x.device
        params = {"block": str(B)}
        out = self._output(self._layout(n, params, False), dev)
        scales, q = out.v["scales"], out.v["q"]
        r = self._residual(state, n, dev)
        gen = None
        if self.rounding == "stochastic":
            step = state.step if state is not None else self._calls
            gen = torch.Generator(device=dev)
            gen.manual_seed(zlib.crc32(f"{self.seed}:{step}:{n}".encode()))
        main = n // B * B
        if gen is None and self._encode_compiled(x, r, scales, q, main, backend):
            eager_end = 0
        else:
            eager_end = main
        for lo, hi in chunks(eager_end, block_chunk(backend, B)):
            acc = self._f32("x", x[lo:hi]) if r is None else torch.add(
                r[lo:hi], x[lo:hi], out=self._ws.get("acc", hi - lo, F32, dev)
            )
            qc = q[self._qbytes(lo) : self._qbytes(hi)]
            self._quant_blocks(acc, scales[lo // B : hi // B], qc, None if r is None else r[lo:hi], gen)
        if main < n:
            tail = n - main
            acc = self._ws.zeros("tail", B, F32, dev)
            acc[:tail].copy_(x[main:])
            if r is not None:
                acc[:tail].add_(r[main:])
            qt = self._ws.get("qtail", self._qbytes(B), q.dtype, dev)
            rt = None if r is None else self._ws.get("rtail", B, F32, dev)
            self._quant_blocks(acc, scales[-1:], qt, rt, gen)
            q[self._qbytes(main) :].copy_(qt[: self._qbytes(n) - self._qbytes(main)])
            if r is not None:
                r[main:].copy_(rt[:tail])
        # Without a state nothing was checked up front: a block with NaN/Inf has a NaN/Inf scale.
        if r is None and not bool(torch.isfinite(scales).all()):
            raise NonFiniteInput
        return params, out

    def _encode_compiled(self, x, r, scales, q, main: int, backend: Backend) -> bool:
        nb, B = main // self.block_size, self.block_size
        # The kernel writes the scales to a workspace tensor: inductor refuses a float32
        # view of a byte buffer whose length is not a multiple of 4.
        x2 = x[:main].view(nb, B)
        s = self._ws.get("scales", nb, F32, x.device)
        q2 = q[: self._qbytes(main)].view(nb, self._qbytes(B))
        if r is None:
            fn = compiled.int8_encode if self.bits == 8 else compiled.int4_encode
            args = (x2, s, q2)
        else:
            fn = compiled.int8_encode_ef if self.bits == 8 else compiled.int4_encode_ef
            args = (x2, r[:main].view(nb, B), s, q2)
        if not self._compiled(fn, *args, numel=main, backend=backend):
            return False
        scales[:nb].copy_(s)
        return True

    def _quant_blocks(
        self,
        acc: torch.Tensor,
        scales: torch.Tensor,
        q: torch.Tensor,
        r: torch.Tensor | None,
        gen: torch.Generator | None,
    ) -> None:
        """Quantize whole blocks ``acc`` into ``scales`` and ``q``; ``r`` gets the error."""
        nb, B, qmax = scales.numel(), self.block_size, self.qmax
        a2 = acc.view(nb, B)
        t = self._ws.get("t", nb * B, F32, acc.device).view(nb, B)
        torch.abs(a2, out=t)
        torch.amax(t, dim=1, out=scales)
        inv = self._ws.get("inv", nb, F32, acc.device)
        torch.clamp(scales, min=TINY, out=inv)
        torch.reciprocal(inv, out=inv).mul_(qmax)
        scales.div_(qmax)
        torch.mul(a2, inv.unsqueeze(1), out=t)
        if gen is None:
            t.round_()
        else:
            noise = self._ws.get("noise", nb * B, F32, acc.device)
            torch.rand(nb * B, generator=gen, out=noise)
            t.add_(noise.view(nb, B)).floor_().clamp_(-qmax, qmax)
        if self.bits == 8:
            q.view(nb, B).copy_(t)
        else:
            packed = self._ws.get("packed", nb * B // 2, F32, acc.device).view(nb, B // 2)
            torch.add(t[:, 0::2], t[:, 1::2], alpha=16.0, out=packed)
            packed.add_(8.0)
            q.view(nb, B // 2).copy_(packed)
        if r is not None:
            t.mul_(scales.unsqueeze(1))
            torch.sub(a2, t, out=r.view(nb, B))

    # -- decode ------------------------------------------------------------------------

    def _decode(self, views, params, numel, dst, backend) -> None:
        scales, q = views["scales"], views["q"]
        # (a corrupted payload may hold -128 / -8, one more than qmax in magnitude)
        check_range(self.name, "scales", scales, max_value(dst.dtype) / (self.qmax + 1), nonneg=True)
        B = int(params["block"])
        main = numel // B * B
        dev = dst.device
        nb = main // B
        q2 = q[: self._qbytes(main)].view(nb, self._qbytes(B))
        s = self._ws.get("scales", nb, F32, dev).copy_(scales[:nb])  # see _encode_compiled
        out2 = dst[:main].view(nb, B)
        if self.bits == 8 and self._compiled(compiled.int8_decode, q2, s, out2, numel=main, backend=backend):
            eager_end = 0
        else:
            eager_end = main
        for lo, hi in chunks(eager_end, block_chunk(backend, B)):
            d = dst[lo:hi] if dst.dtype == F32 else self._ws.get("deq", hi - lo, F32, dev)
            self._dequant_blocks(B, scales[lo // B : hi // B], q[self._qbytes(lo) : self._qbytes(hi)], d)
            if d.data_ptr() != dst[lo:hi].data_ptr():
                dst[lo:hi].copy_(d)
        if main < numel:
            qt = self._ws.zeros("qtail", self._qbytes(B), q.dtype, dev)
            src = q[self._qbytes(main) :]
            qt[: src.numel()].copy_(src)
            d = self._ws.get("deq", B, F32, dev)
            self._dequant_blocks(B, scales[-1:], qt, d)
            dst[main:].copy_(d[: numel - main])

    def _dequant_blocks(self, B: int, scales: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
        nb = scales.numel()
        o2 = out.view(nb, B)
        if self.bits == 8:
            torch.mul(q.view(nb, B), scales.unsqueeze(1), out=o2)
            return
        idx = self._ws.get("idx", q.numel(), torch.int64, q.device).copy_(q.view(torch.uint8))
        torch.index_select(int4_table(q.device), 0, idx, out=out.view(-1, 2))
        o2.mul_(scales.unsqueeze(1))


@functools.cache
def int4_table(device: torch.device) -> torch.Tensor:
    """``table[b]`` = the two values packed in byte ``b`` (see the module docstring)."""
    rows = []
    for b in range(256):
        v = b - 256 if b >= 128 else b  # the int8 the byte holds
        lo = v % 16 - 8
        rows.append([float(lo), float((v - lo - 8) // 16)])
    return torch.tensor(rows).to(device)
