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
from typing import Callable, NamedTuple

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from suanwang.runtime import checkpoint as ckpt
from suanwang.runtime.checkpoint import Manifest
from suanwang.runtime.config import DilocoStrategy, JobConfig
from suanwang.runtime.policy import RoundDecision, decide_round
from suanwang.runtime.results import CenterTotals, RoundRecord
from suanwang.runtime.slots import WAIT, SlotPlan, SlotPlanner

log = logging.getLogger(__name__)

_GRACE_S = 5.0


@dataclasses.dataclass
class CenterHandle:
    """A center as the coordinator sees it: its worker actors and its gateway actor."""

    name: str
    workers: list
    gateway: object
    placement_group: object = None
    state: str = "live"  # live | late | dead
    pending: object = None  # ref of a late round's contribute
    missed_round: int = -1
    # apply_on_arrival: the newest round whose result was sent to the workers
    delivered_round: int | None = None

    @property
    def leader(self):
        return self.workers[0]


def contribution_with_work(strategy) -> bool:
    """Whether a leader's local work may return its contribution too. Under overlap the
    result of the round before is applied between a slot's work and its contribution;
    with several fragments that result is another fragment's, so the contribution cannot
    depend on it; with one fragment it does, and the contribution is a call of its own."""
    return not getattr(strategy, "overlap", 0) or getattr(strategy, "fragments", 1) > 1


class _Committed(NamedTuple):
    """A round decided, reduced and queued on the workers, not yet recorded."""

    round: int
    decision: RoundDecision
    reports: dict
    reduced: dict
    stats: dict
    t0: float
    reduced_s: float


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
        self.initial_eval_loss = float("nan")
        self.wan_bytes = 0
        self.t0 = time.perf_counter()
        # strategy.apply_on_arrival: results go to the workers' arrival threads
        self._on_arrival = bool(getattr(cfg.strategy, "apply_on_arrival", False))
        self._slots: dict[int, dict] = {}
        self.planner: SlotPlanner | None = None
        self.evaluator = None  # an EvaluatorActor (train.eval_on: evaluator), else the leader evaluates

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
                ray.get([w.apply.remote(state, False) for w in c.workers], timeout=self.cfg.wan.round_timeout_s)
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                c.state = "dead"
                self._event(f"{c.name}: resync from {source} failed: {err}")
                continue
            c.state = "live"
            self._event(f"{c.name}: rejoined at round {last_round + 1} with state fetched from {source}")

    # ------------------------------------------------------------------ one round (slot)
    def _start_planner(self) -> None:
        cfg = self.cfg
        names = [c.name for c in cfg.centers]
        self.planner = SlotPlanner(
            {n: cfg.center_inner_steps(n) for n in names},
            {n: cfg.samples_per_step(n) for n in names},
            slot_s=getattr(cfg.strategy, "slot_s", None),
            budget=cfg.train.samples,
            origin=time.time(),
            spent=sum(t.samples for t in self.totals.values()),
        )

    def _queue(self, r: int) -> bool:
        """Plan round ``r`` and start its local work; ``False``: the sample budget is spent
        and there is no round ``r``."""
        live = [c for c in self.centers.values() if c.state == "live"]
        if not live:
            raise RuntimeError(f"round {r}: no live center left")
        plan = self.planner.plan(r, [c.name for c in live], time.time())
        while plan is WAIT:  # near the budget: learn what the rounds in flight took
            q = self.planner.inflight()[0]
            slot = self._slots.get(q)
            self._observe(q, slot["stats"] if slot else {}, [c.name for c in live])
            plan = self.planner.plan(r, [c.name for c in live], time.time())
        if plan is None:
            return False
        self._work(r, [c for c in live if c.name in plan], plan)
        return True

    def _observe(self, r: int, stats: dict, names: list[str]) -> None:
        """Tell the planner (once) the samples that the centers ``names`` took in round
        ``r``, from ``stats`` (center -> ref of its LocalStats); a center left out is not
        waited for, and one whose local work failed counts none."""
        if r not in self.planner.inflight():
            return
        samples = 0
        for name in names:
            if name not in stats:
                continue
            try:
                samples += ray.get(stats[name], timeout=self.cfg.wan.round_timeout_s + _GRACE_S).samples
            except (GetTimeoutError, RayActorError, RayTaskError):
                pass
        self.planner.observe(r, samples)

    def _work(self, r: int, live: list[CenterHandle], plan: dict[str, SlotPlan]) -> None:
        """Start round ``r``'s local work on the centers ``live``, within ``plan``. The
        leader returns its contribution with its stats unless a result it must apply first
        comes in between (overlap with a single fragment: see :meth:`_run_overlapped`)."""
        fused = contribution_with_work(self.cfg.strategy)
        stats, contrib = {}, {}
        for c in live:
            p = plan[c.name]
            # apply_on_arrival: the result sent last (the round before last's) comes first
            after = c.delivered_round
            if fused:
                stats[c.name], contrib[c.name] = c.leader.local_work.options(num_returns=2).remote(
                    r, p.steps, p.until, True, after
                )
            else:
                stats[c.name] = c.leader.local_work.remote(r, p.steps, p.until, False, after)
            for w in c.workers[1:]:
                w.local_work.remote(r, p.steps, p.until, False, after)
        self._slots[r] = {"live": live, "t0": time.perf_counter(), "stats": stats, "fused": contrib}

    def _send(self, r: int) -> None:
        """Hand round ``r``'s contributions to the gateways (queued behind the local work
        and behind the previous round's results, in each actor's order)."""
        slot = self._slots[r]
        # a center left out of the round before may have this round's work queued already:
        # it sits this round out (that work is overwritten if it resyncs)
        slot["live"] = [c for c in slot["live"] if c.state == "live"]
        names = [c.name for c in slot["live"]]
        deadline = time.time() + self.cfg.wan.round_timeout_s
        slot["deadline"] = deadline
        slot["contrib"] = {
            c.name: c.gateway.contribute.remote(
                r, slot["fused"].get(c.name) or c.leader.contribution.remote(), slot["stats"][c.name], deadline, names
            )
            for c in slot["live"]
        }

    def _complete(self, r: int, evaluate: bool) -> RoundRecord:
        """Decide who takes part in round ``r``, reduce, queue the result on the workers and
        record the round once they have applied it."""
        return self._finalize(self._commit(r, evaluate))

    def _commit(self, r: int, evaluate: bool, last: bool = False) -> _Committed:
        """Decide who takes part in round ``r``, reduce, and queue the result on the workers
        (without waiting for them to apply it)."""
        cfg = self.cfg
        slot = self._slots.pop(r)
        live, contrib, stats = slot["live"], slot["contrib"], slot["stats"]
        names = [c.name for c in live]
        refs = list(contrib.values())
        ray.wait(refs, num_returns=len(refs), timeout=max(0.0, slot["deadline"] - time.time()) + _GRACE_S)
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
        for c in live:
            if c.state != "live":  # left out after this round was sent (overlap)
                failures[c.name] = "left out of an earlier round"
                held.pop(c.name, None)
        decision = decide_round(r, names, held, failures)
        for c, why in decision.excluded.items():
            self._event(f"round {r}: {c} left out: {why}")
        if not decision.proceed:
            raise RuntimeError(f"round {r}: no center can commit: {dict(decision.excluded)}")
        # the budget counts what was reduced (known now: the contributions are in)
        self._observe(r, stats, list(decision.participants))
        reduced = self._reduce(r, decision, reports)
        reduced_s = time.perf_counter() - self.t0
        self._apply(r, decision, live, reduced, evaluate, last)
        return _Committed(r, decision, reports, reduced, stats, slot["t0"], reduced_s)

    def _finalize(self, c: _Committed) -> RoundRecord:
        """Wait until the workers applied round ``c.round``, record it, bring late centers back."""
        rec = self._record(c.round, c.decision, c.reports, c.reduced, c.stats, c.t0, c.reduced_s)
        applied = [n for n in rec.participants if self.centers[n].state == "live"]
        self._catch_up(c.round, applied[0] if applied else None)
        return rec

    def run_round(self, r: int, evaluate: bool) -> RoundRecord | None:
        """One round without overlap: work, send, complete; ``None`` when the sample budget
        leaves no round ``r``."""
        if self.planner is None:
            self._start_planner()
        if not self._queue(r):
            return None
        self._send(r)
        # the budget's last round is always evaluated
        return self._complete(r, evaluate or self.planner.finished)

    def _reduce(self, r: int, decision: RoundDecision, reports) -> dict:
        """Every participant reduces; returns their reports (a failure as ``None``)."""
        parts = list(decision.participants)
        samples = {c: reports[c].samples for c in parts}
        timeout = self.cfg.wan.round_timeout_s
        deadline = time.time() + timeout
        refs = {c: self.centers[c].gateway.reduce.remote(r, parts, samples, deadline) for c in parts}
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout + _GRACE_S)
        out = {}
        for c, ref in refs.items():
            try:
                out[c] = ray.get(ref, timeout=0)
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                self._event(f"round {r}: {c} failed to reduce: {type(err).__name__}")
                out[c] = None
        return out

    def _apply(self, r: int, decision: RoundDecision, live, reduced: dict, evaluate: bool, last: bool = False) -> None:
        parts = list(decision.participants)
        every = self.cfg.train.verify_every_rounds
        # always verify at an evaluation, so the reported figures come from agreeing centers
        verify = evaluate or (every > 0 and (r + 1) % every == 0)
        failed = {c: (rep.error if rep else "no answer") for c, rep in reduced.items() if rep is None or not rep.ok}
        if failed:
            self._event(f"round {r}: abandoned, every participant rolls back: {failed}")
        self._applied = {}
        for c in live:
            if c.name in parts:
                if reduced[c.name] is None:
                    c.state, c.pending, c.missed_round = "late", c.gateway.stats.remote(), r
                    continue
                result = c.gateway.abort.remote(r) if failed else c.gateway.finish.remote(r)
                if self._on_arrival:
                    # each worker mixes it in mid-slot, on its actor's arrival thread, or when
                    # the next slot ends (the last round: when its own slot ends)
                    settle = r if last else r + 1
                    self._applied[c.name] = [w.deliver.remote(r, result, verify, settle) for w in c.workers]
                    c.delivered_round = r
                else:
                    self._applied[c.name] = [w.apply.remote(result, verify) for w in c.workers]
            elif c.state != "dead":
                # Its work for this round may still be running: queue the skip behind it,
                # then watch the gateway and resync the center once it is idle again.
                c.gateway.skip.remote(r)
                c.state = "late"
                c.pending = c.gateway.stats.remote()
                c.missed_round = r
        first = next(iter(self._applied), None)
        self._eval_center = first if evaluate else None
        self._eval_ref = self._evaluate(self.centers[first], r) if evaluate and first else None
        self.abandoned = bool(failed)

    def _applied_digests(self, r: int) -> dict[str, list[tuple[str, str]]]:
        """Each center's digests of round ``r``'s result, once applied. A center that does
        not apply it within the round timeout (under overlap the result queues behind the
        next round's work) or fails is left out from here on, like a late center."""
        deadline = time.time() + self.cfg.wan.round_timeout_s + _GRACE_S
        digests = {}
        for name, refs in self._applied.items():
            try:
                digests[name] = ray.get(refs, timeout=max(0.0, deadline - time.time()))
            except (GetTimeoutError, RayActorError, RayTaskError) as err:
                c = self.centers[name]
                c.state, c.pending, c.missed_round = "late", c.gateway.stats.remote(), r
                self._event(f"round {r}: {name} did not apply the result in time ({type(err).__name__}): left out")
        return digests

    def _record(self, r, decision, reports, reduced, stats, t_round, reduced_s=None) -> RoundRecord:
        digests = self._applied_digests(r)
        # every center whose payload was reduced took part, even one that then applied the
        # result too late (it is left out from the next round on)
        parts = [c for c in decision.participants if c in self._applied]
        agreed = {g for ds in digests.values() for g, _ in ds if g}
        if len(agreed) > 1:
            self.params_agree = False
            self._event(f"round {r}: parameters differ across centers: {digests}")
        for name, ds in digests.items():
            if len({mine for _, mine in ds if mine}) > 1:
                self.params_agree = False
                self._event(f"round {r}: the workers of {name} hold different parameters: {[m for _, m in ds]}")
        per_center, round_links = {}, {}
        for name, rep in reports.items():
            red = reduced.get(name)
            sent_by_peer = red.bytes_sent if red is not None else {p: s.bytes_sent for p, s in rep.sent.items()}
            sent = 0
            for peer, nbytes in sent_by_peer.items():
                key = "<->".join(sorted((name, peer)))
                self.link_bytes[key] = self.link_bytes.get(key, 0) + nbytes
                round_links[key] = round_links.get(key, 0) + nbytes
                sent += nbytes
            tot = self.totals[name]
            tot.wan_bytes_sent += sent
            self.wan_bytes += sent
            if name not in parts:
                continue
            st = ray.get(stats[name])
            tot.samples += st.samples
            tot.steps += st.steps
            tot.compute_s += st.compute_s
            tot.wait_s += rep.encode_s + rep.wait_s + (red.seconds if red is not None else 0.0)
            per_center[name] = {
                "steps": tot.steps, "samples": tot.samples, "loss": st.loss, "wan_bytes_sent": tot.wan_bytes_sent,
            }
        t_eval = time.perf_counter()
        eval_loss = None
        if self._eval_ref is not None and self._eval_center in digests:
            try:
                eval_loss = ray.get(self._eval_ref, timeout=self.cfg.wan.round_timeout_s + _GRACE_S)
            except (GetTimeoutError, RayActorError, RayTaskError) as err:
                self._event(f"round {r}: evaluation on {self._eval_center} failed: {type(err).__name__}")
        eval_s = time.perf_counter() - t_eval
        rec = RoundRecord(
            round=r,
            time_s=time.perf_counter() - self.t0,
            round_s=time.perf_counter() - t_round,
            participants=parts,
            excluded=dict(decision.excluded),
            eval_loss=eval_loss,
            wan_bytes=self.wan_bytes,
            link_bytes=round_links,
            centers=per_center,
            abandoned=self.abandoned,
            fragment=next((rep.fragment for rep in reduced.values() if rep is not None), 0),
            eval_s=eval_s,
            reduced_s=reduced_s,
        )
        self.history.append(rec)
        self.on_round(rec)
        return rec

    # ------------------------------------------------------------------ checkpoints
    def restore(self, manifest: Manifest) -> int:
        """Continue the accounting of a checkpointed job; returns the first round to run."""
        self.totals = manifest.restore_totals()
        self.history = manifest.restore_history()
        self.link_bytes = dict(manifest.link_bytes)
        self.wan_bytes = manifest.wan_bytes
        self.events = list(manifest.events)
        self.t0 = time.perf_counter() - manifest.elapsed_s
        self.initial_eval_loss = manifest.initial_eval_loss
        return manifest.round + 1

    def checkpoint(self, r: int, numel: int) -> None:
        """Every center saves its state for round ``r``; sealed only if all of them did."""
        cfg = self.cfg
        root = cfg.checkpoint_dir
        if any(c.state != "live" for c in self.centers.values()):
            self._event(f"round {r}: checkpoint skipped: not every center is live")
            return
        stage = ckpt.staging_dir(root, r)
        refs = []
        for c in self.centers.values():
            refs.append(c.gateway.save.remote(str(ckpt.gateway_path(stage, c.name))))
            refs += [w.save.remote(str(ckpt.worker_path(stage, c.name, i))) for i, w in enumerate(c.workers)]
        ray.get(refs, timeout=cfg.wan.round_timeout_s * 4)
        first = next(iter(self.centers.values()))
        manifest = ckpt.Manifest(
            job=cfg.job.name,
            round=r,
            strategy=cfg.strategy.kind,
            centers={c.name: len(c.workers) for c in self.centers.values()},
            numel=numel,
            params_digest=ray.get(first.leader.shared_digest.remote()),
            initial_eval_loss=self.initial_eval_loss,
            totals={k: dataclasses.asdict(v) for k, v in self.totals.items()},
            link_bytes=dict(self.link_bytes),
            wan_bytes=self.wan_bytes,
            elapsed_s=time.perf_counter() - self.t0,
            history=[dataclasses.asdict(h) for h in self.history],
            events=list(self.events),
        )
        path = ckpt.seal(root, manifest, cfg.checkpoint.keep)
        log.info("round %d: checkpoint sealed at %s", r, path)

    def run(self, rounds: int, eval_every: int, start: int = 0, numel: int = 0) -> None:
        """Run rounds ``start..rounds-1``, or fewer when ``train.samples`` is spent first.
        With ``overlap`` (streaming), round ``r``'s exchange runs while the workers compute
        round ``r + 1``, and its result is applied one round late."""
        every = self.cfg.checkpoint.every_rounds
        self._start_planner()
        if getattr(self.cfg.strategy, "overlap", 0):
            # A checkpoint needs a moment with no round in flight: the pipeline runs in
            # segments that end at the checkpoint rounds, each drained (its last exchange is
            # not overlapped, and its result is applied before anything else is queued).
            seg = start
            while seg < rounds:
                # a dead center never comes back, and a checkpoint needs every center: then
                # the pipeline need not drain any more
                gone = any(c.state == "dead" for c in self.centers.values())
                end = min(rounds, (seg // every + 1) * every) if every and not gone else rounds
                self._run_overlapped(end, eval_every, seg, final=end == rounds)
                if end == rounds or self.planner.finished or not self.history or self.history[-1].round != end - 1:
                    break
                self.checkpoint(end - 1, numel)
                seg = end
        else:
            for r in range(start, rounds):
                if self.run_round(r, (r + 1) % eval_every == 0 or r == rounds - 1) is None:
                    break
                if every and (r + 1) % every == 0 and r != rounds - 1 and not self.planner.finished:
                    self.checkpoint(r, numel)
        self._evaluate_last()

    def _run_overlapped(self, rounds: int, eval_every: int, start: int, final: bool = True) -> None:
        """Each worker's actor queue reads ``work(r+1), apply(r), work(r+2), ...``, the
        leader's work also returning its contribution: round ``r``'s exchange runs during
        ``work(r+1)`` and its result is applied one round late. With several fragments the
        contribution of ``r+1`` (another fragment) does not depend on ``apply(r)``; with one
        fragment it does, and the leader's queue reads ``work(r+1), apply(r),
        contribution(r+1), work(r+2)``. Everything a worker runs next is queued before the
        coordinator waits on anything that worker still has to do, so a worker never idles
        on the coordinator's own bookkeeping (the agreement digests, the evaluation).

        A round's deadline (``wan.round_timeout_s``) starts when its contribution is queued,
        while the worker still computes the slot before it: it bounds the rest of that
        slot's compute as well as the exchange, as it does without overlap.

        Runs rounds ``start..rounds-1`` and drains: nothing is queued after the last. Unless
        ``final`` (a checkpoint follows, and the job goes on), that last round is evaluated
        only on the usual schedule."""
        if start >= rounds or not self._queue(start):
            return
        self._send(start)
        queued = start + 1 < rounds and self._queue(start + 1)
        r = start
        while True:
            # nothing queued after r: r is the job's last round, and is evaluated (unless a
            # checkpoint only drains the pipeline here and the job goes on)
            ends_job = not queued and (final or r + 1 < rounds or self.planner.finished)
            committed = self._commit(r, (r + 1) % eval_every == 0 or ends_job, last=not queued)
            after = False
            if queued:
                self._send(r + 1)
                after = r + 2 < rounds and self._queue(r + 2)
            self._finalize(committed)
            if not queued:
                return
            r, queued = r + 1, after

    def _evaluate(self, c: CenterHandle, r: int | None = None):
        """Ref of the held-out loss of ``c``'s state after the round ``r`` just queued. With
        an evaluator (models without buffers only), diloco and streaming read the global
        parameters from the gateway, bit for bit what every worker evaluates, so no worker
        is interrupted at all. On the leader under ``apply_on_arrival`` the evaluation
        waits until round ``r``'s result, delivered on another thread, is applied."""
        if self.evaluator is None:
            return c.leader.evaluate.remote(r if self._on_arrival else None)
        if self.cfg.strategy.kind == "sync":
            return self.evaluator.evaluate.remote(c.leader.eval_state.remote())
        return self.evaluator.evaluate.remote(c.gateway.global_params.remote())

    def _evaluate_last(self) -> None:
        """Evaluate the final state when the last round ran was not evaluated (without
        overlap, the sample budget ran out between evaluations); the last record gets the
        loss in place, after ``on_round`` saw it without."""
        last = self.history[-1] if self.history else None
        live = [c for c in self.centers.values() if c.state == "live"]
        if last is None or last.eval_loss is not None or not live:
            return
        try:
            last.eval_loss = ray.get(self._evaluate(live[0]), timeout=self.cfg.wan.round_timeout_s)
        except (GetTimeoutError, RayActorError, RayTaskError) as err:
            self._event(f"final evaluation on {live[0].name} failed: {type(err).__name__}")
