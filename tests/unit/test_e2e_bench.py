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


def _run(losses, samples_per_eval, bytes_per_eval=0, final=None):
    hist = [{"train_s": float(i), "samples": i * samples_per_eval, "eval_loss": v, "wan_bytes": i * bytes_per_eval}
            for i, v in enumerate(losses)]
    return {"history": hist, "final_eval_loss": final if final is not None else losses[-1]}


def test_by_seed_pairs_each_seeds_runs_and_leaves_a_miss_unrated():
    runs = {
        # seed 0: DDP at t=3 (300 samples, 300 bytes), streaming at t=1 (20 samples, 2 bytes)
        "ddp@0": _run([4.0, 2.0, 1.7, 1.5, 1.2], 100, 100),
        "streaming@0": _run([4.0, 1.5, 1.1], 20, 2),
        # seed 2: streaming never reaches the target
        "ddp@2": _run([4.0, 1.0], 100, 100, final=1.0),
        "streaming@2": _run([4.0, 3.0], 20, 2, final=3.0),
        "ddp@5": _run([4.0, 1.0], 100, 100),  # no streaming run of seed 5: left out
    }
    rows = e2e.by_seed(runs, 1.6)
    assert [r["seed"] for r in rows] == [0, 2]
    r0, r2 = rows
    assert (r0["ddp_s"], r0["streaming_s"], r0["time_ratio"]) == (3.0, 1.0, 3.0)
    assert r0["bytes_ratio"] == 300 / 2
    assert (r0["ddp_samples"], r0["streaming_samples"]) == (300, 20)
    assert r0["final_ratio"] == 1.1 / 1.2
    assert r2["streaming_s"] is None and r2["time_ratio"] is None and r2["bytes_ratio"] is None
    assert r2["final_ratio"] == 3.0


def test_spread_counts_a_miss_as_the_worst():
    def sp(values):
        out = e2e.spread(values)
        assert out.pop("seeds") == len(values)
        return out

    assert sp([8.0, 10.0, 12.0]) == {"median": 10.0, "min": 8.0, "max": 12.0, "missed": 0}
    assert sp([8.0, 10.0, 12.0, 6.0]) == {"median": 9.0, "min": 6.0, "max": 12.0, "missed": 0}
    # a miss ranks below every ratio: the median moves down, and there is no least ratio
    assert sp([None, 10.0, 12.0]) == {"median": 10.0, "min": None, "max": 12.0, "missed": 1}
    assert sp([None, None, 12.0]) == {"median": None, "min": None, "max": 12.0, "missed": 2}
    assert sp([None]) == {"median": None, "min": None, "max": None, "missed": 1}
    # an even count whose middle pair holds a miss has no median (no averaging with a miss)
    assert sp([None, 7.6]) == {"median": None, "min": None, "max": 7.6, "missed": 1}
    assert sp([]) == {"median": None, "min": None, "max": None, "missed": 0}


def test_only_streamings_misses_rank_worst():
    rows = [
        {"ddp_s": 40.0, "streaming_s": 4.0, "time_ratio": 10.0},
        {"ddp_s": 40.0, "streaming_s": None, "time_ratio": None},  # streaming missed: worst
        {"ddp_s": None, "streaming_s": 4.0, "time_ratio": None},  # DDP missed: no ratio, left out
        {"ddp_s": 0.0, "streaming_s": 0.0, "time_ratio": None},  # target at the initial loss
    ]
    assert e2e.seed_time_ratios(rows) == [10.0, None]


def test_seeds_option_refuses_bad_lists(capsys):
    import pytest

    with pytest.raises(SystemExit):
        e2e.main(["--seeds", "1,x"])
    assert "--seeds: integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        e2e.main(["--seeds", f"1,{e2e.SEED}"])
    assert "main runs' own" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        e2e.main(["--seeds", "1,2,1"])
    assert "named twice" in capsys.readouterr().err


def test_config_carries_the_seed():
    spec = e2e.STRATEGIES["streaming"]
    assert e2e._config(spec, 18, 1).job.seed == e2e.SEED
    assert e2e._config(spec, 18, 1, seed=3).job.seed == 3


def test_batch_sets_every_runs_batch_and_keeps_the_sample_count():
    spec = e2e.run_spec("streaming", 600, batch=16)
    assert spec["samples"] == 16 * 4 * 600  # the time-boxed run stops on DDP's samples
    cfg = e2e._config(spec, e2e.equal_sample_steps(spec, 600), 1, batch=16)
    assert cfg.data.batch_size == 16 and cfg.train.samples == 16 * 4 * 600
    assert e2e._config(spec, 18, 1).data.batch_size == e2e.BATCH  # the demo's by default


def test_batch_option_refuses_a_batch_without_pairs(capsys):
    import pytest

    with pytest.raises(SystemExit):
        e2e.main(["--batch", "1"])
    assert "--batch: at least 2" in capsys.readouterr().err
