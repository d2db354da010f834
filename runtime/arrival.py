"""Round results applied as they arrive (``strategy.apply_on_arrival``, streaming).

Under overlap a round's result reaches the workers while they compute the next slot. By
default it waits in the actor's queue until that slot ends; here it is mixed in at the next
inner-step boundary instead, a slot fresher. The result comes in on a second actor thread
(:class:`Arrivals` is the hand-over between it and the training thread):

* while it trains, the training thread applies it between two steps. Every worker of a
  center must apply it after the same step, or the replicas would drift apart: each step's
  intra-center all-reduce carries a "result in hand" flag, and the result is applied after
  the first step whose flags add up to the center's size (a 1-worker center: the next step);
* otherwise it is applied only once this worker has finished slot ``settle_after`` (the
  slot after the round's own; the round's own for the last round): when that slot ends, or
  at once if the worker is already past it and idle. Slot ends are the same step on every
  worker of a center (the stop flag rides in the same all-reduce), so a worker that lags
  its peers, or gets the result before they do, still applies it where they do;
* a slot's work first applies the results the coordinator names (the round before last,
  as without this option), waiting for them if they are late, so a fragment's next
  pseudo-gradient always starts from its newest global value.

At most one result is in hand at a time: the next one is not sent before the one before
it is applied.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

Apply = Callable[[Any, bool], Any]  # (result, verify) -> what deliver returns


class Arrivals:
    """The hand-over of results between the arrival thread and the training thread.

    Args:
        where: names the worker in errors.
        timeout_s: how long a result may wait to be applied, or a slot for its result.
    """

    def __init__(self, where: str, timeout_s: float):
        self.where = where
        self.timeout_s = timeout_s
        self.applied_round = -1
        # also held by the worker around whatever else reads or writes its parameters, so
        # that a result applied by the arrival thread never lands in the middle of it
        self.guard = self._cond = threading.Condition()  # re-entrant
        self._pending: tuple[int, Any, bool, int] | None = None  # round, result, verify, settle_after
        self._training = False
        self.slot_done = -1  # the last slot whose local work ended
        self._digests: dict[int, Any] = {}  # what apply returned (or raised), per round

    # ------------------------------------------------------------ the arrival thread
    def deliver(self, round: int, result: Any, verify: bool, apply: Apply, settle_after: int | None = None) -> Any:
        """Hand over round ``round``'s result; returns what ``apply`` returned, once applied.
        Outside a step every worker of the center agreed on, it is applied only once this
        worker has finished slot ``settle_after`` (default ``round + 1``).

        Raises:
            RuntimeError: a result out of order, or one still in hand.
            TimeoutError: not applied within ``timeout_s``.
        """
        with self._cond:
            if self._pending is not None:
                raise RuntimeError(
                    f"{self.where}: round {round}'s result arrived while round {self._pending[0]}'s "
                    "is still waiting to be applied"
                )
            if round <= self.applied_round:
                raise RuntimeError(f"{self.where}: round {round}'s result arrived after round {self.applied_round}'s")
            self._pending = (round, result, verify, round + 1 if settle_after is None else settle_after)
            self._cond.notify_all()
            if not self._training and self.slot_done >= self._pending[3]:
                self._apply(apply)
            self._wait(lambda: round in self._digests, f"round {round}'s result was not applied")
            out = self._digests.pop(round)
        if isinstance(out, Exception):
            raise out
        return out

    # ------------------------------------------------------------ the training thread
    def in_hand(self) -> bool:
        """Whether a result waits to be applied (this step's flag in the all-reduce)."""
        return self._pending is not None

    def apply_now(self, apply: Apply) -> None:
        """Apply the result in hand (every worker of the center agreed on this step)."""
        with self._cond:
            if self._pending is None:
                raise RuntimeError(f"{self.where}: told to apply a result, and none is in hand")
            self._apply(apply)

    def wait_applied(self, round: int) -> None:
        """Block until round ``round``'s result is applied (by the arrival thread, or when
        a slot ends): an evaluation of the global state after ``round`` waits here."""
        with self._cond:
            self._wait(lambda: self.applied_round >= round, f"round {round}'s result was not applied")

    @contextlib.contextmanager
    def training(self, slot: int, wait_applied: int | None, apply: Apply) -> Iterator[None]:
        """Around slot ``slot``'s inner steps: first apply every result through round
        ``wait_applied`` (waiting for it), then train; at the end, the result in hand is
        applied if this slot was the one it waited for.

        Raises:
            TimeoutError: the awaited result did not come within ``timeout_s``.
        """
        with self._cond:
            if wait_applied is not None:
                def done() -> bool:
                    if self._pending is not None and self._pending[0] <= wait_applied:
                        self._apply(apply)
                    return self.applied_round >= wait_applied

                self._wait(done, f"round {wait_applied}'s result, needed before this slot, did not arrive")
            self._training = True
        try:
            yield
        finally:
            with self._cond:
                self._training = False
                self.slot_done = max(self.slot_done, slot)
                if self._pending is not None and self.slot_done >= self._pending[3]:
                    self._apply(apply)

    # ------------------------------------------------------------ under the lock
    def _apply(self, apply: Apply) -> None:
        """Apply the result in hand. A failure is the arrival thread's to report (the
        coordinator then leaves the center out); the training thread goes on."""
        round, result, verify, _ = self._pending
        self._pending = None
        try:
            self._digests[round] = apply(result, verify)
        except Exception as err:  # noqa: BLE001 - re-raised by deliver
            self._digests[round] = err
        self.applied_round = round
        self._cond.notify_all()

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.where}: {what} within {self.timeout_s:g} s")
            self._cond.wait(left)
