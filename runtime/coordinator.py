"""The control plane's round loop (embedded in the driver).

Each round: every live center does its local work; its gateway sends the contribution
and collects the peers' until the deadline; :func:`decide_round` names the participants;
they commit and broadcast the result to their workers. A center that misses a round is
left out with a logged reason; under DiLoCo it then fetches the committed state from a
participant (digest-verified) and rejoins.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from suanwang.runtime.config import DilocoStrategy, JobConfig
from suanwang.runtime.policy import RoundDecision, decide_round
from suanwang.runtime.results import CenterTotals, RoundRecord

log = logging.getLogger(__name__)

_GRACE_S = 5.0


@dataclasses.dataclass
class CenterHandle:
    """A center as the coordinator sees it: its worker actors and its gateway actor."""

    name: str
    workers: list
    gateway: object
    state: str = "live"  # live | late | dead
    pending: object = None  # ref of a late round's contribute
    missed_round: int = -1

    @property
    def leader(self):
        return self.workers[0]


class Coordinator:
    """Runs the rounds of one job over already started centers.

    Args:
        cfg: the job config.
        centers: the centers, in config order.
        on_round: called with each :class:`RoundRecord` as it completes (progress display).
    """

    def __init__(self, cfg: JobConfig, centers: list[CenterHandle], on_round: Callable[[RoundRecord], None] | None = None):
        self.cfg = cfg
        self.centers = {c.name: c for c in centers}
        self.on_round = on_round or (lambda rec: None)
        self.totals = {c.name: CenterTotals(workers=len(c.workers)) for c in centers}
        self.link_bytes: dict[str, int] = {}
        self.history: list[RoundRecord] = []
        self.events: list[str] = []
        self.params_agree = True
        self.wan_bytes = 0
        self.t0 = time.perf_counter()

    def _event(self, msg: str) -> None:
        log.warning(msg)
        self.events.append(msg)

    # ------------------------------------------------------------------ recovery
    def _catch_up(self, last_round: int, source: str | None) -> None:
        """Bring late centers whose work has finished back into the job."""
        for c in self.centers.values():
            if c.state != "late":
                continue
            done, _ = ray.wait([c.pending], timeout=0)
            if not done:
                continue
            try:
                ray.get(c.pending)
            except (RayActorError, RayTaskError) as err:
                c.state = "dead"
                self._event(f"{c.name}: gone after missing round {c.missed_round}: {err}")
                continue
            if not isinstance(self.cfg.strategy, DilocoStrategy) or source is None:
                c.state = "dead"
                self._event(f"{c.name}: dropped for the rest of the job (strategy {self.cfg.strategy.kind} cannot resync a center)")
                continue
            state = c.gateway.resync_from.remote(source, last_round)
            try:
                ray.get([w.apply.remote(state) for w in c.workers], timeout=self.cfg.wan.round_timeout_s)
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                c.state = "dead"
                self._event(f"{c.name}: resync from {source} failed: {err}")
                continue
            c.state = "live"
            self._event(f"{c.name}: rejoined at round {last_round + 1} with state fetched from {source}")

    # ------------------------------------------------------------------ one round
    def run_round(self, r: int, evaluate: bool) -> RoundRecord:
        cfg = self.cfg
        live = [c for c in self.centers.values() if c.state == "live"]
        if not live:
            raise RuntimeError(f"round {r}: no live center left")
        names = [c.name for c in live]
        t_round = time.perf_counter()
        deadline = time.time() + cfg.wan.round_timeout_s
        stats, contrib = {}, {}
        for c in live:
            st = [w.local_work.remote(r) for w in c.workers]
            stats[c.name] = st[0]
            tensor = c.leader.contribution.remote()
            contrib[c.name] = c.gateway.contribute.remote(r, tensor, st[0], deadline, names)
        refs = list(contrib.values())
        ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.time()) + _GRACE_S)
        held, failures, reports = {}, {}, {}
        for c in live:
            ref = contrib[c.name]
            if not ray.wait([ref], timeout=0)[0]:
                failures[c.name] = f"no report within the round deadline ({cfg.wan.round_timeout_s:g} s)"
                continue
            try:
                rep = ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                failures[c.name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0]}"
                continue
            reports[c.name] = rep
            held[c.name] = rep.held
        decision = decide_round(r, names, held, failures)
        for c, why in decision.excluded.items():
            self._event(f"round {r}: {c} left out: {why}")
        if not decision.proceed:
            raise RuntimeError(f"round {r}: no center can commit: {dict(decision.excluded)}")
        self._commit(r, decision, live, reports, stats, evaluate)
        rec = self._record(r, decision, reports, stats, t_round, evaluate)
        self._catch_up(r, decision.participants[0])
        return rec

    def _commit(self, r, decision: RoundDecision, live, reports, stats, evaluate) -> None:
        parts = list(decision.participants)
        self._applied = {}
        for c in live:
            if c.name in parts:
                result = c.gateway.commit.remote(r, parts)
                self._applied[c.name] = [w.apply.remote(result) for w in c.workers]
            else:
                # Its work for this round may still be running: queue the skip behind it,
                # then watch the gateway and resync the center once it is idle again.
                c.gateway.skip.remote(r)
                c.state = "late"
                c.pending = c.gateway.stats.remote()
                c.missed_round = r
        self._eval_ref = self.centers[parts[0]].leader.evaluate.remote() if evaluate else None

    def _record(self, r, decision, reports, stats, t_round, evaluate) -> RoundRecord:
        parts = list(decision.participants)
        digests = {c: ray.get(refs) for c, refs in self._applied.items()}
        flat = {d for ds in digests.values() for d in ds}
        if len(flat) != 1:
            self.params_agree = False
            self._event(f"round {r}: parameters differ across centers: {digests}")
        per_center = {}
        for name in parts:
            st = ray.get(stats[name])
            rep = reports[name]
            tot = self.totals[name]
            tot.samples += st.samples
            tot.steps += st.steps
            tot.compute_s += st.compute_s
            tot.wait_s += rep.encode_s + rep.wait_s
            sent = 0
            for peer, res in rep.sent.items():
                key = "<->".join(sorted((name, peer)))
                self.link_bytes[key] = self.link_bytes.get(key, 0) + res.bytes_sent
                sent += res.bytes_sent
            tot.wan_bytes_sent += sent
            self.wan_bytes += sent
            per_center[name] = {"steps": tot.steps, "loss": st.loss, "wan_bytes_sent": tot.wan_bytes_sent}
        eval_loss = ray.get(self._eval_ref) if self._eval_ref is not None else None
        rec = RoundRecord(
            round=r,
            time_s=time.perf_counter() - self.t0,
            round_s=time.perf_counter() - t_round,
            participants=parts,
            excluded=dict(decision.excluded),
            eval_loss=eval_loss,
            wan_bytes=self.wan_bytes,
            centers=per_center,
        )
        self.history.append(rec)
        self.on_round(rec)
        return rec

    def run(self, rounds: int, eval_every: int) -> None:
        for r in range(rounds):
            evaluate = (r + 1) % eval_every == 0 or r == rounds - 1
            self.run_round(r, evaluate)
