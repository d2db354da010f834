"""The end-to-end benchmark's bookkeeping: equal samples across strategies, time to target."""

from __future__ import annotations

from suanwang.benchmarks import e2e


def test_equal_sample_steps_matches_ddp_samples_when_centers_run_unequal_steps():
    spec = e2e.STRATEGIES["streaming"]
    steps = e2e.equal_sample_steps(spec, 300)
    cfg = e2e._config(spec, steps, 1)
    per_round = sum(e2e.BATCH * w * cfg.center_inner_steps(n) for n, w in e2e.CENTERS)
    ddp_samples = e2e.BATCH * sum(w for _, w in e2e.CENTERS) * 300
    assert abs(cfg.rounds * per_round - ddp_samples) <= per_round / 2
    # the 1-worker centers really do run more steps per round than the 2-worker one
    assert cfg.center_inner_steps("wuhan") > cfg.center_inner_steps("shenzhen")
    # with equal inner steps everywhere the answer is DDP's own step count
    assert e2e.equal_sample_steps(e2e.STRATEGIES["diloco"], 300) == 300


def test_time_boxed_streaming_stops_on_ddps_sample_count():
    spec = e2e.run_spec("streaming_unshaped", 300)
    cfg = e2e._config(spec, e2e.equal_sample_steps(spec, 300), 1)
    assert cfg.strategy.slot_s and cfg.train.samples == e2e.BATCH * 4 * 300
    assert cfg.train.eval_on == "evaluator"  # no leader pauses training to evaluate
    assert "samples" not in e2e.run_spec("diloco", 300)  # counted rounds add up already


def test_to_target_is_the_first_crossing():
    hist = [
        {"train_s": 0.0, "eval_loss": 4.0, "wan_bytes": 0},
        {"train_s": 1.0, "eval_loss": 2.0, "wan_bytes": 10},
        {"train_s": 2.0, "eval_loss": 1.5, "wan_bytes": 20},
        {"train_s": 3.0, "eval_loss": 1.7, "wan_bytes": 30},
        {"train_s": 4.0, "eval_loss": 1.4, "wan_bytes": 40},
    ]
    assert e2e.to_target(hist, 1.6) == (2.0, 20)
    assert e2e.to_target(hist, 1.0) == (None, None)
