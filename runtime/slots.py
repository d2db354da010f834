"""How many inner steps each center runs in a round, and when the job has taken its samples.

Three ways a round (a slot under streaming) is bounded:

* **counted** (the default): every center runs its ``inner_steps`` (its own, or the
  strategy's); the job has ``train.steps / inner_steps`` rounds. Bit-reproducible.
* **time-boxed** (``strategy.slot_s``, streaming): slot ``k`` of the run ends at the wall
  clock ``t0 + (k + 1) * slot_s``, and each center runs inner steps until then (at least
  one, at most :data:`CAP_FACTOR` times its counted steps). A center that is faster, or has
  a faster moment, takes more steps instead of waiting for the slowest; the reduction
  weights every center by the samples it took. Deadlines are absolute, so a center that
  starts a slot late (it waited on the WAN) gets a shorter slot instead of drifting; that
  needs the centers' clocks to agree to well under a slot (NTP does).
* **a sample budget** (``train.samples``): rounds go on until the centers have taken that
  many samples in all. When the next round might overshoot, the planner waits for the
  rounds in flight to report what they took, then plans one last round of exact step
  counts (no deadline) that fills the budget to within one step per center and stops.

The planner is pure bookkeeping: the coordinator asks it for each round's limits and tells
it what the rounds took.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

__all__ = ["CAP_FACTOR", "SlotPlan", "SlotPlanner", "WAIT"]

# a time-boxed slot runs at most this many times a center's counted steps (bounds the
# samples a round in flight can take, which the budget needs)
CAP_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """One center's limits for one round: at most ``steps`` inner steps, and (time-boxed)
    no new step once the wall clock (``time.time()``) is within half a step of ``until``."""

    steps: int
    until: float | None = None


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


# plan() result: the budget cannot be planned further until the rounds in flight report
WAIT = _Wait()


class SlotPlanner:
    """Plans each round's :class:`SlotPlan` per center.

    Args:
        counted: each center's counted inner steps per round.
        per_step: samples a center takes per inner step (batch size times its workers).
        slot_s: time-boxed slots of this many seconds (``None``: counted).
        budget: stop after this many samples in all (``None``: the caller's round count).
        origin: ``time.time()`` at which the first planned slot starts (time-boxed).
        spent: samples already taken (a resumed job).
    """

    def __init__(
        self,
        counted: Mapping[str, int],
        per_step: Mapping[str, int],
        slot_s: float | None = None,
        budget: int | None = None,
        origin: float = 0.0,
        spent: int = 0,
    ):
        if set(counted) != set(per_step):
            raise ValueError(f"counted steps for {sorted(counted)} but samples per step for {sorted(per_step)}")
        for name, k in counted.items():
            if k < 1 or per_step[name] < 1:
                raise ValueError(f"{name}: {k} steps of {per_step[name]} samples: both must be at least 1")
        self.counted = dict(counted)
        self.per_step = dict(per_step)
        self.slot_s = slot_s
        self.budget = budget
        self.origin = origin
        self.spent = spent
        self._first: int | None = None
        self._inflight: dict[int, int] = {}  # round -> the most samples it can take
        self.finished = False

    def _cap(self, name: str) -> int:
        return self.counted[name] * (CAP_FACTOR if self.slot_s else 1)

    def _most(self, names) -> int:
        return sum(self._cap(n) * self.per_step[n] for n in names)

    def plan(self, r: int, names: list[str], now: float | None = None) -> dict[str, SlotPlan] | _Wait | None:
        """Limits for round ``r`` of the centers ``names``; :data:`WAIT` when the rounds in
        flight must report first (:meth:`observe`); ``None``: the budget is spent.

        ``now`` (``time.time()`` when planning, time-boxed): a deadline already past when
        its round is planned means the job stood still (a resync, a long evaluation); the
        grid then moves on so that this round gets a whole slot, instead of every later
        round getting a single step while the lag lasts."""
        if self.finished or not names:
            return None
        if self._first is None:
            self._first = r
        if self.budget is not None:
            headroom = self.budget - self.spent - sum(self._inflight.values())
            if headroom < self._most(names):
                if self._inflight:
                    return WAIT
                return self._last(r, names, headroom)
        until = None
        if self.slot_s is not None:
            until = self.origin + (r - self._first + 1) * self.slot_s
            if now is not None and until < now:
                self.origin += now + self.slot_s - until
                until = now + self.slot_s
        self._inflight[r] = self._most(names)
        return {n: SlotPlan(self._cap(n), until) for n in names}

    def _last(self, r: int, names: list[str], left: int) -> dict[str, SlotPlan] | None:
        """Exact step counts that fill ``left`` samples (less than one round's most), at
        least one step per center, none past its cap, otherwise shared as the counted
        steps are; ``None`` when one step each does not fit."""
        self.finished = True
        if left < sum(self.per_step[n] for n in names):
            return None
        weight = {n: self.counted[n] * self.per_step[n] for n in names}
        steps = dict.fromkeys(names, 1)
        used = sum(self.per_step[n] for n in names)
        # one step at a time to the center furthest below its share, while a step fits
        while True:
            fits = [n for n in names if used + self.per_step[n] <= left and steps[n] < self._cap(n)]
            if not fits:
                break
            n = min(fits, key=lambda n: (steps[n] * self.per_step[n] / weight[n], names.index(n)))
            steps[n] += 1
            used += self.per_step[n]
        self._inflight[r] = used
        return {n: SlotPlan(k) for n, k in steps.items()}

    def observe(self, r: int, samples: int) -> None:
        """Round ``r`` took ``samples`` in all (its most is no longer reserved)."""
        if self._inflight.pop(r, None) is not None:
            self.spent += samples

    def inflight(self) -> list[int]:
        return sorted(self._inflight)
