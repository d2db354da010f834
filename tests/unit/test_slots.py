"""The round planner: counted, time-boxed, and stopped by a sample budget."""

import pytest

from suanwang.runtime.slots import CAP_FACTOR, WAIT, SlotPlan, SlotPlanner

COUNTED = {"shenzhen": 6, "wuhan": 9}
PER_STEP = {"shenzhen": 64, "wuhan": 32}  # 2 workers and 1 worker of batch 32
NAMES = ["shenzhen", "wuhan"]
ROUND = 6 * 64 + 9 * 32  # samples of one counted round: 672


def test_counted_rounds_run_each_centers_own_steps_without_a_deadline():
    p = SlotPlanner(COUNTED, PER_STEP)
    for r in range(50):
        assert p.plan(r, NAMES) == {"shenzhen": SlotPlan(6), "wuhan": SlotPlan(9)}
        p.observe(r, ROUND)
    assert p.spent == 50 * ROUND


def test_time_boxed_deadlines_are_absolute_and_caps_bound_a_slot():
    p = SlotPlanner(COUNTED, PER_STEP, slot_s=0.25, origin=1000.0)
    first = p.plan(7, NAMES)  # a resumed job: slots count from the first planned round
    second = p.plan(8, NAMES)
    assert first["shenzhen"] == SlotPlan(6 * CAP_FACTOR, 1000.25)
    assert first["wuhan"] == SlotPlan(9 * CAP_FACTOR, 1000.25)
    # late or not, slot 2 ends at origin + 2 slots: a center cannot drift behind
    assert second["wuhan"].until == pytest.approx(1000.5)


def test_budget_fills_exactly_with_a_last_round_of_counted_shares():
    budget = 10 * ROUND + 200
    p = SlotPlanner(COUNTED, PER_STEP, budget=budget)
    r, taken = 0, 0
    while True:
        plan = p.plan(r, NAMES)
        assert plan is not WAIT  # one round at a time: never anything in flight
        if plan is None:
            break
        got = sum(sp.steps * PER_STEP[n] for n, sp in plan.items())
        p.observe(r, got)
        taken += got
        r += 1
    assert budget - min(PER_STEP.values()) < taken <= budget
    assert r == 11
    assert p.finished


def test_budget_waits_for_rounds_in_flight_before_the_last_round():
    p = SlotPlanner(COUNTED, PER_STEP, slot_s=0.2, budget=4 * ROUND)
    most = CAP_FACTOR * ROUND  # what a time-boxed round may take at most
    assert p.plan(0, NAMES) not in (WAIT, None)  # 4 rounds left, reserves `most`
    assert p.plan(1, NAMES) not in (WAIT, None)  # 2 left, reserves `most`
    assert p.plan(2, NAMES) is WAIT  # nothing left unless the rounds in flight took less
    assert p.inflight() == [0, 1]
    p.observe(0, ROUND)  # slot 0 took its counted steps, not the most
    assert p.plan(2, NAMES) is WAIT  # 4 - 1 - 2 = 1 round left < most
    p.observe(1, ROUND + 64)
    plan = p.plan(2, NAMES)  # nothing in flight: the exact last round, no deadline
    assert all(sp.until is None for sp in plan.values())
    got = sum(sp.steps * PER_STEP[n] for n, sp in plan.items())
    left = 2 * ROUND - 64
    assert left - min(PER_STEP.values()) < got <= left < most
    assert p.plan(3, NAMES) is None


def test_last_round_gives_every_center_a_step_or_none_at_all():
    p = SlotPlanner(COUNTED, PER_STEP, budget=90)  # one step each is 96 samples
    assert p.plan(0, NAMES) is None
    p = SlotPlanner(COUNTED, PER_STEP, budget=100)
    assert p.plan(0, NAMES) == {"shenzhen": SlotPlan(1), "wuhan": SlotPlan(1)}


def test_a_center_left_out_is_not_planned_and_the_last_round_goes_to_those_planned():
    p = SlotPlanner(COUNTED, PER_STEP, budget=10_000)
    assert p.plan(0, ["wuhan"]) == {"wuhan": SlotPlan(9)}
    p.observe(0, 9 * 32)
    p = SlotPlanner(COUNTED, PER_STEP, budget=200)  # under wuhan's 288 of a counted round
    assert p.plan(0, ["wuhan"]) == {"wuhan": SlotPlan(6)}  # 192 of the 200


def test_time_boxed_grid_moves_on_after_the_job_stood_still():
    p = SlotPlanner(COUNTED, PER_STEP, slot_s=0.25, origin=1000.0)
    assert p.plan(0, NAMES, now=1000.0)["wuhan"].until == pytest.approx(1000.25)
    assert p.plan(1, NAMES, now=1000.3)["wuhan"].until == pytest.approx(1000.5)  # on the grid
    # a 5 s stall: round 2's deadline (1000.75) passed before it was planned
    assert p.plan(2, NAMES, now=1005.0)["wuhan"].until == pytest.approx(1005.25)
    assert p.plan(3, NAMES, now=1005.1)["wuhan"].until == pytest.approx(1005.5)  # the new grid


def test_the_last_round_keeps_every_center_under_its_cap():
    # b's steps are 8x a's samples: after one more step of a, b no longer fits, and
    # without its cap a would take the rest of the budget alone
    p = SlotPlanner({"a": 1, "b": 1}, {"a": 32, "b": 256}, slot_s=1.0, budget=575)
    plan = p.plan(0, ["a", "b"])  # 575 < most (2 * 288): the exact last round at once
    assert plan == {"a": SlotPlan(2), "b": SlotPlan(1)}
