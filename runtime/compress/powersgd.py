"""The powersgd codec: a rank-r approximation ``M ~ P Q^T`` by one power iteration.

The tensor is viewed as a matrix: ``(shape[0], numel / shape[0])`` for tensors of two or
more dimensions, else (flat vectors) a near-square ``rows x cols`` with ``cols =
ceil(sqrt(numel))`` whose last row is zero-padded. One step (Vogels et al., 2019, as in
PyTorch's PowerSGD hook) with warm start: ``P = M Q``, orthonormalize ``P``, ``Q = M^T P``;
``Q`` is kept in the state for the next step. With a state, ``M`` is input + residual and
the residual becomes ``M - P Q^T``.

Tensors below ``min_compress_numel`` elements, or whose matrix is too thin for rank r to
halve the bytes, are sent dense (float32) and need no residual.

Wire layout: low rank: ``p: float32[rank * rows]`` (P^T, row-major), ``q: float32[rank *
cols]`` (Q^T); dense: ``values: float32[numel]``. Params: ``mode`` (``lowrank`` |
``dense``), and for lowrank ``rows``, ``cols``, ``rank``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import torch

from suanwang.runtime.compress.backend import Backend, host_side
from suanwang.runtime.compress.base import CodecState, PayloadError
from suanwang.runtime.compress.common import F32, BaseCodec, Output, check_range, chunks, max_value
from suanwang.runtime.compress.wire import Layout, param_choice, param_int
from suanwang.v1 import wan_pb2

MAX_RANK = 1024
EPS = 1e-30


def matrix_shape(shape: tuple[int, ...], numel: int) -> tuple[int, int]:
    """The ``(rows, cols)`` a tensor of ``shape`` is viewed as (see the module docstring)."""
    if len(shape) >= 2 and shape[0] > 1 and numel // shape[0] > 1:
        return shape[0], numel // shape[0]
    cols = max(1, math.isqrt(max(numel - 1, 0)) + 1) if numel > 1 else 1
    return -(-numel // cols), cols


def orthonormalize_rows(a: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt, twice (one pass loses orthogonality in float32), on the rows of ``a``
    in place. A row that vanishes becomes zero."""
    for _ in range(2):
        for i in range(a.shape[0]):
            row = a[i]
            norm = torch.linalg.vector_norm(row)
            row.mul_(torch.where(norm > EPS, 1.0 / norm.clamp(min=EPS), torch.zeros_like(norm)))
            if i + 1 < a.shape[0]:
                rest = a[i + 1 :]
                rest.sub_(torch.mv(rest, row).unsqueeze(1) * row.unsqueeze(0))
    return a


class PowerSGDCodec(BaseCodec):
    """Low-rank compression by one warm-started power iteration, with error feedback.

    Args:
        rank: the rank r of the approximation.
        min_compress_numel: smaller tensors are sent dense.
        seed: seeds the first Q (the same on every device).
        **kw: see :class:`~suanwang.runtime.compress.common.BaseCodec`.
    """

    name = "powersgd"
    kind = wan_pb2.CODEC_POWERSGD
    PARAM_KEYS = frozenset({"mode", "rows", "cols", "rank"})

    def __init__(self, *, rank: int = 4, min_compress_numel: int = 16384, seed: int = 0, **kw) -> None:
        super().__init__(**kw)
        if not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
            raise ValueError(f"codec powersgd: rank must be an integer in [1, {MAX_RANK}], not {rank!r}")
        if not isinstance(min_compress_numel, int) or min_compress_numel < 0:
            raise ValueError(f"codec powersgd: min_compress_numel must be >= 0, not {min_compress_numel!r}")
        self.rank = rank
        self.min_compress_numel = min_compress_numel
        self.seed = int(seed)

    def _describe(self) -> str:
        return f"rank={self.rank}, min_compress_numel={self.min_compress_numel}, " + super()._describe()

    def plan(self, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """``(rows, cols, rank)`` for a tensor of ``shape``, or None to send it dense."""
        numel = math.prod(shape)
        if numel < max(self.min_compress_numel, 1):
            return None
        rows, cols = matrix_shape(tuple(shape), numel)
        rank = min(self.rank, rows, cols)
        if 2 * (rows + cols) * rank > numel:
            return None
        return rows, cols, rank

    # -- layout ------------------------------------------------------------------------

    def _nominal_params(self, numel: int) -> Mapping[str, str]:
        return self._params(self.plan((numel,)))

    @staticmethod
    def _params(plan: tuple[int, int, int] | None) -> dict[str, str]:
        if plan is None:
            return {"mode": "dense"}
        rows, cols, rank = plan
        return {"mode": "lowrank", "rows": str(rows), "cols": str(cols), "rank": str(rank)}

    def _layout(self, numel: int, params: Mapping[str, str], untrusted: bool) -> Layout:
        mode = param_choice(self.name, params, "mode", ("lowrank", "dense"))
        if mode == "dense":
            if set(params) != {"mode"}:
                raise PayloadError("codec powersgd: dense payloads take no other params")
            return Layout([("values", F32, numel)])
        rows = param_int(self.name, params, "rows", 1, max(numel, 1))
        cols = param_int(self.name, params, "cols", 1, max(numel, 1))
        rank = param_int(self.name, params, "rank", 1, min(rows, cols, MAX_RANK))
        pad = rows * cols - numel
        if not 0 <= pad < cols:
            raise PayloadError(f"codec powersgd: a {rows}x{cols} matrix does not hold {numel} elements")
        return Layout([("p", F32, rank * rows), ("q", F32, rank * cols)])

    # -- encode ------------------------------------------------------------------------

    def _encode(
        self, x: torch.Tensor, state: CodecState | None, backend: Backend, shape: tuple[int, ...]
    ) -> tuple[dict[str, str], Output]:
        n, dev = x.numel(), x.device
        plan = self.plan(shape)
        params = self._params(plan)
        out = self._output(self._layout(n, params, False), dev)
        if plan is None:
            r = state.tensors.get("residual") if state is not None else None
            vals = out.v["values"]
            vals.copy_(x)
            if r is not None and r.numel() >= n:
                vals.add_(r.view(-1)[:n].to(dev))
                r.zero_()
            return params, out
        rows, cols, rank = plan
        size = rows * cols
        m = self._residual(state, size, dev)
        if m is None:
            m = self._ws.get("m", size, F32, dev)
            m[:n].copy_(x)
        else:
            m[:n].add_(x)
        m[n:].zero_()
        mat = m.view(rows, cols)
        qt = self._warm_q(state, rank, cols, dev)
        pt = out.v["p"].view(rank, rows)
        # P^T = Q^T M^T and Q^T = P^T M: the layouts MKL runs fastest for thin factors.
        torch.mm(qt, mat.t(), out=pt)
        orthonormalize_rows(pt)
        qnew = out.v["q"].view(rank, cols)
        torch.mm(pt, mat, out=qnew)
        if state is not None:
            mat.addmm_(pt.t(), qnew, alpha=-1.0)
            m[n:].zero_()
            state.tensors["q"] = qnew.clone()
        return params, out

    def _warm_q(self, state: CodecState | None, rank: int, cols: int, dev: torch.device) -> torch.Tensor:
        """Q^T to start from: the state's last one (orthonormalized), else seeded noise."""
        q = state.tensors.get("q") if state is not None else None
        if q is None or tuple(q.shape) != (rank, cols):
            q = self._initial_q(rank, cols)
        q = self._ws.get("q", rank * cols, F32, dev).view(rank, cols).copy_(q)
        return orthonormalize_rows(q)

    @host_side
    def _initial_q(self, rank: int, cols: int) -> torch.Tensor:
        """Seeded on the host, so that every device starts from the same Q."""
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{rank}:{cols}".encode()))
        return torch.randn(rank, cols, generator=gen)

    # -- decode ------------------------------------------------------------------------

    def _decode(self, views, params, numel, dst, backend) -> None:
        if params["mode"] == "dense":
            vals = views["values"]
            check_range(self.name, "values", vals, max_value(dst.dtype))
            dst.copy_(vals)
            return
        rows, cols, rank = int(params["rows"]), int(params["cols"]), int(params["rank"])
        pt = views["p"].view(rank, rows)
        qt = views["q"].view(rank, cols)
        check_range(self.name, "factors", views["p"], math.inf)
        check_range(self.name, "factors", views["q"], math.inf)
        # |(P Q^T)_ij| <= |P_i| |Q_j|: refuse factors whose product could overflow.
        if rows and cols and float(pt.norm(dim=0).max()) * float(qt.norm(dim=0).max()) > max_value(dst.dtype):
            raise PayloadError("codec powersgd: factors so large that P Q^T would overflow")
        full = (numel // cols) * cols
        if dst.dtype == F32:
            torch.mm(pt[:, : full // cols].t(), qt, out=dst[:full].view(-1, cols))
            full_eager = 0
        else:  # through a float32 scratch, a slice at a time
            full_eager = full
        step = max(1, backend.chunk_elems // cols) * cols
        for lo, hi in chunks(full_eager, step):
            d = dst[lo:hi] if dst.dtype == F32 else self._ws.get("deq", hi - lo, F32, dst.device)
            torch.mm(pt[:, lo // cols : hi // cols].t(), qt, out=d.view(-1, cols))
            if d.data_ptr() != dst[lo:hi].data_ptr():
                dst[lo:hi].copy_(d)
        if full < numel:
            last = torch.mv(qt.t(), pt[:, full // cols].contiguous())
            dst[full:].copy_(last[: numel - full])
