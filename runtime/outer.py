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

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Update ``params`` in place with ``grad`` (the mean pseudo-gradient); returns it."""
        if self.momentum > 0:
            if self.buf is None:
                self.buf = grad.detach().clone()
            else:
                self.buf.mul_(self.momentum).add_(grad)
            if self.nesterov:
                update = grad.add(self.buf, alpha=self.momentum)
            else:
                update = self.buf
        else:
            update = grad
        params.add_(update, alpha=-self.lr)
        return params

    def state_dict(self) -> dict:
        return {"buf": None if self.buf is None else self.buf.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.buf = None if sd.get("buf") is None else sd["buf"].clone()
