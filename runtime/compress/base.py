"""The codec interface: every compression kernel pair lives behind it.

A codec turns a tensor into an :class:`Encoded` (a few named byte buffers plus string
parameters) and back. Codecs with memory (error feedback residuals, PowerSGD warm-start
factors) keep it in a :class:`CodecState` that the caller (the strategy) owns, so that it can
live on CPU and be saved in checkpoints.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import torch


class PayloadError(ValueError):
    """An encoded payload is malformed: truncated, corrupted, inconsistent or over a limit."""


@dataclasses.dataclass
class Encoded:
    """One encoded tensor.

    Attributes:
        codec: the ``suanwang.v1.Codec`` enum value that produced it.
        shape: shape of the decoded tensor.
        dtype: dtype of the decoded tensor.
        data: the wire bytes (a 1-D uint8 CPU tensor, contiguous).
        params: small string parameters decode needs (block size, k, rank, ...).

    An encoder may lend ``data`` out of a buffer pool that it reuses (a fresh buffer of
    hundreds of MiB costs more page faults than the encoding arithmetic). Calling
    :meth:`release` (or leaving a ``with`` block) when the bytes have been sent hands the
    buffer back; ``data`` must not be used afterwards. Never releasing is always safe: the
    buffer is then simply garbage collected and the next encode allocates a new one.
    """

    codec: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    data: torch.Tensor
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    _release: Callable[[], None] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())

    def release(self) -> None:
        """Hand ``data``'s buffer back to the encoder that lent it (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            self.data = torch.empty(0, dtype=torch.uint8)
            release()

    def __enter__(self) -> "Encoded":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclasses.dataclass
class CodecState:
    """Per-tensor memory of a codec, owned by the strategy.

    ``tensors`` holds named state tensors (e.g. ``residual``); ``step`` counts encodes.
    """

    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": {k: v.detach().cpu() for k, v in self.tensors.items()}, "step": self.step}

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any]) -> "CodecState":
        return cls(tensors=dict(sd["tensors"]), step=int(sd["step"]))


class Codec(abc.ABC):
    """An encode/decode kernel pair.

    Subclasses set ``kind`` to their ``suanwang.v1.Codec`` enum value.
    """

    kind: int

    @abc.abstractmethod
    def encode(self, tensor: torch.Tensor, state: CodecState | None = None) -> Encoded:
        """Encode ``tensor``; with a ``state``, apply and update error feedback.

        Raises:
            ValueError: the tensor holds NaN/Inf and the codec's policy is to refuse.
        """

    @abc.abstractmethod
    def decode(self, enc: Encoded, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``enc`` (into ``out`` when given, which must match shape and dtype).

        Raises:
            PayloadError: ``enc`` is truncated, corrupted or inconsistent with its params.
        """

    @abc.abstractmethod
    def estimate_ratio(self, numel: int, dtype: torch.dtype = torch.float32) -> float:
        """Expected (input bytes / encoded bytes) for a tensor of ``numel`` elements."""
