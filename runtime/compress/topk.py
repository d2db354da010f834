"""The topk codec: the ``ratio`` largest-magnitude elements, as (index, value) pairs.

Selection never sorts (or runs torch.topk on) the whole tensor: a threshold is estimated
from a random sample of magnitudes (aiming a little above ``k``), one streaming pass keeps
the elements above it, and the smallest few candidates are dropped to leave exactly ``k``.
Small tensors, and the rare tensor whose sample misleads (many ties), get an exact
selection through the k-th largest magnitude instead.

Indices are coded per 65536-element block: a count per block and, per element, its offset
in the block as a 16-bit integer (biased by -32768). Values are float32, float16, or int8
with a float32 scale per 256 values.

Wire layout: ``counts: int32[ceil(n / 65536)]``, ``idx: int16[k]``, then ``values:
float32[k]`` | ``values: float16[k]`` | ``vscales: float32[ceil(k / 256)], values: int8[k]``.
Params: ``k``, ``values``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Literal

import torch

from suanwang.runtime.compress.backend import Backend, host_side
from suanwang.runtime.compress.base import CodecState, PayloadError
from suanwang.runtime.compress.common import F32, BaseCodec, Output, check_range, chunks, max_value
from suanwang.runtime.compress.wire import Layout, param_choice, param_int
from suanwang.v1 import wan_pb2

ValueFormat = Literal["fp32", "fp16", "int8"]
VALUE_FORMATS = ("fp32", "fp16", "int8")
IDX_BLOCK = 1 << 16
VBLOCK = 256
SAMPLE = 1 << 16
# Below this many elements, exact selection (kthvalue) is cheaper than sampling.
EXACT_BELOW = 1 << 18
FP16_MAX = 65504.0
SMALLEST = 1.401298464324817e-45
"""The smallest positive (subnormal) float32."""


@host_side
def _kthvalue(t: torch.Tensor, k: int) -> float:
    return float(torch.kthvalue(t, k).values)


@host_side
def _quantile_pair(sample: torch.Tensor, frac_lo: float, frac_hi: float) -> tuple[float, float]:
    """Magnitudes that about ``frac_lo`` and ``frac_hi`` of the sample reach (lo <= hi)."""
    n = sample.numel()

    def at(frac: float) -> float:
        return float(torch.kthvalue(sample, min(n, max(1, n - math.ceil(frac * n) + 1))).values)

    return at(frac_lo), at(frac_hi)


def nonzero(mask: torch.Tensor, limit: int) -> torch.Tensor | None:
    """Indices of the nonzero elements of the 1-D bool or uint8 ``mask`` (None: more than
    ``limit``).

    Looks at eight flags at a time first (as one int64), which makes a sparse mask several
    times cheaper to scan than ``torch.nonzero`` alone. ``mask`` must start 8-byte aligned.
    """
    n8 = mask.numel() // 8 * 8
    words = mask[:n8].view(torch.uint8).view(torch.int64)
    hot = torch.nonzero(words).view(-1)
    if hot.numel() > limit:
        return None
    pos = torch.nonzero(mask[:n8].view(-1, 8)[hot])
    idx = hot[pos[:, 0]] * 8 + pos[:, 1]
    if n8 < mask.numel():
        idx = torch.cat([idx, torch.nonzero(mask[n8:]).view(-1) + n8])
    return idx if idx.numel() <= limit else None


class TopKCodec(BaseCodec):
    """Top-k sparsification with error feedback.

    Args:
        ratio: fraction of elements sent, in (0, 1]; ``k = ceil(ratio * numel)``.
        values: how the selected values are sent: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        seed: seeds the threshold sample (mixed with the state's step).
        **kw: see :class:`~suanwang.runtime.compress.common.BaseCodec`.

    With a state, everything not sent (and the rounding of what is) stays in the residual
    and is added to the next encode's input.
    """

    name = "topk"
    kind = wan_pb2.CODEC_TOPK
    PARAM_KEYS = frozenset({"k", "values"})

    def __init__(self, *, ratio: float = 0.01, values: ValueFormat = "fp32", seed: int = 0, **kw) -> None:
        super().__init__(**kw)
        if not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"codec topk: ratio must be in (0, 1], not {ratio!r}")
        if values not in VALUE_FORMATS:
            raise ValueError(f"codec topk: values must be one of {list(VALUE_FORMATS)}, not {values!r}")
        self.ratio = float(ratio)
        self.values = values
        self.seed = int(seed)

    def _describe(self) -> str:
        return f"ratio={self.ratio}, values={self.values!r}, " + super()._describe()

    def k_for(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.ratio * numel))) if numel else 0

    # -- layout ------------------------------------------------------------------------

    def _nominal_params(self, numel: int) -> Mapping[str, str]:
        return {"k": str(self.k_for(numel)), "values": self.values}

    def _layout(self, numel: int, params: Mapping[str, str], untrusted: bool) -> Layout:
        k = param_int(self.name, params, "k", 0, numel)
        fmt = param_choice(self.name, params, "values", VALUE_FORMATS)
        sections = [("counts", torch.int32, -(-numel // IDX_BLOCK)), ("idx", torch.int16, k)]
        if fmt == "fp32":
            sections.append(("values", F32, k))
        elif fmt == "fp16":
            sections.append(("values", torch.float16, k))
        else:
            sections += [("vscales", F32, -(-k // VBLOCK)), ("values", torch.int8, k)]
        return Layout(sections)

    # -- encode ------------------------------------------------------------------------

    def _encode(
        self, x: torch.Tensor, state: CodecState | None, backend: Backend, shape: tuple[int, ...]
    ) -> tuple[dict[str, str], Output]:
        n, dev = x.numel(), x.device
        r = self._residual(state, n, dev)
        k = self.k_for(n)
        step = state.step if state is not None else self._calls
        # With error feedback, _select leaves input + residual in the residual buffer.
        idx, vals = self._select(x, r, k, step, backend)
        params = {"k": str(idx.numel()), "values": self.values}
        # Everything left is k-sized: it is coded on the host, straight into the wire buffer.
        out = self._output(self._layout(n, params, False), torch.device("cpu"))
        err = self._put_values(vals.cpu(), out.v)
        if r is not None:
            r.index_copy_(0, idx, err.to(dev) if err is not None else torch.zeros_like(vals))
        # where torch.topk runs on the device, the index coding does too: the host then gets
        # 2-byte local indices and the block counts instead of 8-byte indices to code
        self._put_indices(idx if backend.device_topk else idx.cpu(), out.v)
        return params, out

    def _select(
        self, x: torch.Tensor, r: torch.Tensor | None, k: int, step: int, backend: Backend
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted indices of the ``k`` largest |x + r| (fewer only if fewer are nonzero) and
        their values. With error feedback, ``r`` becomes x + r."""
        n = x.numel()
        if n < EXACT_BELOW or backend.device_topk:
            acc = r.add_(x) if r is not None else self._f32("x", x)
            idx = self._exact(acc, k, backend)
            return idx, acc[idx]
        # |a| >= the smallest subnormal selects exactly the nonzeros.
        sample = self._sample(x, r, step)
        thr = max(self._threshold(sample, 1.0), SMALLEST)
        limit = 4 * k + 4096
        found = self._candidates(x, r, thr, limit, backend, add=True)
        acc = r if r is not None else x
        if found is not None and found[0].numel() < k and thr > SMALLEST:
            # The sample put the threshold too high (rare): once more, lower.
            thr = max(self._threshold(sample, 3.0), SMALLEST)
            found = self._candidates(acc, None, thr, limit, backend, add=False)
        if found is None or (found[0].numel() < k and thr > SMALLEST):
            # Still not: ties or a strange distribution. Select exactly.
            acc = acc.to(F32)
            idx = self._exact(acc, k, backend)
            return idx, acc[idx]
        idx, vals = found
        if idx.numel() > k:
            idx, vals = self._trim(idx, vals, k, step)
        return idx, vals

    def _trim(self, idx: torch.Tensor, vals: torch.Tensor, k: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` candidates of largest magnitude, still sorted by index."""
        mag = vals.abs()
        c = idx.numel()
        keep = None
        if c > 4 * SAMPLE:
            # Sample again, among the candidates, for two thresholds that bracket the k-th
            # magnitude: all above the upper one stay, and only the few in between need
            # an exact selection.
            gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{step}:trim".encode()))
            sample = mag[torch.randint(0, c, (SAMPLE,), generator=gen).to(idx.device)].cpu()
            q = k / c
            err = 4.0 * math.sqrt(q * (1.0 - q) / SAMPLE) + 1.0 / SAMPLE
            lo, hi = _quantile_pair(sample, min(1.0, q + err), max(0.0, q - err))
            above = mag > hi
            band = torch.nonzero((mag >= lo) & ~above).view(-1)
            need = k - int(above.sum())
            if 0 <= need <= band.numel():
                chosen = band[torch.topk(mag[band], need, sorted=False).indices]
                above[chosen] = True
                keep = above
        if keep is None:
            # Drop the smallest from all the candidates.
            drop = torch.topk(mag, c - k, largest=False, sorted=False).indices
            keep = torch.ones(c, dtype=torch.bool, device=idx.device)
            keep[drop] = False
        sel = torch.nonzero(keep).view(-1)
        return idx.index_select(0, sel), vals.index_select(0, sel)

    def _sample(self, x: torch.Tensor, r: torch.Tensor | None, step: int) -> torch.Tensor:
        """|x + r| at SAMPLE random positions (on the host)."""
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{step}:{x.numel()}".encode()))
        pos = torch.randint(0, x.numel(), (SAMPLE,), generator=gen).to(x.device)
        sample = x[pos].to(F32)
        if r is not None:
            sample += r[pos]
        return sample.abs_().cpu()

    def _candidates(
        self, x: torch.Tensor, r: torch.Tensor | None, thr: float, limit: int, backend: Backend, add: bool
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Indices and values of all |x + r| >= thr (None: more than ``limit``); with
        ``add``, adds x into r on the way."""
        n, dev = x.numel(), x.device
        step = min(n, backend.chunk_elems)
        flags = self._ws.get("flags", step, torch.uint8, dev)
        if backend.bittricks:
            # |a| >= thr as integers: for non-negative floats the bit patterns are ordered.
            # (thr_bits - 1 - |a|_bits) >> 31 is -1 exactly when |a| >= thr.
            below = torch.tensor(int(torch.tensor(thr, dtype=F32).view(torch.int32)) - 1, dtype=torch.int32, device=dev)
            bits = self._ws.get("bits", step, torch.int32, dev)
        # Chunk by chunk, taking the values while the chunk is in cache.
        idxs, vals, total = [], [], 0
        for lo, hi in chunks(n, step):
            if r is not None:
                acc = r[lo:hi].add_(x[lo:hi]) if add else r[lo:hi]
            else:
                acc = self._f32("x", x[lo:hi])
            if total > limit:
                continue  # still add x into r: the exact fallback needs all of x + r
            f = flags[: hi - lo]
            if backend.bittricks:
                b = bits[: hi - lo]
                torch.bitwise_and(acc.view(torch.int32), 0x7FFFFFFF, out=b)
                torch.sub(below, b, out=b).bitwise_right_shift_(31)
                f.copy_(b)
            else:
                mag = torch.abs(acc, out=self._ws.get("mag", hi - lo, F32, dev))
                torch.ge(mag, thr, out=f.view(torch.bool))
            hits = nonzero(f, limit - total)
            if hits is None:
                total = limit + 1
                continue
            idxs.append(hits + lo)
            vals.append(acc[hits])
            total += hits.numel()
        if total > limit:
            return None
        if not idxs:
            return torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(0, dtype=F32, device=dev)
        return torch.cat(idxs), torch.cat(vals)

    @host_side
    def _threshold(self, sample: torch.Tensor, margin: float) -> float:
        """A magnitude that a little more than ``ratio`` of the sample reach: 5% more plus
        ``3.5 * margin`` standard errors of the sampled fraction. Aiming above k makes one
        pass nearly always find enough candidates; the surplus is then dropped."""
        frac = min(1.0, self.ratio * 1.05 + 3.5 * margin * math.sqrt(self.ratio / sample.numel()))
        m = min(sample.numel(), max(1, math.ceil(frac * sample.numel())))
        return float(torch.kthvalue(sample, sample.numel() - m + 1).values)

    def _exact(self, acc: torch.Tensor, k: int, backend: Backend) -> torch.Tensor:
        """Sorted indices of the ``k`` largest |acc|, ties broken by position.

        No sort or top-k of the whole tensor: find the k-th largest magnitude ``t``, then
        take everything above ``t`` and the first elements equal to it.
        """
        n, dev = acc.numel(), acc.device
        if k >= n:
            return torch.arange(n, device=dev)
        if k == 0:
            return torch.zeros(0, dtype=torch.int64, device=dev)
        t = self._kth_magnitude(acc, k, backend)
        step = backend.chunk_elems
        above = [torch.nonzero(acc[lo:hi].abs() > t).view(-1) + lo for lo, hi in chunks(n, step)]
        need = k - sum(a.numel() for a in above)
        ties = []
        for lo, hi in chunks(n, step):
            if need <= 0:
                break
            eq = torch.nonzero(acc[lo:hi].abs() == t).view(-1)[:need] + lo
            ties.append(eq)
            need -= eq.numel()
        return torch.cat(above + ties).sort().values

    def _kth_magnitude(self, acc: torch.Tensor, k: int, backend: Backend) -> float:
        """The k-th largest |acc|: with ``torch.topk`` where the backend says it is fast
        (``device_topk``); by selection (kthvalue) on small tensors; on large ones, by
        bisection over the float's bit pattern (monotonic for non-negative floats), one
        counting pass per step (used only when sampling failed, so slow is fine)."""
        n = acc.numel()
        if backend.device_topk:
            mag = torch.abs(acc, out=self._ws.get("mag_all", n, F32, acc.device))
            return float(torch.topk(mag, k, sorted=False).values.min())
        if n < EXACT_BELOW:
            return _kthvalue(acc.abs().cpu(), n - k + 1)

        def count_at_least(bits: int) -> int:
            t = torch.tensor(bits, dtype=torch.int32).view(F32).item()
            return sum(int((acc[lo:hi].abs() >= t).sum()) for lo, hi in chunks(n, backend.chunk_elems))

        lo, hi = 0, int(torch.tensor(float(acc.abs().max())).view(torch.int32))
        # invariant: count(>= lo) >= k; answer in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_at_least(mid) >= k:
                lo = mid
            else:
                hi = mid - 1
        return torch.tensor(lo, dtype=torch.int32).view(F32).item()

    @host_side
    def _put_values(self, vals: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Write the values section(s); returns their rounding error (None: exact)."""
        if self.values == "fp32":
            v["values"].copy_(vals)
            return None
        if self.values == "fp16":
            v["values"].copy_(vals.clamp(-FP16_MAX, FP16_MAX))
            return vals - v["values"].to(F32)
        k = vals.numel()
        padded = torch.zeros(-(-k // VBLOCK) * VBLOCK, dtype=F32)
        padded[:k] = vals
        p2 = padded.view(-1, VBLOCK)
        scales = p2.abs().amax(dim=1) / 127.0
        q = (p2 / scales.clamp(min=1e-30).unsqueeze(1)).round_().clamp_(-127, 127)
        v["vscales"].copy_(scales)
        v["values"].copy_(q.view(-1)[:k])
        return vals - (q * scales.unsqueeze(1)).view(-1)[:k]

    @staticmethod
    @host_side
    def _put_indices(idx: torch.Tensor, v: dict[str, torch.Tensor]) -> None:
        nblk = v["counts"].numel()
        v["counts"].copy_(torch.bincount(idx // IDX_BLOCK, minlength=nblk))
        v["idx"].copy_(idx % IDX_BLOCK - 32768)

    # -- decode ------------------------------------------------------------------------

    def _decode(self, views, params, numel, dst, backend) -> None:
        # the views are on dst's device; where topk runs there, the indices expand there too
        where = (lambda t: t) if backend.device_topk else (lambda t: t.cpu())
        idx = self._read_indices(where(views["counts"]), where(views["idx"]), numel)
        vals = self._read_values(params["values"], {k: t.cpu() for k, t in views.items()}, max_value(dst.dtype))
        dst.zero_()
        if idx.numel():
            dst.index_copy_(0, idx.to(dst.device), vals.to(device=dst.device, dtype=dst.dtype))

    @staticmethod
    @host_side
    def _read_indices(counts: torch.Tensor, local: torch.Tensor, numel: int) -> torch.Tensor:
        k = local.numel()
        c64 = counts.to(torch.int64)
        if counts.numel():
            if bool((c64 < 0).any()) or bool((c64 > IDX_BLOCK).any()):
                raise PayloadError("codec topk: a block count is outside [0, 65536]")
            if int(c64.sum()) != k:
                raise PayloadError(f"codec topk: block counts sum to {int(c64.sum())}, k={k}")
        base = torch.arange(counts.numel(), dtype=torch.int64, device=counts.device) * IDX_BLOCK
        idx = torch.repeat_interleave(base, c64) + local.to(torch.int64) + 32768
        if k:
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise PayloadError("codec topk: indices are not strictly increasing")
            if int(idx[-1]) >= numel:
                raise PayloadError(f"codec topk: index {int(idx[-1])} out of range for {numel} elements")
        return idx

    @host_side
    def _read_values(self, fmt: str, views: dict[str, torch.Tensor], bound: float) -> torch.Tensor:
        if fmt == "int8":
            scales = views["vscales"]
            check_range(self.name, "value scales", scales, bound / 128, nonneg=True)
            k = views["values"].numel()
            q = torch.zeros(scales.numel() * VBLOCK, dtype=F32)
            q[:k] = views["values"]
            return (q.view(-1, VBLOCK) * scales.unsqueeze(1)).view(-1)[:k]
        vals = views["values"].to(F32)
        check_range(self.name, "values", vals, bound)
        return vals
