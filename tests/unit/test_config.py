"""Launch config validation: good files load, bad ones name the field and the reason."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import yaml

from suanwang.runtime.config import ConfigError, demo_config_path, load_config, parse_config


def demo_data() -> dict:
    return yaml.safe_load(demo_config_path().read_text())


def problems(data, environ=None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.yaml", environ or {})
    return dict(info.value.problems)


def test_demo_loads_with_three_unequal_centers():
    cfg = load_config(demo_config_path(), environ={})
    assert [c.name for c in cfg.centers] == ["shenzhen", "wuhan", "xian"]
    assert len({c.workers for c in cfg.centers}) > 1
    assert cfg.strategy.kind == "diloco"
    assert cfg.rounds == -(-cfg.train.steps // cfg.strategy.inner_steps)


def test_misspelled_field_is_named():
    d = demo_data()
    d["strategy"]["inner_step"] = d["strategy"].pop("inner_steps")
    d["centers"][1]["devcie"] = "cpu"
    p = problems(d)
    assert p["strategy.inner_step"].startswith("unknown field")
    assert p["centers[1].devcie"].startswith("unknown field")


@pytest.mark.parametrize(
    "edit, path, fragment",
    [
        (lambda d: d["centers"][0].update(workers=0), "centers[0].workers", "greater than or equal to 1"),
        (lambda d: d["centers"][2].update(device="tpu"), "centers[2].device", "'cpu', 'cuda' or 'npu'"),
        (lambda d: d["strategy"].update(kind="gossip"), "strategy", "sync"),
        (lambda d: d["strategy"].update(outer_momentum=1.5), "strategy.outer_momentum", "less than 1"),
        (lambda d: d["links"][0].update(bandwidth_mbit=-1), "links[0].bandwidth_mbit", "greater than 0"),
        (lambda d: d["links"][0].update(between=["shenzhen", "lhasa"]), "links[0].between", "unknown center 'lhasa'"),
        (lambda d: d["links"][0].update(between=["xian", "xian"]), "links[0].between", "two different centers"),
        (lambda d: d["links"].pop(2), "links", "no link declared between 'wuhan' and 'xian'"),
        (lambda d: d["centers"][1].update(name="shenzhen"), "centers[1].name", "duplicate"),
        (lambda d: d["codec"].update(kind="gzip"), "codec.kind", "gzip"),
        (lambda d: d["wan"].update(insecure=False), "wan.tls", "required unless insecure is true"),
    ],
)
def test_bad_values_name_path_and_reason(edit, path, fragment):
    d = demo_data()
    edit(d)
    p = problems(d)
    assert path in p, p
    assert fragment in p[path], p


def test_env_override_sets_field_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="suanwang.runtime.config"):
        cfg = parse_config(demo_data(), "t", {"SUANWANG__TRAIN__STEPS": "40", "SUANWANG__CENTERS__1__WORKERS": "3"})
    assert cfg.train.steps == 40
    assert cfg.centers[1].workers == 3
    assert "train.steps = 40 (from SUANWANG__TRAIN__STEPS)" in caplog.text
    assert "centers[1].workers = 3" in caplog.text


def test_env_override_of_unknown_field_is_an_error():
    p = problems(demo_data(), {"SUANWANG__TRAIN__STESP": "40"})
    assert "train.stesp" in p


def test_env_override_value_is_validated():
    p = problems(demo_data(), {"SUANWANG__STRATEGY__INNER_STEPS": "zero"})
    assert "strategy.inner_steps" in p


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("centers: [\n")
    with pytest.raises(ConfigError, match=r"\(yaml\)"):
        load_config(bad)


def test_cli_plan_rejects_misspelled_field_without_traceback(tmp_path):
    d = demo_data()
    d["train"]["stpes"] = 10
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(d))
    out = subprocess.run(
        [sys.executable, "-m", "suanwang.launch.cli", "plan", str(f)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "train.stpes: unknown field" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_plan_prints_resolved_config_and_prediction():
    out = subprocess.run(
        [sys.executable, "-m", "suanwang.launch.cli", "plan"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout.split("\n# prediction")[0])
    assert resolved["strategy"]["inner_steps"] == 10
    assert "MB on the WAN per round" in out.stdout


def test_plan_prediction_counts_streaming_fragments():
    from suanwang.launch.cli import predict

    d = demo_data()
    base = predict(parse_config(d, "t", {}))
    d["strategy"] = {"kind": "streaming", "inner_steps": 10, "fragments": 5}
    st = predict(parse_config(d, "t", {}))
    assert st["payload_bytes"] == pytest.approx(base["payload_bytes"] / 5, rel=0.02)  # one fragment a round
    assert st["rounds"] == 5 * base["rounds"]  # slots of 2 steps
    assert st["wan_bytes_total"] == pytest.approx(base["wan_bytes_total"], rel=0.02)  # the same model, in pieces


def test_agreement_check_interval_defaults_to_every_round_and_rejects_negative():
    assert parse_config(demo_data(), "t", {}).train.verify_every_rounds == 1
    d = demo_data()
    d["train"]["verify_every_rounds"] = -1
    assert "train.verify_every_rounds" in problems(d)


def test_streaming_needs_inner_steps_divisible_by_fragments():
    d = demo_data()
    d["strategy"] = {"kind": "streaming", "inner_steps": 10, "fragments": 3}
    p = problems(d)
    assert "strategy.inner_steps" in p and "not a multiple of fragments (3)" in p["strategy.inner_steps"], p


def test_per_center_inner_steps_override_the_strategy_for_that_center_only():
    d = demo_data()
    d["strategy"] = {"kind": "streaming", "inner_steps": 12, "fragments": 3}
    d["centers"][1]["inner_steps"] = 24
    cfg = parse_config(d, "t", {})
    assert cfg.center_inner_steps("wuhan") == 8  # per slot: 24 / 3 fragments
    assert cfg.center_inner_steps("shenzhen") == cfg.inner_steps == 4
    d["strategy"] = {"kind": "diloco", "inner_steps": 10}
    cfg = parse_config(d, "t", {})
    assert (cfg.center_inner_steps("wuhan"), cfg.center_inner_steps("xian")) == (24, 10)
    assert cfg.rounds == -(-cfg.train.steps // 10)  # train.steps counts the strategy's steps


def test_per_center_inner_steps_rejected_where_meaningless():
    d = demo_data()
    d["strategy"] = {"kind": "streaming", "inner_steps": 12, "fragments": 3}
    d["centers"][2]["inner_steps"] = 10
    p = problems(d)
    assert "centers[2].inner_steps" in p and "multiple of strategy.fragments (3)" in p["centers[2].inner_steps"], p
    d["strategy"] = {"kind": "sync"}
    d["centers"][2]["inner_steps"] = 2
    p = problems(d)
    assert "one step per round" in p["centers[2].inner_steps"], p
    d["strategy"] = {"kind": "diloco"}
    d["centers"][2]["inner_steps"] = 0
    assert "centers[2].inner_steps" in problems(d)


def test_time_boxed_slots_and_a_sample_budget():
    d = demo_data()
    d["strategy"] = {"kind": "streaming", "inner_steps": 12, "fragments": 3, "slot_s": 0.25}
    d["centers"][1]["inner_steps"] = 24
    d["train"] = {"samples": 10_000}
    cfg = parse_config(d, "t.yaml", {})
    assert cfg.strategy.slot_s == 0.25 and cfg.train.samples == 10_000
    per_round = sum(cfg.samples_per_step(c.name) * cfg.center_inner_steps(c.name) for c in cfg.centers)
    assert cfg.rounds == -(-10_000 // per_round)  # the counted estimate; the budget stops the job
    d["strategy"]["slot_s"] = 0
    assert problems(d)["strategy.slot_s"] == "Input should be greater than 0"
    d["strategy"].update(slot_s=0.25, overlap=0)
    assert "need overlap: 1" in problems(d)["strategy.slot_s"]
    d["strategy"]["overlap"] = 1
    d["train"] = {"samples": 100}  # one step of each center is 4 workers x 32
    assert "less than one step of every center (128 samples)" in problems(d)["train.samples"]
    d["train"] = {"samples": 10_000}
    d["strategy"] = {"kind": "sync"}
    d["centers"][1].pop("inner_steps")
    p = problems(d)
    assert "one step per round" in p["train.samples"], p
    d["strategy"] = {"kind": "diloco", "slot_s": 0.25}
    assert problems(d)["strategy.slot_s"].startswith("unknown field")  # a streaming option


def test_apply_on_arrival_needs_overlap_and_several_fragments():
    d = demo_data()
    d["strategy"] = {"kind": "streaming", "inner_steps": 12, "fragments": 3, "apply_on_arrival": True}
    assert parse_config(d, "t.yaml", {}).strategy.apply_on_arrival
    d["strategy"].update(fragments=1)
    assert "needs overlap: 1 and fragments >= 2" in problems(d)["strategy.apply_on_arrival"]
    d["strategy"].update(fragments=3, overlap=0)
    assert "needs overlap: 1 and fragments >= 2" in problems(d)["strategy.apply_on_arrival"]
    d["strategy"] = {"kind": "diloco", "apply_on_arrival": True}
    assert problems(d)["strategy.apply_on_arrival"].startswith("unknown field")
