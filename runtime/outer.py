"""The outer optimizer of DiLoCo: SGD with (Nesterov) momentum on the mean pseudo-gradient.

It steps a flat fp32 vector that may live on CPU (saving device memory) and follows the
update of ``torch.optim.SGD`` exactly (dampening 0, first step initialises the buffer).
"""

from __future__ import annotations

import torch


class OuterSGD:
    """SGD with momentum on a flat parameter vector.

    Args:
        lr: outer learning rate.
        momentum: momentum factor (0 disables the buffer).
        nesterov: use Nesterov momentum.
    """

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False):
        if nesterov and momentum <= 0:
            raise ValueError("outer optimizer: nesterov needs momentum > 0")
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.buf: torch.Tensor | None = None

    def step(self, params: torch.Tensor, grad: torch.Tensor, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Update ``params`` in place with ``grad`` (the mean pseudo-gradient); returns it.

        With ``span=(a, b)``, ``grad`` is the gradient of ``params[a:b]`` only and only that
        slice (and its momentum) moves: streaming DiLoCo steps one fragment at a time.
        """
        a, b = span if span is not None else (0, params.numel())
        target = params[a:b]
        if self.momentum > 0:
            if self.buf is None:
                # zeros, then buf = momentum * 0 + grad: bit-identical to torch's clone(grad)
                self.buf = torch.zeros_like(params)
            buf = self.buf[a:b]
            buf.mul_(self.momentum).add_(grad)
            update = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
        else:
            update = grad
        target.add_(update, alpha=-self.lr)
        return params

    def state_dict(self) -> dict:
        return {"buf": None if self.buf is None else self.buf.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.buf = None if sd.get("buf") is None else sd["buf"].clone()
