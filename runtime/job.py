"""The public entry point: build a job from a config and the user's callables, run it.

Embedded mode (the default) starts one local Ray instance in which each center is a
placement group holding its workers and its gateway; gateways talk gRPC over loopback.

Example::

    from suanwang.runtime import Job, JobFunctions, load_config

    job = Job(load_config("demo.yaml"), JobFunctions(model_fn, data_fn, loss_fn, eval_fn))
    result = job.run()
    print(result.final_eval_loss, result.wan_bytes)
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from typing import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from suanwang.runtime import device as devices
from suanwang.runtime.actors import EvaluatorActor, GatewayActor, WorkerActor
from suanwang.runtime import checkpoint as ckpt
from suanwang.runtime.config import JobConfig
from suanwang.runtime.coordinator import CenterHandle, Coordinator
from suanwang.runtime.faults import Fault
from suanwang.runtime.functions import JobFunctions
from suanwang.runtime.results import JobResult, RoundRecord
from suanwang.runtime.wan.linkfaults import LinkFault
from suanwang.runtime.worker import WorkerSpec

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 300.0


# The Ray cluster a job starts for itself passes objects up to 1 MiB inline, in the task
# call, instead of through the object store (Ray's default: 100 KiB). A streaming fragment
# of the demo model (~140 KB) otherwise goes contribution -> plasma -> gateway and result ->
# plasma -> workers every round: the raylet's CPU over a streaming_unshaped run of `bench
# e2e` fell from ~6% of the 2 cores to ~1%. Large models' payloads still use plasma.
EMBEDDED_RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 1 << 20}


class Job:
    """One training job across centers.

    Args:
        config: the validated launch config.
        functions: the model, data, loss, eval and optimizer callables.
        faults: faults to inject (drills and tests): worker faults (:class:`Fault`) and
            WAN faults (:class:`~suanwang.runtime.wan.linkfaults.LinkFault`).
        ray_address: join this Ray cluster instead of starting a local one.
        resume: continue from the newest checkpoint in ``checkpoint.dir`` if there is one.
        routes: where gateways listen and whom they dial (``listen(center)``,
            ``dial(src, dst)``), e.g. :class:`~suanwang.runtime.wan.bridge.BridgedRoutes`
            to cross the WAN emulator; default: loopback TCP.
    """

    def __init__(
        self,
        config: JobConfig,
        functions: JobFunctions,
        faults: tuple[Fault | LinkFault, ...] = (),
        ray_address: str | None = None,
        resume: bool = False,
        routes=None,
    ):
        for c in config.centers:
            if c.ray != "embedded":
                raise ValueError(
                    f"centers[{c.name}].ray: {c.ray!r}: only embedded centers run from one "
                    "driver; a multi-cluster job is not supported by this build yet"
                )
        self.cfg = config
        self.fns = functions
        self.faults = tuple(f for f in faults if isinstance(f, Fault))
        self.link_faults = tuple(f for f in faults if isinstance(f, LinkFault))
        self.ray_address = ray_address
        self.resume = resume
        self.routes = routes
        self.token = config.wan.token or secrets.token_urlsafe(24)
        self._pgs: list = []
        self._actors: list = []
        self._started_ray = False

    # ------------------------------------------------------------------ setup
    def _init_ray(self) -> None:
        if ray.is_initialized():
            return
        need = sum(c.workers + 1 for c in self.cfg.centers)
        kwargs = dict(
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            namespace=f"suanwang-{self.cfg.job.name}",
        )
        if self.ray_address:
            ray.init(address=self.ray_address, **kwargs)
        else:
            # Logical CPUs: every actor gets one bundle even on a 2-core machine; torch in
            # each worker runs a single thread, so they share the real cores fairly.
            ray.init(num_cpus=max(need, os.cpu_count() or 1), _system_config=EMBEDDED_RAY_SYSTEM_CONFIG, **kwargs)
        self._started_ray = True

    def _start_centers(self) -> list[CenterHandle]:
        cfg = self.cfg
        handles = []
        n = len(cfg.centers)
        for ci, c in enumerate(cfg.centers):
            extra = devices.ray_resources(c.device)
            bundles = [{"CPU": 1.0, **extra} for _ in range(c.workers)] + [{"CPU": 1.0}]
            pg = placement_group(bundles, strategy="PACK", name=f"{cfg.job.name}-{c.name}")
            self._pgs.append(pg)
            ray.get(pg.ready(), timeout=_START_TIMEOUT_S)
            workers = []
            for rank in range(c.workers):
                spec = WorkerSpec(c.name, ci, n, rank, c.workers, c.device)
                w = WorkerActor.options(
                    num_cpus=1,
                    resources=extra or None,
                    name=f"{c.name}-worker-{rank}",
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
                ).remote(spec, cfg, self.fns, self.faults)
                workers.append(w)
            self._actors += workers
            handles.append(CenterHandle(c.name, workers, None, placement_group=pg))
        layout = ray.get(handles[0].leader.layout.remote(), timeout=_START_TIMEOUT_S)
        for h in handles:
            h.gateway = GatewayActor.options(
                num_cpus=1,
                name=f"{h.name}-gateway",
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    h.placement_group, placement_group_bundle_index=len(h.workers)
                ),
            ).remote(h.name, cfg, layout, self.token, self.link_faults)
            self._actors.append(h.gateway)
        # intra-center groups: rank 0 hosts the rendezvous store
        joins = []
        for h in handles:
            host = ray.get(h.leader.node_ip.remote(), timeout=_START_TIMEOUT_S)
            port = ray.get(h.leader.create_store.remote(host), timeout=_START_TIMEOUT_S)
            joins += [w.init_group.remote(host, port) for w in h.workers]
        ray.get(joins, timeout=_START_TIMEOUT_S)
        # gateways: listen, then connect to each other
        r = self.routes
        addrs = dict(
            zip(
                [h.name for h in handles],
                ray.get([h.gateway.start.remote(r.listen(h.name) if r else None) for h in handles]),
            )
        )
        ray.get(
            [
                h.gateway.connect.remote({p: (r.dial(h.name, p) if r else a) for p, a in addrs.items() if p != h.name})
                for h in handles
            ],
            timeout=_START_TIMEOUT_S,
        )
        # one center probes at a time, so the probes do not compete with each other
        for h in handles:
            ray.get(h.gateway.measure_links.remote(), timeout=_START_TIMEOUT_S)
        if cfg.wan.insecure:
            log.warning("INSECURE: gateways speak plaintext gRPC (wan.insecure: true)")
        # every center starts from the same parameters, checked by digest
        digests = ray.get(
            [h.gateway.init.remote(h.leader.params_vector.remote()) for h in handles],
            timeout=_START_TIMEOUT_S,
        )
        if len(set(digests)) != 1:
            raise RuntimeError(
                "centers built different initial parameters from the same seed; "
                "model_fn must be deterministic under torch.manual_seed"
            )
        return handles

    def _teardown(self) -> None:
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - best effort: the actor may be gone already
                pass
        self._actors.clear()
        for pg in self._pgs:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001
                pass
        self._pgs.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def _resume(self, handles: list[CenterHandle], coord: Coordinator) -> int:
        """Load the newest checkpoint into every center; returns the round to start at.

        Raises:
            ValueError: the checkpoint belongs to another job layout (naming what differs).
        """
        found = ckpt.latest(self.cfg.checkpoint_dir)
        if found is None:
            log.warning("resume: no checkpoint under %s; starting from scratch", self.cfg.checkpoint_dir)
            return 0
        path, man = found
        want = {h.name: len(h.workers) for h in handles}
        if man.centers != want or man.strategy != self.cfg.strategy.kind or man.job != self.cfg.job.name:
            raise ValueError(
                f"checkpoint {path}: job {man.job!r} strategy {man.strategy!r} centers {man.centers}; "
                f"this config has job {self.cfg.job.name!r} strategy {self.cfg.strategy.kind!r} centers {want}"
            )
        refs = [h.gateway.load.remote(str(ckpt.gateway_path(path, h.name))) for h in handles]
        loads = {h.name: [w.load.remote(str(ckpt.worker_path(path, h.name, i))) for i, w in enumerate(h.workers)]
                 for h in handles}
        ray.get(refs, timeout=_START_TIMEOUT_S)
        digests = {name: ray.get(r, timeout=_START_TIMEOUT_S) for name, r in loads.items()}
        if {shared for ds in digests.values() for shared, _ in ds} != {man.params_digest}:
            raise ValueError(f"checkpoint {path}: restored parameters do not match the manifest's digest")
        for name, ds in digests.items():  # a center's replicas (its own under streaming) must be one state
            if len({own for _, own in ds}) > 1:
                raise ValueError(f"checkpoint {path}: the workers of {name} restored different parameters")
        log.warning("resumed from %s (round %d)", path, man.round)
        return coord.restore(man)

    # ------------------------------------------------------------------ run
    def _max_rounds(self) -> int:
        """``cfg.rounds``; with a sample budget, as many as it could take at one step of a
        single center per round (the budget stops the job; time-boxed slots and centers
        left out vary the rounds)."""
        cfg = self.cfg
        if cfg.train.samples is None:
            return cfg.rounds
        return -(-cfg.train.samples // min(cfg.samples_per_step(c.name) for c in cfg.centers))

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> JobResult:
        """Train for ``cfg.rounds`` rounds (``train.steps`` of the strategy's inner steps, or
        until ``train.samples`` are taken);
        always releases every actor, placement group and (if it started it) the local Ray
        instance, also on Ctrl+C.

        Raises:
            RuntimeError: no center can complete a round, or the centers disagree on
                their initial parameters.
        """
        t0 = time.perf_counter()
        self._init_ray()
        try:
            handles = self._start_centers()
            evaluator = None
            if self.cfg.train.eval_on == "evaluator":
                # no CPU reserved: it shares the cores with the workers while it evaluates
                evaluator = EvaluatorActor.options(num_cpus=0, name="evaluator").remote(self.cfg, self.fns)
                self._actors.append(evaluator)
                # the initial evaluation also waits out its start, before the clock runs
                initial = ray.get(evaluator.evaluate.remote(handles[0].leader.eval_state.remote()), timeout=_START_TIMEOUT_S)
            else:
                initial = ray.get(handles[0].leader.evaluate.remote())
            coord = Coordinator(self.cfg, handles, on_round)
            coord.evaluator = evaluator
            coord.initial_eval_loss = initial
            start = self._resume(handles, coord) if self.resume else 0
            initial = coord.initial_eval_loss
            numel = ray.get(handles[0].leader.numel.remote())
            coord.run(self._max_rounds(), self.cfg.train.eval_every_rounds, start, numel)
            live = [h for h in handles if h.state == "live"]
            # what was evaluated: the parameters, or under streaming the global state
            final_params = ray.get(live[0].leader.eval_state.remote()) if live else None
            gw_stats = {}
            for h in handles:
                if h.state == "live":
                    try:
                        gw_stats[h.name] = ray.get(h.gateway.stats.remote(), timeout=30)
                        ray.get(h.gateway.close.remote(), timeout=30)
                    except Exception as err:  # noqa: BLE001 - closing is best effort
                        log.warning("%s: gateway close failed: %s", h.name, err)
        finally:
            self._teardown()
        rejected = {n: st["rejected"] for n, st in gw_stats.items() if st["rejected"]}
        last_eval = next((h.eval_loss for h in reversed(coord.history) if h.eval_loss is not None), math.nan)
        links = {}
        for key, nbytes in sorted(coord.link_bytes.items()):
            a, b = key.split("<->")
            link = self.cfg.link(a, b)
            measured = gw_stats.get(a, {}).get("links", {}).get(b) or gw_stats.get(b, {}).get("links", {}).get(a)
            links[key] = {
                "bytes": nbytes,
                "bandwidth_mbit": link.bandwidth_mbit,
                "rtt_ms": link.rtt_ms,
                "measured": measured,
            }
        return JobResult(
            job=self.cfg.job.name,
            strategy=self.cfg.strategy.kind,
            codec=self.cfg.codec.kind,
            centers=coord.totals,
            links=links,
            wan_bytes=coord.wan_bytes,
            rounds=len(coord.history),
            wall_s=time.perf_counter() - t0,
            initial_eval_loss=initial,
            final_eval_loss=last_eval,
            params_agree=coord.params_agree,
            history=coord.history,
            events=coord.events + [f"{n}: {msg}" for n, msgs in rejected.items() for msg in msgs],
            insecure=self.cfg.wan.insecure,
            final_params=final_params,
        )
