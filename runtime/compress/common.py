"""What every codec shares: input checks, the NaN/Inf policy, error-feedback residuals,
buffer reuse, the optional lossless stage and the untrusted-payload checks of decode.

A codec subclasses :class:`BaseCodec` and writes three methods:

* ``_layout(numel, params)``: the byte layout a payload with these params must have
  (parses and validates ``params``; used by encode, decode and ``estimate_ratio``);
* ``_encode(x, state, backend, shape) -> (params, Output)``;
* ``_decode(views, params, numel, dst, backend)``: fill ``dst`` (flat, contiguous).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from typing import ClassVar, Literal

import torch

from suanwang.runtime.compress import compiled as _compiled
from suanwang.runtime.compress import lossless as _lossless
from suanwang.runtime.compress.backend import Backend, backend_for
from suanwang.runtime.compress.base import Codec, CodecState, Encoded, PayloadError
from suanwang.runtime.compress.buffers import BufferPool, Workspace
from suanwang.runtime.compress.wire import (
    DEFAULT_MAX_NUMEL,
    FLOAT_DTYPES,
    Layout,
    aligned,
    check_header,
    check_keys,
    check_size,
    param_int,
)

Nonfinite = Literal["error", "zero"]
F32 = torch.float32


def chunks(n: int, step: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` ranges covering ``[0, n)`` in steps of ``step``."""
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def block_chunk(backend: Backend, block: int) -> int:
    """A chunk length near the backend's that is a multiple of ``block`` (and of 8)."""
    unit = math.lcm(block, 8)
    return max(unit, backend.chunk_elems // unit * unit)


class Output:
    """The payload being written: typed views on the encode device, copied to a pooled
    CPU buffer by :meth:`finish`."""

    def __init__(self, pool: BufferPool, ws: Workspace, layout: Layout, device: torch.device) -> None:
        self.layout = layout
        self.wire, self.buffer = pool.take(layout.nbytes, pinned=device.type != "cpu")
        if device.type == "cpu":
            self.dev = self.wire
        else:
            self.dev = ws.get("wire", layout.nbytes, torch.uint8, device)
        self.v = layout.views(self.dev)
        # Padding between sections goes on the wire too: never leak old memory.
        for lo, hi in layout.gaps:
            self.dev[lo:hi].zero_()

    def finish(self) -> torch.Tensor:
        if self.dev is not self.wire:
            self.wire.copy_(self.dev)
        return self.wire


class NonFiniteInput(Exception):
    """Raised by ``_encode`` (state untouched) when it finds NaN/Inf in its input."""


class BaseCodec(Codec):
    """Shared machinery of the suanwang codecs (see the module docstring).

    Args:
        nonfinite: what encode does with NaN/Inf inputs: ``"error"`` raises ValueError
            naming how many there are; ``"zero"`` encodes them as zeros.
        lossless: run zstd over the payload and keep the result where it saves >= 5%.
        max_numel: decode refuses payloads whose shape has more elements.
        compile: use the torch.compile'd CPU kernels on large tensors (see
            :mod:`~suanwang.runtime.compress.compiled`); False keeps to eager ops.

    A codec instance reuses scratch and output buffers between calls; calls on one instance
    are serialised by a lock, so give each thread its own instance for parallel encoding.
    """

    name: ClassVar[str]
    kind: ClassVar[int]
    PARAM_KEYS: ClassVar[frozenset[str]] = frozenset()
    detects_nonfinite: ClassVar[bool] = False
    """True if ``_encode`` without a state raises NonFiniteInput on NaN/Inf input, which
    saves encode a separate pass over the input to look for them."""

    def __init__(
        self,
        *,
        nonfinite: Nonfinite = "error",
        lossless: bool = False,
        max_numel: int = DEFAULT_MAX_NUMEL,
        compile: bool = True,
    ) -> None:
        if nonfinite not in ("error", "zero"):
            raise ValueError(f"codec {self.name}: nonfinite must be 'error' or 'zero', not {nonfinite!r}")
        if lossless:
            _lossless.require()
        if max_numel < 0:
            raise ValueError(f"codec {self.name}: max_numel must be >= 0")
        self.nonfinite = nonfinite
        self.lossless = bool(lossless)
        self.max_numel = int(max_numel)
        self.compile = bool(compile)
        self._ws = Workspace()
        self._pool = BufferPool()
        self._lock = threading.RLock()
        self._calls = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        return f"nonfinite={self.nonfinite!r}, lossless={self.lossless}"

    # -- encode ------------------------------------------------------------------------

    def encode(self, tensor: torch.Tensor, state: CodecState | None = None) -> Encoded:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"codec {self.name}: expected a tensor, got {type(tensor).__name__}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"codec {self.name}: cannot encode dtype {tensor.dtype}; floating point only")
        shape, dtype = tuple(tensor.shape), tensor.dtype
        flat = tensor.detach().reshape(-1)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        backend = backend_for(flat.device)
        with self._lock:
            if state is not None or not self.detects_nonfinite:
                # Error feedback updates the state in place: refuse bad input before that.
                flat = self._check_finite(flat)
            try:
                params, out = self._encode(flat, state, backend, shape)
            except NonFiniteInput:
                flat = self._check_finite(flat)
                try:
                    params, out = self._encode(flat, state, backend, shape)
                except NonFiniteInput:
                    raise ValueError(
                        f"codec {self.name}: input values too large to encode (a block statistic overflows)"
                    ) from None
            data = out.finish()
            self._calls += 1
            if state is not None:
                state.step += 1
        buffer = out.buffer
        if self.lossless:
            packed = _lossless.compress(data, threads=max(1, torch.get_num_threads()))
            if packed is not None:
                params = {**params, "lossless": _lossless.NAME, "raw_nbytes": str(data.numel())}
                self._pool.give(buffer)
                return Encoded(self.kind, shape, dtype, packed, params)
        return Encoded(self.kind, shape, dtype, data, params, _release=lambda: self._pool.give(buffer))

    def sanitize(self, x: torch.Tensor) -> torch.Tensor:
        """This codec's NaN/Inf policy applied to ``x`` (ValueError, or the bad values as
        zeros), for a caller that keeps error feedback of its own around :meth:`encode`."""
        return self._check_finite(x)

    def _check_finite(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the NaN/Inf policy; costs one read of ``x`` when all is finite."""
        if x.numel() == 0:
            return x
        # A sum is finite iff no term is NaN/Inf, barring overflow, which the exact count
        # below then clears. (Narrow dtypes are summed in float32 a chunk at a time, so that
        # no full-size float32 copy is made.)
        if x.dtype in (F32, torch.float64):
            total = x.sum()
        else:
            step = backend_for(x.device).chunk_elems
            total = sum(x[lo:hi].sum(dtype=F32) for lo, hi in chunks(x.numel(), step))
        if bool(torch.isfinite(total)):
            return x
        finite = torch.isfinite(x)
        bad = x.numel() - int(finite.sum())
        if bad == 0:
            return x
        if self.nonfinite == "error":
            raise ValueError(
                f"codec {self.name}: input has {bad} non-finite (NaN/Inf) values out of {x.numel()}; "
                "pass nonfinite='zero' to send them as zeros"
            )
        return torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def _compiled(self, fn, *args: object, numel: int, backend: Backend) -> bool:
        """Run the compiled kernel ``fn`` if this codec and backend allow; False: run eager."""
        return _compiled.run(fn, *args, numel=numel, enabled=self.compile and backend.compile)

    def _output(self, layout: Layout, device: torch.device) -> Output:
        return Output(self._pool, self._ws, layout, device)

    def _f32(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float32: itself, or a copy in the workspace."""
        if x.dtype == F32:
            return x
        return self._ws.get(name, x.numel(), F32, x.device).copy_(x)

    @staticmethod
    def _residual(
        state: CodecState | None, numel: int, device: torch.device, key: str = "residual"
    ) -> torch.Tensor | None:
        """The error-feedback residual of ``state`` (flat float32, created as zeros)."""
        if state is None:
            return None
        r = state.tensors.get(key)
        if r is None:
            r = torch.zeros(numel, dtype=F32, device=device)
            state.tensors[key] = r
            return r
        if r.numel() != numel:
            raise ValueError(
                f"codec state holds a {key} of {r.numel()} elements but the tensor has {numel}; "
                "use one CodecState per tensor"
            )
        if r.dtype != F32 or r.device != device or not r.is_contiguous():
            r = r.to(device=device, dtype=F32).contiguous().reshape(-1)
            state.tensors[key] = r
        return r.view(-1)

    # -- decode ------------------------------------------------------------------------

    def decode(self, enc: Encoded, out: torch.Tensor | None = None) -> torch.Tensor:
        numel = check_header(self.name, self.kind, enc, self.max_numel)
        params = dict(enc.params)
        data = enc.data
        scheme = params.pop("lossless", None)
        raw_nbytes = None
        if scheme is not None:
            if scheme != _lossless.NAME:
                raise PayloadError(f"codec {self.name}: unknown lossless stage {scheme!r}")
            raw_nbytes = param_int(self.name, params, "raw_nbytes", 0, 1 << 50)
            del params["raw_nbytes"]
        check_keys(self.name, params, self.PARAM_KEYS)
        layout = self._layout(numel, params, untrusted=True)
        if raw_nbytes is not None:
            if raw_nbytes != layout.nbytes:
                raise PayloadError(f"codec {self.name}: raw_nbytes={raw_nbytes}, layout needs {layout.nbytes}")
            data = _lossless.decompress(self.name, data, layout.nbytes)
        check_size(self.name, layout, data)
        if out is not None:
            if tuple(out.shape) != tuple(enc.shape) or out.dtype != enc.dtype:
                raise PayloadError(
                    f"codec {self.name}: payload is {list(enc.shape)} {enc.dtype}, "
                    f"out is {list(out.shape)} {out.dtype}"
                )
            device = out.device
        else:
            device = torch.device("cpu")
        if out is not None and out.is_contiguous():
            dst = out.view(-1)
        else:
            dst = torch.empty(numel, dtype=enc.dtype, device=device)
        data = aligned(data)
        if device.type != "cpu":
            data = data.to(device)
        backend = backend_for(device)
        with self._lock:
            try:
                self._decode(layout.views(data), params, numel, dst, backend)
            except PayloadError:
                raise
            except (RuntimeError, ValueError, IndexError, OverflowError) as err:
                raise PayloadError(f"codec {self.name}: malformed payload ({err})") from None
        result = dst.view(enc.shape)
        if out is None:
            return result
        if result.data_ptr() != out.data_ptr():
            out.copy_(result)
        return out

    def estimate_ratio(self, numel: int, dtype: torch.dtype = torch.float32) -> float:
        if numel <= 0:
            return 1.0
        nbytes = self._layout(numel, self._nominal_params(numel), untrusted=False).nbytes
        return numel * torch.empty((), dtype=dtype).element_size() / max(1, nbytes)

    # -- for subclasses ----------------------------------------------------------------

    def _nominal_params(self, numel: int) -> Mapping[str, str]:
        """The params an encode of ``numel`` elements would typically produce."""
        raise NotImplementedError

    def _layout(self, numel: int, params: Mapping[str, str], untrusted: bool) -> Layout:
        raise NotImplementedError

    def _encode(
        self, x: torch.Tensor, state: CodecState | None, backend: Backend, shape: tuple[int, ...]
    ) -> tuple[dict[str, str], Output]:
        """Encode the flat, contiguous, finite ``x`` (of the given original shape)."""
        raise NotImplementedError

    def _decode(
        self, views: dict[str, torch.Tensor], params: Mapping[str, str], numel: int, dst: torch.Tensor, backend: Backend
    ) -> None:
        raise NotImplementedError


def check_range(codec: str, what: str, t: torch.Tensor, bound: float, nonneg: bool = False) -> None:
    """Raise PayloadError unless ``t`` (small: scales, factors, values) is finite, within
    ``+-bound`` (so that decoding cannot overflow the output dtype) and, with ``nonneg``,
    not negative."""
    if t.numel() == 0:
        return
    if not bool(torch.isfinite(t).all()):
        raise PayloadError(f"codec {codec}: {what} hold non-finite values")
    if float(t.abs().max()) > bound:
        raise PayloadError(f"codec {codec}: {what} exceed {bound:.3g}, which would overflow the output")
    if nonneg and float(t.min()) < 0:
        raise PayloadError(f"codec {codec}: negative {what}")


def max_value(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)
