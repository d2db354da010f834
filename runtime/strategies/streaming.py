"""Streaming DiLoCo (Douillard et al., 2025): fragments synced in turn, overlapped.

The flat parameters are cut into ``F`` fragments at tensor boundaries. Round ``r`` (a slot
of ``H / F`` inner steps) synchronises fragment ``r mod F``: its pseudo-gradient is
exchanged while the workers go on with the next slot, and the new global value of the
fragment is applied one slot late, mixed with the local value that kept training:
``local = mix * local + (1 - mix) * global``. The WAN carries ``1 / F`` of the model per
slot instead of all of it per round, at a steady rate instead of in bursts.

With one fragment, no overlap and ``mix = 0`` this is exactly DiLoCo.
"""

from __future__ import annotations

import dataclasses

import torch

from suanwang.runtime.strategies.base import LocalStats, WorkerStrategy
from suanwang.runtime.strategies.diloco import DilocoCenter

Span = tuple[int, int]


class StreamingWorker(WorkerStrategy):
    keeps_local_progress = True  # the mix leaves each center's replica its own

    def __init__(self, slot_steps: int, mix: float):
        self.slot_steps = slot_steps
        self.mix = mix
        self.fragments: list[Span] = []
        self.slot = 0
        # samples of the last F slots: the steps behind the pseudo-gradient of the fragment
        # sent next (each fragment is sent every F slots), its weight in the mean
        self.recent: list[int] = []

    def span(self, round: int) -> Span:
        return self.fragments[round % len(self.fragments)]

    def local_work(self, worker, round: int, steps: int | None = None, until: float | None = None) -> LocalStats:
        self.slot = round
        st = worker.train_steps(self.slot_steps if steps is None else steps, until)
        self.recent = [*self.recent, st.samples][-max(1, len(self.fragments)) :]
        return dataclasses.replace(st, weight=sum(self.recent))

    def state_dict(self) -> dict:
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.recent = [int(x) for x in state.get("recent", [])]

    def contribution(self, worker) -> torch.Tensor:
        a, b = self.span(self.slot)
        return worker.round_start[a:b] - worker.params_vector()[a:b]

    def apply(self, worker, result) -> None:
        if result is None:
            raise ValueError("streaming: a round result must carry a fragment")
        a, b, glob = result
        params = worker.params_vector()
        if self.mix == 0:
            params[a:b] = glob
        else:
            params[a:b].mul_(self.mix).add_(glob, alpha=1 - self.mix)
        round_start = worker.round_start.clone()
        round_start[a:b] = glob
        worker.load_params_vector(params, round_start=round_start)

    def agreement_tensor(self, worker) -> torch.Tensor:
        # replicas keep local progress by design; what every center must share is the
        # global state
        return worker.round_start

    def eval_tensor(self, worker) -> torch.Tensor | None:
        return worker.round_start


class StreamingCenter(DilocoCenter):
    """DiLoCo's center half, stepping one fragment (with its own momentum slice) at a time."""

    def post(self, mean: torch.Tensor, span: Span | None = None):
        assert span is not None, "streaming needs the fragment of the round"
        glob = super().post(mean, span)
        return span[0], span[1], glob

    def rollback(self, span: Span | None = None):
        assert self.params is not None and span is not None
        a, b = span
        return a, b, self.params[a:b].clone()
