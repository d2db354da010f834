"""Whole jobs on a local Ray instance: the demo, strategy equivalence, late centers, Ctrl+C."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import ray
import torch
import yaml

from suanwang.launch.demo import demo_functions
from suanwang.runtime import Fault, Job, parse_config
from suanwang.runtime.config import demo_config_path, load_config

pytestmark = pytest.mark.slow


def _descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _assert_gone(procs: list[psutil.Process], timeout: float = 30.0) -> None:
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING, namespace="suanwang-tests")
    yield
    procs = _descendants()
    ray.shutdown()
    _assert_gone(procs)


def small_config(**over) -> dict:
    d = yaml.safe_load(demo_config_path().read_text())
    d["centers"] = [
        {"name": "shenzhen", "workers": 2},
        {"name": "wuhan", "workers": 1},
        {"name": "xian", "workers": 1},
    ]
    d["train"] = {"steps": 6}
    d["wan"] = {"insecure": True, "round_timeout_s": 60}
    for k, v in over.items():
        d[k] = v
    return d


def test_demo_cli_trains_agrees_counts_bytes_and_leaves_nothing(tmp_path):
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANWANG__")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "suanwang.launch.cli", "run", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    seen = []
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if not seen:
                seen = psutil.Process(proc.pid).children(recursive=True)
        assert proc.wait(timeout=600) == 0, "".join(lines[-40:])
    finally:
        proc.kill()
    text = "".join(lines)
    assert "round 1 eval" in text and "parameters agree: True" in text
    res = json.loads(out.read_text())
    assert res["params_agree"] is True
    assert res["final_eval_loss"] < 0.6 * res["initial_eval_loss"], (res["initial_eval_loss"], res["final_eval_loss"])
    assert set(res["centers"]) == {"shenzhen", "wuhan", "xian"}
    for c in res["centers"].values():
        assert c["samples"] > 0 and c["compute_s"] > 0 and c["wait_s"] >= 0
    assert res["wan_bytes"] == sum(link["bytes"] for link in res["links"].values()) > 0
    assert len(res["history"]) == res["rounds"] == load_config(demo_config_path(), environ={}).rounds
    cum = [h["wan_bytes"] for h in res["history"]]
    assert cum == sorted(cum) and cum[-1] == res["wan_bytes"]
    assert sum(sum(h["link_bytes"].values()) for h in res["history"]) == res["wan_bytes"]
    for key, link in res["links"].items():
        assert link["measured"]["rtt_ms"] > 0, key
    assert json.loads((tmp_path / "runs" / "demo" / "result.json").read_text())["wan_bytes"] == res["wan_bytes"]
    assert all(h["eval_loss"] is not None for h in res["history"])
    _assert_gone(seen)


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_diloco_with_h1_and_plain_outer_sgd_matches_sync(local_ray, codec):
    """Exactly (float rounding) with fp32 payloads. With int8, sync quantizes gradients and
    diloco the same gradients times the learning rate: the quantizer is scale-invariant up
    to values landing on the other side of a rounding boundary, so a few elements (under
    0.2%; ~86 of 104k measured, with either dense schedule) differ by a quantization step
    of ``lr * grad`` (about 1e-5 here), and no others move."""
    common = dict(optimizer={"kind": "sgd", "lr": 0.05}, codec={"kind": codec})
    sync_cfg = parse_config(small_config(strategy={"kind": "sync"}, **common), environ={})
    dil_cfg = parse_config(
        small_config(strategy={"kind": "diloco", "inner_steps": 1, "outer_lr": 1.0, "outer_momentum": 0.0, "nesterov": False}, **common),
        environ={},
    )
    a = Job(sync_cfg, demo_functions(sync_cfg)).run()
    b = Job(dil_cfg, demo_functions(dil_cfg)).run()
    assert a.params_agree and b.params_agree
    assert a.rounds == b.rounds == 6
    diff = (a.final_params - b.final_params).abs()
    if codec == "none":
        assert diff.max() < 1e-6, diff.max()
    else:
        assert (diff > 1e-6).float().mean() < 2e-3, int((diff > 1e-6).sum())
        assert diff.max() < 1e-4, diff.max()
    # and training did move the parameters (the comparison is not between two no-ops)
    cfg0 = parse_config(small_config(), environ={})
    torch.manual_seed(cfg0.job.seed)
    init = torch.cat([p.detach().reshape(-1) for p in demo_functions(cfg0).model_fn().parameters()])
    assert (a.final_params - init).abs().max() > 1e-3


def test_ring_schedule_trains_and_agrees(local_ray):
    """The ring (no longer auto's choice) end to end: int8 DiLoCo rounds agree bit for bit."""
    cfg = parse_config(small_config(strategy={"kind": "diloco", "inner_steps": 2}, train={"steps": 8},
                                    wan={"insecure": True, "round_timeout_s": 60, "schedule": "ring"}), environ={})
    res = Job(cfg, demo_functions(cfg)).run()
    assert res.rounds == 4 and res.params_agree
    assert res.final_eval_loss < res.initial_eval_loss


def test_late_center_is_left_out_then_rejoins(local_ray):
    cfg = parse_config(
        small_config(
            strategy={"kind": "diloco", "inner_steps": 2, "outer_lr": 0.7, "outer_momentum": 0.9},
            train={"steps": 60},
            wan={"insecure": True, "round_timeout_s": 6},
        ),
        environ={},
    )
    t0 = time.perf_counter()
    res = Job(cfg, demo_functions(cfg), faults=(Fault("xian", 1, "delay", 12.0),)).run()
    assert res.rounds == 30
    h = res.history
    assert h[0].participants == ["shenzhen", "wuhan", "xian"]
    assert "xian" in h[1].excluded and "deadline" in h[1].excluded["xian"]
    assert h[1].participants == ["shenzhen", "wuhan"]
    assert h[-1].participants == ["shenzhen", "wuhan", "xian"], [r.participants for r in h]
    assert any("xian: rejoined" in e for e in res.events), res.events
    assert res.params_agree
    assert not any(rec.abandoned for rec in h)
    assert time.perf_counter() - t0 < 150


def test_ctrl_c_stops_the_whole_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANWANG__")}
    env["SUANWANG__TRAIN__STEPS"] = "100000"
    proc = subprocess.Popen(
        [sys.executable, "-m", "suanwang.launch.cli", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        # A shell starts background jobs with SIGINT ignored (POSIX) and children inherit
        # that, so under `cmd &` or nohup the CLI would never see this Ctrl+C: give it the
        # default disposition a terminal user's process has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    procs = []
    try:
        for line in proc.stdout:
            if "round 2" in line:
                break
        procs = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in procs)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    _assert_gone(procs, timeout=60)


@pytest.mark.parametrize(
    "strategy",
    [
        {"kind": "diloco", "inner_steps": 3, "outer_lr": 0.7, "outer_momentum": 0.9},
        # overlapped: the pipeline drains at each checkpoint round; the replicas keep their
        # own progress (the mix), the samples behind each fragment and the outer momentum
        {"kind": "streaming", "inner_steps": 3, "fragments": 3, "overlap": 1, "mix": 0.5},
    ],
    ids=["diloco", "streaming-overlap"],
)
def test_killed_job_resumes_from_checkpoint_bit_exact(local_ray, tmp_path, strategy):
    d = small_config(
        strategy=strategy,
        codec={"kind": "topk", "ratio": 0.1},  # error feedback state must survive too
        train={"steps": 24 if strategy["kind"] == "diloco" else 8},
        checkpoint={"every_rounds": 2, "dir": str(tmp_path / "ckpt"), "keep": 2},
    )
    d["job"] = {"name": "resume-test", "output_dir": str(tmp_path / "out")}
    cfg = parse_config(d, environ={})
    whole = Job(cfg, demo_functions(cfg)).run()
    assert whole.rounds == 8
    import shutil

    shutil.rmtree(tmp_path / "ckpt")

    class Killed(KeyboardInterrupt):
        pass

    def kill_after_round_5(rec):
        if rec.round == 5:
            raise Killed()

    with pytest.raises(Killed):
        Job(cfg, demo_functions(cfg)).run(on_round=kill_after_round_5)
    sealed = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # killed while reporting round 5, before its checkpoint: round 3 is the newest
    assert sealed == ["round-000001", "round-000003"], sealed
    resumed = Job(cfg, demo_functions(cfg), resume=True).run()
    assert [h.round for h in resumed.history] == list(range(8))
    assert resumed.params_agree
    assert torch.equal(resumed.final_params, whole.final_params), "resume must continue exactly"
    assert resumed.initial_eval_loss == whole.initial_eval_loss


def test_streaming_applied_on_arrival_checkpoints_and_resumes(local_ray, tmp_path):
    # results mixed in mid-slot: not reproducible bit for bit, but a checkpoint still
    # holds one agreed state (the pipeline drained: every delivered result applied)
    d = small_config(
        strategy={"kind": "streaming", "inner_steps": 6, "fragments": 3, "overlap": 1, "apply_on_arrival": True},
        codec={"kind": "int8"},
        train={"steps": 12},
        checkpoint={"every_rounds": 3, "dir": str(tmp_path / "ckpt"), "keep": 1},
    )
    d["job"] = {"name": "resume-arrival", "output_dir": str(tmp_path / "out")}
    cfg = parse_config(d, environ={})
    first = Job(cfg, demo_functions(cfg)).run()
    assert first.rounds == 6 and first.params_agree
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["round-000002"]
    resumed = Job(cfg, demo_functions(cfg), resume=True).run()
    assert [h.round for h in resumed.history] == list(range(6))
    assert resumed.history[:3] == first.history[:3]  # rounds 0-2 come from the checkpoint, not rerun
    assert resumed.params_agree and resumed.final_eval_loss < resumed.initial_eval_loss


def test_streaming_with_one_fragment_and_no_overlap_equals_diloco(local_ray):
    outer = {"outer_lr": 0.7, "outer_momentum": 0.9, "nesterov": True, "inner_steps": 3}
    dil = parse_config(small_config(strategy={"kind": "diloco", **outer}, train={"steps": 9}), environ={})
    st = parse_config(
        small_config(strategy={"kind": "streaming", "fragments": 1, "overlap": 0, "mix": 0.0, **outer}, train={"steps": 9}),
        environ={},
    )
    a = Job(dil, demo_functions(dil)).run()
    b = Job(st, demo_functions(st)).run()
    assert a.rounds == b.rounds == 3
    assert torch.equal(a.final_params, b.final_params)


def test_streaming_syncs_every_fragment_and_learns(local_ray):
    cfg = parse_config(
        small_config(
            strategy={"kind": "streaming", "inner_steps": 6, "fragments": 3, "overlap": 1, "mix": 0.5},
            codec={"kind": "int8"},
            train={"steps": 36},
        ),
        environ={},
    )
    res = Job(cfg, demo_functions(cfg)).run()
    assert res.rounds == 18
    assert [h.fragment for h in res.history] == [r % 3 for r in range(18)]
    assert res.params_agree  # the global state, identical in every center
    assert res.final_eval_loss < res.initial_eval_loss
    # each round carries a third of the model: fewer bytes per round than a whole payload
    per_round = [sum(h.link_bytes.values()) for h in res.history]
    assert max(per_round) < 0.6 * res.wan_bytes / 18 * 3


def test_centers_run_their_own_inner_steps_and_report_their_samples(local_ray):
    d = small_config(strategy={"kind": "diloco", "inner_steps": 3}, train={"steps": 9})
    d["centers"][1]["inner_steps"] = 6  # wuhan: twice the default
    cfg = parse_config(d, environ={})
    res = Job(cfg, demo_functions(cfg)).run()
    assert res.rounds == 3 and res.params_agree
    batch = cfg.data.batch_size
    # samples are per center (all its workers); steps as each worker counts them
    assert res.centers["wuhan"].samples == 3 * 6 * batch
    assert res.centers["xian"].samples == 3 * 3 * batch
    assert res.centers["shenzhen"].samples == 3 * 3 * 2 * batch
    assert res.final_eval_loss < res.initial_eval_loss
    # streaming: the override is per fragment cycle, so per slot it is inner_steps / fragments
    d = small_config(strategy={"kind": "streaming", "inner_steps": 4, "fragments": 2, "overlap": 1},
                     train={"steps": 8})
    d["centers"][2]["inner_steps"] = 8  # xian: 4 steps per slot where the others take 2
    cfg = parse_config(d, environ={})
    res = Job(cfg, demo_functions(cfg)).run()
    assert res.rounds == 4 and res.params_agree
    assert res.centers["xian"].samples == 4 * 4 * batch
    assert res.centers["wuhan"].samples == 4 * 2 * batch


def test_streaming_with_overlap_drops_a_late_center_and_goes_on(local_ray):
    # Under overlap a round's result queues behind the next round's work, which is where
    # the delay hits: the coordinator must give up on the center after the round timeout
    # (not wait for it forever) and the others go on without it.
    cfg = parse_config(
        small_config(
            strategy={"kind": "streaming", "inner_steps": 4, "fragments": 2, "overlap": 1, "mix": 0.5},
            train={"steps": 24},
            wan={"insecure": True, "round_timeout_s": 4},
        ),
        environ={},
    )
    t0 = time.perf_counter()
    res = Job(cfg, demo_functions(cfg), faults=(Fault("xian", 2, "delay", 30.0),)).run()
    h = res.history
    assert res.rounds == 12
    assert h[0].participants == ["shenzhen", "wuhan", "xian"]
    # round 1 reduced xian's payload; its result then queued behind the delayed work(2)
    assert h[1].participants == ["shenzhen", "wuhan", "xian"]
    assert any("round 1: xian did not apply the result in time" in e for e in res.events), res.events
    assert all(r.participants == ["shenzhen", "wuhan"] for r in h[2:]), [r.participants for r in h]
    assert res.params_agree and not any(r.abandoned for r in h)
    assert res.final_eval_loss < res.initial_eval_loss
    assert time.perf_counter() - t0 < 60  # not held up for the 30 s delay


def test_workers_of_a_center_that_drift_apart_are_reported(local_ray):
    # The agreement check hashes, besides the state all centers share, each replica: here
    # rank 1 of shenzhen nudges one weight after its first step (a user's optimizer, say,
    # or a broken device), which the global state never shows under streaming.
    import torch.distributed as dist

    class Skewed(torch.optim.SGD):
        def step(self, closure=None):
            out = super().step(closure)
            if dist.is_initialized() and dist.get_rank() == 1 and not getattr(self, "nudged", False):
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] += 1e-3
                self.nudged = True
            return out

    cfg = parse_config(
        small_config(
            strategy={"kind": "streaming", "inner_steps": 6, "fragments": 3, "overlap": 0, "mix": 0.5},
            train={"steps": 12},
        ),
        environ={},
    )
    fns = dataclasses.replace(demo_functions(cfg), optimizer_fn=lambda ps: Skewed(ps, lr=0.01))
    res = Job(cfg, fns).run()
    assert not res.params_agree
    assert any("the workers of shenzhen hold different parameters" in e for e in res.events), res.events
    assert not any("differ across centers" in e for e in res.events), res.events


def _steps_per_round(res, center: str) -> list[int]:
    done = [h.centers[center]["steps"] for h in res.history if center in h.centers]
    return [b - a for a, b in zip([0, *done], done)]


def test_results_applied_on_arrival_land_mid_slot_and_the_centers_agree(local_ray):
    # strategy.apply_on_arrival: a round's result is mixed in at the next step boundary
    # that every worker of the center reached with it in hand (the 2-worker center agrees
    # through its all-reduce), not after the next slot: the round is recorded (every
    # worker applied it) long before the slot ends
    cfg = parse_config(
        small_config(
            strategy={"kind": "streaming", "inner_steps": 30, "fragments": 3, "overlap": 1, "mix": 0.5,
                      "slot_s": 0.4, "apply_on_arrival": True},
            codec={"kind": "int8"},
            # no sample budget (whose end makes the coordinator wait on the rounds in flight)
            # and one evaluation, at the end: a round is recorded once its result is applied
            train={"steps": 120, "eval_every_rounds": 100},
        ),
        environ={},
    )
    fns = demo_functions(cfg)
    data_fn = fns.data_fn

    def paced(shard):  # every step takes at least 30 ms: the clock ends each slot
        for batch in data_fn(shard):
            time.sleep(0.03)
            yield batch

    res = Job(cfg, dataclasses.replace(fns, data_fn=paced)).run()
    assert res.params_agree and res.rounds == 12
    assert [h.fragment for h in res.history] == [r % 3 for r in range(res.rounds)]
    assert res.final_eval_loss < res.initial_eval_loss
    lag = sorted(h.time_s - h.reduced_s for h in res.history[:-1])
    # applied at the end of the next 0.4 s slot, the median lag is ~0.36 s (see below)
    assert lag[len(lag) // 2] < 0.2, lag


def test_time_boxed_slots_stop_on_the_sample_budget_and_absorb_a_slow_slot(local_ray):
    # Slots end at absolute deadlines: a center that loses most of a slot (the delay)
    # takes fewer steps in it instead of holding the others up; the job stops on the budget.
    budget = 128 * 120  # 10-15 slots of 0.4 s
    cfg = parse_config(
        small_config(
            # counted: 10 steps per slot, so at most 20 ...
            strategy={"kind": "streaming", "inner_steps": 30, "fragments": 3, "overlap": 1, "mix": 0.5, "slot_s": 0.4},
            train={"steps": 6, "samples": budget, "eval_every_rounds": 4},
        ),
        environ={},
    )
    fns = demo_functions(cfg)
    data_fn = fns.data_fn

    def paced(shard):
        # ... and every step takes at least 30 ms, so on any machine the clock (at most
        # 13 steps per slot), not the cap, ends a slot
        for batch in data_fn(shard):
            time.sleep(0.03)
            yield batch

    fns = dataclasses.replace(fns, data_fn=paced)
    res = Job(cfg, fns, faults=(Fault("xian", 3, "delay", 0.3),)).run()
    taken = sum(c.samples for c in res.centers.values())
    per_step = sum(cfg.samples_per_step(c.name) for c in cfg.centers)
    assert budget - per_step < taken <= budget
    assert res.params_agree and res.history[-1].eval_loss is not None
    assert res.final_eval_loss < res.initial_eval_loss
    assert [h.fragment for h in res.history] == [r % 3 for r in range(res.rounds)]
    # a round's global state exists once it is reduced, early in the next slot; its record
    # comes once the workers applied it, behind that slot's work
    reduced = [h.reduced_s for h in res.history]
    assert reduced == sorted(reduced) and all(h.reduced_s <= h.time_s for h in res.history)
    lag = sorted(h.time_s - h.reduced_s for h in res.history[:-1])
    assert lag[len(lag) // 2] > 0.1, lag
    xian = _steps_per_round(res, "xian")
    # round 3 lost 0.3 s of its 0.4 s slot (~3/4 of its steps); the others did not
    others = sorted(xian[:3] + xian[4:-1])
    assert max(others) < 20, xian  # no slot was ended by the cap
    assert xian[3] <= others[len(others) // 2] / 2, xian
    # the 2-worker center's workers agreed on every slot's step count (or the job hangs)
    assert sum(_steps_per_round(res, "shenzhen")) == res.centers["shenzhen"].steps


def test_counted_rounds_stop_on_the_sample_budget_with_a_shorter_last_round(local_ray):
    d = small_config(strategy={"kind": "diloco", "inner_steps": 3}, train={"steps": 99, "samples": 1000})
    cfg = parse_config(d, environ={})
    res = Job(cfg, demo_functions(cfg)).run()
    batch = cfg.data.batch_size
    full = 3 * (2 + 1 + 1) * batch  # 384 samples per counted round
    assert res.rounds == 3  # two full rounds, then what is left of the 1000
    assert sum(c.samples for c in res.centers.values()) == 2 * full + 7 * batch  # 992: 232 left fits 7 steps
    assert _steps_per_round(res, "wuhan")[:2] == [3, 3]
    assert res.params_agree and res.history[-1].eval_loss is not None


def test_evaluator_off_the_training_path_reports_what_the_leader_would(local_ray):
    runs = {}
    for where in ("leader", "evaluator"):
        d = small_config(
            strategy={"kind": "streaming", "inner_steps": 4, "fragments": 2, "overlap": 1},
            train={"steps": 8, "eval_on": where},
        )
        cfg = parse_config(d, environ={})
        runs[where] = Job(cfg, demo_functions(cfg)).run()
    a, b = runs["leader"], runs["evaluator"]
    assert a.initial_eval_loss == b.initial_eval_loss
    # the gateway's global parameters are what every worker evaluates as, bit for bit
    assert [h.eval_loss for h in a.history] == [h.eval_loss for h in b.history]
    assert all(h.eval_loss is not None for h in b.history)
    assert torch.equal(a.final_params, b.final_params)
