"""Round policy: who commits, and why the others are left out."""

from suanwang.runtime.policy import decide_round


def test_everyone_holds_everything():
    held = {c: ["a", "b", "c"] for c in "abc"}
    d = decide_round(0, ["a", "b", "c"], held, {})
    assert d.participants == ("a", "b", "c") and not d.excluded


def test_late_center_is_left_out_with_reason():
    held = {"a": ["a", "b"], "b": ["a", "b"]}
    d = decide_round(3, ["a", "b", "c"], held, {"c": "no report within the round deadline (5 s)"})
    assert d.participants == ("a", "b")
    assert "deadline" in d.excluded["c"]


def test_center_with_broken_network_is_dropped_not_the_majority():
    held = {"a": ["a"], "b": ["a", "b", "c"], "c": ["a", "b", "c"]}
    d = decide_round(0, ["a", "b", "c"], held, {})
    assert d.participants == ("b", "c")
    assert "did not arrive" in d.excluded["a"]


def test_nobody_reports():
    d = decide_round(0, ["a", "b"], {}, {})
    assert not d.proceed and set(d.excluded) == {"a", "b"}
