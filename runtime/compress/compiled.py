"""torch.compile'd kernels for the CPU fast path, with a graceful fallback.

On CPU, inductor fuses a codec's whole pass (add the residual, block reduction, scale,
round, pack, write the residual back) into one loop that reads each input once. Measured
on 2 shared cores at 64M float32 against the chunked eager ops (benchmarks/codecs.py):
int8 encode ~1.4x and decode ~1.6x faster, int4 encode ~1.8x, sign encode with error
feedback ~1.6x. Kernels that did not win are not here: int4 and sign decode (a lookup
table with eager ``index_select`` is faster) and the topk candidate pass (inductor writes
bool masks slowly; packing the flags eight to a byte and expanding them afterwards came
out even with the chunked eager pass, so topk stays eager).

Kernels here are plain torch functions of whole tensors; :func:`run` calls the compiled
version and returns False when the caller should use its eager path instead: tensors
under :data:`MIN_NUMEL` elements (compiling would not pay), a backend without compilation,
a codec built with ``compile=False``, or a kernel whose compilation failed once (logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

MIN_NUMEL = 1 << 20
"""Smaller tensors always run eager."""

_compiled: dict[Callable, Callable] = {}
_failed: set[Callable] = set()
# Dynamo's compile caches are process-wide: serialise compiled calls (each one already
# uses every intra-op thread).
_lock = threading.Lock()


def run(fn: Callable[..., None], *args: object, numel: int, enabled: bool) -> bool:
    """Run the compiled ``fn(*args)`` (which writes its results into its arguments).

    Returns:
        True if it ran; False if the caller must run its eager path.
    """
    if not enabled or numel < MIN_NUMEL or fn in _failed:
        return False
    for t in args:
        # inductor cannot take a typed view of a storage that is not whole elements long
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() % t.element_size():
            return False
    with _lock:
        compiled = _compiled.get(fn)
        if compiled is None:
            compiled = _compiled[fn] = torch.compile(fn, fullgraph=True)
        try:
            compiled(*args)
        except Exception as err:  # compilation errors surface at the first call
            _failed.add(fn)
            log.warning("torch.compile of %s failed, using eager kernels: %s", fn.__name__, err)
            return False
    return True


def failed() -> set[str]:
    """Names of the kernels whose compilation failed in this process."""
    return {fn.__name__ for fn in _failed}


TINY = 1e-30


# -- blockwise integer quantization (int8, int4) -------------------------------------------


def _quantize(a: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    amax = a.abs().amax(dim=1, keepdim=True)
    inv = (1.0 / amax.clamp(min=TINY)) * qmax  # as the eager kernel computes it
    t = torch.round(a * inv)
    scale = amax / qmax
    return t, scale, t * scale


def _pack_int4(t: torch.Tensor) -> torch.Tensor:
    # Two values a byte: low nibble value + 8, high nibble value (as a signed int8).
    pairs = t.view(t.shape[0], -1, 2)
    return (pairs[:, :, 0] + 8.0 + 16.0 * pairs[:, :, 1]).to(torch.int8)


def int8_encode(x2: torch.Tensor, scales: torch.Tensor, q: torch.Tensor) -> None:
    t, scale, _ = _quantize(x2.float(), 127.0)
    q.copy_(t.to(torch.int8))
    scales.copy_(scale.squeeze(1))


def int8_encode_ef(x2: torch.Tensor, r2: torch.Tensor, scales: torch.Tensor, q: torch.Tensor) -> None:
    a = x2.float() + r2
    t, scale, deq = _quantize(a, 127.0)
    q.copy_(t.to(torch.int8))
    scales.copy_(scale.squeeze(1))
    r2.copy_(a - deq)


def int4_encode(x2: torch.Tensor, scales: torch.Tensor, q: torch.Tensor) -> None:
    t, scale, _ = _quantize(x2.float(), 7.0)
    q.copy_(_pack_int4(t))
    scales.copy_(scale.squeeze(1))


def int4_encode_ef(x2: torch.Tensor, r2: torch.Tensor, scales: torch.Tensor, q: torch.Tensor) -> None:
    a = x2.float() + r2
    t, scale, deq = _quantize(a, 7.0)
    q.copy_(_pack_int4(t))
    scales.copy_(scale.squeeze(1))
    r2.copy_(a - deq)


def int8_decode(q: torch.Tensor, scales: torch.Tensor, out2: torch.Tensor) -> None:
    out2.copy_(q.float() * scales.unsqueeze(1))


# -- sign ----------------------------------------------------------------------------------

def _sign_bits(a: torch.Tensor) -> torch.Tensor:
    # Bit j of byte i is the sign bit of element 8i + j. (OR of eight shifted columns
    # compiles to far better code than a sum over a dimension of 8.)
    n = torch.signbit(a).view(-1, 8).to(torch.int32)
    packed = n[:, 0]
    for j in range(1, 8):
        packed = packed | (n[:, j] << j)
    return packed.to(torch.uint8)


def sign_encode(x2: torch.Tensor, scales: torch.Tensor, bits: torch.Tensor) -> None:
    a = x2.float()
    s = a.abs().sum(dim=1, keepdim=True) / a.shape[1]
    bits.copy_(_sign_bits(a))
    scales.copy_(s.squeeze(1))


def sign_encode_ef(x2: torch.Tensor, r2: torch.Tensor, scales: torch.Tensor, bits: torch.Tensor) -> None:
    a = x2.float() + r2
    s = a.abs().sum(dim=1, keepdim=True) / a.shape[1]
    bits.copy_(_sign_bits(a))
    scales.copy_(s.squeeze(1))
    r2.copy_(a - torch.copysign(s, a))
