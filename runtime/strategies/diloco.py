"""DiLoCo: H inner steps, then an outer step on the sample-weighted mean pseudo-gradient.

The global parameters and the outer momentum live on the gateway (CPU, fp32), so device
memory holds only the replica and its inner optimizer state.
"""

from __future__ import annotations

import torch

from suanwang.runtime.outer import OuterSGD
from suanwang.runtime.strategies.base import CenterStrategy, LocalStats, WorkerStrategy


class DilocoWorker(WorkerStrategy):
    def __init__(self, inner_steps: int):
        self.inner_steps = inner_steps

    def local_work(self, worker, round: int, steps: int | None = None, until: float | None = None) -> LocalStats:
        return worker.train_steps(self.inner_steps if steps is None else steps, until)

    def contribution(self, worker) -> torch.Tensor:
        # pseudo-gradient: where the round started minus where the inner steps led
        return worker.round_start - worker.params_vector()

    def apply(self, worker, result: torch.Tensor | None) -> None:
        if result is None:
            raise ValueError("diloco: a round result must carry parameters")
        worker.load_params_vector(result)


class DilocoCenter(CenterStrategy):
    def __init__(self, outer_lr: float, outer_momentum: float, nesterov: bool):
        self.opt = OuterSGD(outer_lr, outer_momentum, nesterov)
        self.params: torch.Tensor | None = None

    def init(self, params: torch.Tensor) -> None:
        self.params = params.detach().to(torch.float32).clone()

    def post(self, mean: torch.Tensor, span: tuple[int, int] | None = None) -> torch.Tensor:
        assert self.params is not None, "DilocoCenter.init was not called"
        self.opt.step(self.params, mean, span)
        return self.params.clone() if span is None else self.params[span[0] : span[1]].clone()

    def rollback(self, span: tuple[int, int] | None = None) -> torch.Tensor:
        """The round's starting point: the inner steps of an abandoned round are undone."""
        assert self.params is not None
        return self.params.clone()

    def state(self) -> dict[str, torch.Tensor]:
        assert self.params is not None
        out = {"params": self.params}
        if self.opt.buf is not None:
            out["momentum"] = self.opt.buf
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        self.params = state["params"].clone()
        self.opt.load_state_dict({"buf": state.get("momentum")})
        return self.params.clone()
