"""Thin Ray actor shells around :class:`Worker` and :class:`Gateway`.

All logic lives in the plain classes; these only construct them inside the actor process
and forward calls, so tests can drive the same code without Ray.
"""

from __future__ import annotations

import logging
import os

import ray

from suanwang.runtime.config import JobConfig
from suanwang.runtime.faults import Fault
from suanwang.runtime.functions import JobFunctions


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("SUANWANG_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@ray.remote(concurrency_groups={"arrival": 1})
class WorkerActor:
    """Ray shell of :class:`suanwang.runtime.worker.Worker`. Calls run one at a time, in
    order, except :meth:`deliver` (``strategy.apply_on_arrival``), which runs on a thread of
    its own so that a round's result reaches a worker while it trains."""

    def __init__(self, spec, cfg: JobConfig, fns: JobFunctions, faults: tuple[Fault, ...]):
        _setup_logging()
        from suanwang.runtime.worker import Worker

        self.w = Worker(spec, cfg, fns, faults)

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def create_store(self, host: str) -> int:
        return self.w.create_store(host)

    def init_group(self, host: str, port: int) -> None:
        self.w.init_group(host, port)

    def numel(self) -> int:
        return self.w.numel

    def layout(self) -> list:
        return self.w.layout()

    def params_vector(self):
        return self.w.params_vector()

    def eval_state(self):
        return self.w.eval_state()

    def local_work(
        self, round: int, steps: int | None = None, until: float | None = None, contribute: bool = False,
        wait_applied: int | None = None,
    ):
        return self.w.local_work(round, steps, until, contribute, wait_applied)

    @ray.method(concurrency_group="arrival")
    def deliver(self, round: int, result, verify: bool = True, settle_after: int | None = None) -> tuple[str, str]:
        return self.w.deliver(round, result, verify, settle_after)

    def contribution(self):
        return self.w.contribution()

    def apply(self, result, verify: bool = True) -> tuple[str, str]:
        return self.w.apply(result, verify)

    def shared_digest(self) -> str:
        return self.w.shared_digest()

    def save(self, path: str) -> None:
        self.w.save(path)

    def load(self, path: str) -> tuple[str, str]:
        return self.w.load(path)

    def evaluate(self, after: int | None = None) -> float:
        return self.w.evaluate(after)

    def shutdown(self) -> None:
        self.w.shutdown()


@ray.remote
class GatewayActor:
    """Ray shell of :class:`suanwang.runtime.wan.gateway.Gateway`."""

    def __init__(self, center: str, cfg: JobConfig, layout: list, token: str, link_faults: tuple = ()):
        _setup_logging()
        from suanwang.runtime.wan.factory import build_gateway

        self.g = build_gateway(center, cfg, layout, token, link_faults)

    def start(self, listen: str | None = None) -> str:
        return self.g.start(listen)

    def connect(self, addresses: dict[str, str]) -> dict[str, float]:
        return self.g.connect(addresses)

    def init(self, params) -> str:
        return self.g.init(params)

    def contribute(self, round: int, tensor, stats, deadline: float, live: list[str]):
        return self.g.contribute(round, tensor, stats.contribution_weight, deadline, live)

    def measure_links(self) -> dict:
        return self.g.measure_links()

    def reduce(self, round: int, participants: list[str], samples: dict[str, int], deadline: float):
        return self.g.reduce(round, participants, samples, deadline)

    def finish(self, round: int):
        return self.g.finish(round)

    def abort(self, round: int):
        return self.g.abort(round)

    def skip(self, round: int) -> None:
        self.g.skip(round)

    def resync_from(self, peer: str, round: int):
        return self.g.resync_from(peer, round)

    def stats(self) -> dict:
        return self.g.stats()

    def global_params(self):
        return self.g.global_params()

    def save(self, path: str) -> None:
        self.g.save(path)

    def load(self, path: str) -> int:
        return self.g.load(path)

    def close(self) -> None:
        self.g.close()


@ray.remote
class EvaluatorActor:
    """Ray shell of :class:`suanwang.runtime.worker.Evaluator`."""

    def __init__(self, cfg: JobConfig, fns: JobFunctions):
        _setup_logging()
        from suanwang.runtime.worker import Evaluator

        self.e = Evaluator(cfg, fns)

    def evaluate(self, flat) -> float:
        return self.e.evaluate(flat)
