"""The hand-over of round results between a worker's arrival thread and its training
thread (``strategy.apply_on_arrival``), with real threads and no Ray."""

from __future__ import annotations

import threading
import time

import pytest

from suanwang.runtime.arrival import Arrivals


class Recorder:
    """An ``apply`` that records what it applied, in order, and from which thread."""

    def __init__(self):
        self.applied: list[tuple[object, str]] = []

    def __call__(self, result, verify: bool) -> str:
        if result == "bad":
            raise ValueError("a result that does not fit")
        self.applied.append((result, threading.current_thread().name))
        return f"digest-{result}" if verify else ""


def _deliver_in_thread(box: Arrivals, rec: Recorder, round: int, result) -> dict:
    out: dict = {}

    def run():
        try:
            out["digest"] = box.deliver(round, result, True, rec)
        except Exception as err:  # noqa: BLE001 - inspected by the test
            out["error"] = err

    t = threading.Thread(target=run, name="arrival")
    t.start()
    out["thread"] = t
    return out


def _wait_until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def _slot(box: Arrivals, rec: Recorder, slot: int, wait_applied=None) -> None:
    with box.training(slot, wait_applied, rec):
        pass


def test_an_idle_worker_that_finished_the_next_slot_applies_at_once():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    _slot(box, rec, 0)
    _slot(box, rec, 1)
    assert box.deliver(0, "r0", True, rec) == "digest-r0"  # waits for slot 1: over
    assert rec.applied == [("r0", threading.current_thread().name)] and box.applied_round == 0
    assert not box.in_hand()


def test_an_idle_worker_keeps_it_until_the_next_slot_ends():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    _slot(box, rec, 0)
    out = _deliver_in_thread(box, rec, 0, "r0")  # round 0 applies once slot 1 is over
    _wait_until(box.in_hand)
    time.sleep(0.05)
    assert rec.applied == []
    _slot(box, rec, 1)
    out["thread"].join(5)
    assert out["digest"] == "digest-r0" and [r for r, _ in rec.applied] == ["r0"]


def test_a_worker_that_lags_its_peers_applies_where_they_do():
    """The result of round 0 reaches a worker still finishing slot 0 (its peers, and the
    leader's contribution, are done): it must not be applied at slot 0's end, where the
    peers cannot apply it, but at slot 1's end or an agreed step of slot 1."""
    box, rec = Arrivals("a rank 1", 5.0), Recorder()
    with box.training(0, None, rec):
        out = _deliver_in_thread(box, rec, 0, "r0")
        _wait_until(box.in_hand)
    assert rec.applied == [] and box.in_hand()
    with box.training(1, None, rec):
        assert box.in_hand()  # its flag goes into slot 1's all-reduces
    out["thread"].join(5)
    assert out["digest"] == "digest-r0" and [r for r, _ in rec.applied] == ["r0"]


def test_while_training_the_training_thread_applies_it_between_steps():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    with box.training(1, None, rec):
        out = _deliver_in_thread(box, rec, 0, "r0")
        _wait_until(box.in_hand)
        assert rec.applied == [] and "digest" not in out  # held until a step boundary
        box.apply_now(rec)  # the step at which every worker of the center has it
        out["thread"].join(5)
        assert out["digest"] == "digest-r0"
        assert rec.applied == [("r0", threading.current_thread().name)]
    assert rec.applied == [("r0", threading.current_thread().name)]  # not applied twice


def test_the_last_round_settles_when_its_own_slot_ends():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    _slot(box, rec, 4)
    assert box.deliver(4, "r4", True, rec, settle_after=4) == "digest-r4"


def test_a_slot_first_waits_for_the_result_it_needs():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    _slot(box, rec, 0)
    _slot(box, rec, 1)
    box.deliver(0, "r0", True, rec)
    entered = threading.Event()

    def slot():
        with box.training(3, 1, rec):  # round 1's result must be in before slot 3 trains
            entered.set()

    t = threading.Thread(target=slot, name="training")
    t.start()
    time.sleep(0.1)
    assert not entered.is_set()
    out = _deliver_in_thread(box, rec, 1, "r1")
    t.join(5)
    out["thread"].join(5)
    assert entered.is_set() and out["digest"] == "digest-r1"
    assert [r for r, _ in rec.applied] == ["r0", "r1"] and box.applied_round == 1


def test_an_evaluation_waits_for_its_rounds_result():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    _slot(box, rec, 0)
    done = threading.Event()
    t = threading.Thread(target=lambda: (box.wait_applied(0), done.set()))
    t.start()
    out = _deliver_in_thread(box, rec, 0, "r0")
    time.sleep(0.1)
    assert not done.is_set()  # in hand, not applied: slot 1 has not ended
    _slot(box, rec, 1)
    t.join(5)
    out["thread"].join(5)
    assert done.is_set() and box.applied_round == 0


def test_a_result_that_never_comes_fails_the_slot_by_name():
    box, rec = Arrivals("xian rank 1", 0.2), Recorder()
    with pytest.raises(TimeoutError, match=r"xian rank 1: round 3's result, needed before this slot, did not arrive within 0.2 s"):
        with box.training(5, 3, rec):
            pass


def test_results_out_of_order_or_piling_up_are_refused():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    _slot(box, rec, 5)
    box.deliver(4, "r4", True, rec)
    with pytest.raises(RuntimeError, match="round 3's result arrived after round 4's"):
        box.deliver(3, "r3", True, rec)
    with box.training(6, None, rec):
        out = _deliver_in_thread(box, rec, 5, "r5")
        _wait_until(box.in_hand)
        with pytest.raises(RuntimeError, match="round 6's result arrived while round 5's is still waiting"):
            box.deliver(6, "r6", True, rec)
    out["thread"].join(5)
    assert [r for r, _ in rec.applied] == ["r4", "r5"]


def test_a_result_that_fails_to_apply_is_reported_by_its_delivery_and_training_goes_on():
    box, rec = Arrivals("a rank 0", 5.0), Recorder()
    with box.training(1, None, rec):
        out = _deliver_in_thread(box, rec, 0, "bad")
        _wait_until(box.in_hand)
        box.apply_now(rec)  # no exception in the training thread
    out["thread"].join(5)
    assert isinstance(out["error"], ValueError) and box.applied_round == 0
    with pytest.raises(RuntimeError, match="told to apply a result, and none is in hand"):
        box.apply_now(rec)
