"""Shared code of the blockwise integer quantizers (int8, int4).

A tensor is cut into blocks of ``block_size`` elements; each block is sent as one float32
scale (its largest magnitude / qmax) and one signed integer per element in
``[-qmax, qmax]``. int4 packs two values per byte (element ``2i`` in the low nibble),
stored biased by 8.

Wire layout: ``scales: float32[ceil(n / block)]``, then ``q`` (int8[n] or uint8[ceil(n/2)]).
Params: ``block``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch

from suanwang.runtime.compress.backend import Backend
from suanwang.runtime.compress.base import CodecState, PayloadError
from suanwang.runtime.compress.common import F32, BaseCodec, Output, block_chunk, check_finite_values, chunks
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
    PARAM_KEYS = frozenset({"block"})

    def __init__(self, *, block_size: int = 256, rounding: Rounding = "nearest", seed: int = 0, **kw) -> None:
        super().__init__(**kw)
        if not isinstance(block_size, int) or not 8 <= block_size <= MAX_BLOCK or block_size % 8:
            raise ValueError(f"codec {self.name}: block_size must be a multiple of 8 in [8, {MAX_BLOCK}], not {block_size!r}")
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
        qdtype = torch.int8 if self.bits == 8 else torch.uint8
        return Layout([("scales", F32, -(-numel // block)), ("q", qdtype, self._qbytes(numel))])

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
        step_elems = block_chunk(backend, B)
        for lo, hi in chunks(main, step_elems):
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
        return params, out

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
            packed.add_(8.0 * 17)
            q.view(nb, B // 2).copy_(packed)
        if r is not None:
            t.mul_(scales.unsqueeze(1))
            torch.sub(a2, t, out=r.view(nb, B))

    # -- decode ------------------------------------------------------------------------

    def _decode(self, views, params, numel, dst, backend) -> None:
        scales, q = views["scales"], views["q"]
        check_finite_values(self.name, "scales", scales)
        if scales.numel() and bool((scales < 0).any()):
            raise PayloadError(f"codec {self.name}: negative scales")
        B = int(params["block"])
        main = numel // B * B
        dev = dst.device
        for lo, hi in chunks(main, block_chunk(backend, B)):
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
        b = q.view(nb, B // 2)
        o3 = out.view(nb, B // 2, 2)
        torch.remainder(b, 16, out=o3[:, :, 0])
        torch.floor_divide(b, 16, out=o3[:, :, 1])
        o2.sub_(8.0).mul_(scales.unsqueeze(1))
