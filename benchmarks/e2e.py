"""End-to-end: time and WAN bytes to a target held-out loss, strategies against DDP.

Three centers (2, 1 and 1 workers: the demo's shape) joined by emulated links of 100 Mbit/s
and 40 ms RTT (:class:`~suanwang.runtime.wan.emulator.WanEmulator` in packet mode,
``latency="tun"``: every IPv4 packet between centers, gloo's and gRPC's alike, pays the
link rate and rtt/2 each way). Every run trains the demo model (tiny CLIP, digits pairs) on
the same per-worker shards with the same seed (:data:`SEED`, except the ``--seeds``
repeats), batch and inner optimizer, and takes the
same number of samples in all (DDP: ``--steps`` per worker; a strategy whose centers run
unequal inner steps gets the number of rounds that adds up to the same samples, and
time-boxed streaming stops on the sample count, ``train.samples``), so "final loss after
equal samples" compares like with like. Runs:

* ``ddp``, ``ddp_powersgd``: plain PyTorch DDP (gloo) over all workers of all centers, its
  gradient traffic crossing the emulated links (:mod:`suanwang.benchmarks.ddp`);
* ``sync``, ``diloco``, ``streaming``: suanwang's strategies, gateways bridged into the
  emulator (:class:`~suanwang.runtime.wan.bridge.BridgedRoutes`). Streaming uses int4 and
  time-boxed slots, so each center runs as many inner steps as it manages per slot instead
  of waiting for the slowest (see ``STRATEGIES``);
* ``ddp_unshaped``, ``streaming_unshaped``: the same on loopback, no WAN.

All of them use the job seed :data:`SEED` (model init, data split, batch order), and the
headline ratios come from them. ``--seeds 1,2,3`` repeats ``ddp`` and ``streaming`` on the
links with other seeds (``seed_runs`` and ``ddp_over_streaming_by_seed`` in the JSON): how
much of a ratio is the seed's.

Every run compiles its model first (``train.compile``; DDP's workers likewise), outside the
clock. Times exclude start-up (training time from the first step) and evaluation pauses.
DDP's time at an evaluation is when the step it follows ended; a suanwang round's is when
its reduce completed (``RoundRecord.reduced_s``: the global state it evaluates exists from
then on, while under overlap its record comes once the busy workers have applied it).
suanwang runs evaluate on a separate actor (``train.eval_on: evaluator``); under streaming's
overlap the centers go on computing meanwhile, so nothing is taken out of streaming's time
(its evaluations take ~3% of the 2 cores from the centers). WAN bytes
for DDP are the emulator's per-link counts (IP packets, headers and ACKs included); for
suanwang runs the gateways' counts of the gRPC messages they sent (the emulator's total for
the run is reported beside them as ``wan_bytes_kernel``, a name kept from the veth days).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import time
from typing import Any, Sequence

from suanwang.benchmarks.common import machine_info, print_table, write_json

CENTERS = [("shenzhen", 2), ("wuhan", 1), ("xian", 1)]
RATE_MBIT, RTT_MS = 100.0, 40.0
BATCH = 32  # per worker, as in the demo config
# Every run, DDP's and suanwang's, compiles its model (train.compile) before its clock
# starts: a quarter off the demo model's CPU step.
COMPILE = True
# Per strategy: the strategy section, the codec, the WAN schedule and each center's own
# inner steps. Streaming: fragments of a third of the model, int4, reduced by two-shot
# (a direct reduce-scatter and all-gather: 2/3 of an all-gather's bytes in two 20 ms hops,
# where a 3-center ring takes four and did not fit in a slot; the owner's sum is rounded to
# int4 once more, which moved the simulation's final loss by +0.7% over 6 batch orders; one
# float32 scale per 256 values instead of the default 64 sends 9% fewer bytes, and the
# simulation's final losses moved by under 0.5%), in
# time-boxed slots of 0.2 s: every center computes until the slot's deadline, however fast
# it is at the moment, so none waits for the slowest (on this 2-core host the 2-worker
# center steps ~1.5x slower, and any center's speed swings with the scheduler). The run
# stops on DDP's sample count. The counted steps (18 per fragment cycle, 27 for the
# 1-worker centers) only size the rounds estimate and cap a slot at twice them; compiled,
# a 0.2 s slot holds ~7 and ~13 steps (0.22 s held 6 and 9 before compiling, and 11 and
# 16 after, and the simulation put a fragment cycle of 30 steps at +20% final loss
# against DDP where 18 gave +8%; 0.18 s slots left a center busy 0.887 of the time in a
# shaped run, 0.2 s ones 0.896-0.931 in four). Each result is mixed in as soon as it reaches the
# workers (apply_on_arrival), not after the next slot: in the simulation that took the
# samples to the target from 186 to 175 DDP-step equivalents (3 batch orders), and the
# centers idle less between slots (no apply call queued between two slots' work).
STRATEGIES: dict[str, dict[str, Any]] = {
    "sync": {"strategy": {"kind": "sync"}, "codec": "int8", "inner": {}},
    "diloco": {
        "strategy": {"kind": "diloco", "inner_steps": 10, "outer_lr": 0.7, "outer_momentum": 0.9},
        "codec": "int8", "inner": {},
    },
    "streaming": {
        "strategy": {
            "kind": "streaming", "inner_steps": 18, "fragments": 3, "overlap": 1, "mix": 0.5,
            "outer_lr": 0.7, "outer_momentum": 0.9, "slot_s": 0.2, "apply_on_arrival": True,
        },
        "codec": {"kind": "int4", "block_size": 256}, "schedule": "two_shot", "inner": {"wuhan": 27, "xian": 27},
    },
}
# The held-out loss DDP reaches about halfway through the default 300 steps.
TARGET_LOSS = 1.6
# The job seed of every run (the demo's): model init, data split, batch order. ``--seeds``
# repeats the headline pair (``ddp`` and ``streaming`` on the links) with other seeds.
SEED = 0


def _config(spec: dict[str, Any], steps: int, eval_every_rounds: int, seed: int = SEED, batch: int = BATCH):
    """The demo config with the benchmark's centers, links and ``spec``; ``steps`` counts the
    strategy's own inner steps (see :func:`equal_sample_steps`)."""
    import yaml

    from suanwang.runtime import parse_config
    from suanwang.runtime.config import demo_config_path

    d = yaml.safe_load(demo_config_path().read_text())
    d["centers"] = [
        {"name": n, "workers": w, **({"inner_steps": spec["inner"][n]} if n in spec["inner"] else {})}
        for n, w in CENTERS
    ]
    d["links"] = [
        {"between": [a, b], "bandwidth_mbit": RATE_MBIT, "rtt_ms": RTT_MS}
        for i, (a, _) in enumerate(CENTERS) for b, _ in CENTERS[i + 1 :]
    ]
    d["strategy"] = spec["strategy"]
    d["codec"] = spec["codec"] if isinstance(spec["codec"], dict) else {"kind": spec["codec"]}
    d["data"] = {**d["data"], "batch_size": batch}
    # evaluations run on a separate actor, so no center's leader pauses training for them
    d["train"] = {"steps": steps, "eval_every_rounds": eval_every_rounds, "eval_on": "evaluator", "compile": COMPILE}
    if spec.get("samples"):
        d["train"]["samples"] = spec["samples"]
    d["wan"] = {**d["wan"], "schedule": spec.get("schedule", "auto")}
    d["checkpoint"] = {"every_rounds": 0}
    d["job"] = {"name": "e2e", "output_dir": "/tmp/suanwang-e2e", "seed": seed}
    return parse_config(d, environ={})


def run_ours(
    name: str, steps: int, routes=None, counters=None, eval_points: int = 20, seed: int = SEED, batch: int = BATCH
) -> dict[str, Any]:
    """One suanwang run; ``counters()`` returns the emulator's WAN byte count (or None)."""
    from suanwang.launch.demo import demo_functions
    from suanwang.runtime import Job

    spec = run_spec(name, steps, batch)
    probe = _config(spec, equal_sample_steps(spec, steps), 1, seed, batch)
    eval_every = max(1, probe.rounds // eval_points)
    cfg = _config(spec, probe.train.steps, eval_every, seed, batch)
    history: list[dict[str, Any]] = []
    state = {"samples": 0, "peak": 0.0, "eval_s": 0.0, "end_s": float("nan")}
    # Without overlap the round loop stops while the evaluator works: that pause is taken
    # out, as DDP's are. Under overlap the centers go on computing meanwhile: nothing is.
    paused = not spec["strategy"].get("overlap")
    taken: dict[str, int] = {}
    k0 = counters() if counters else None

    def on_round(rec) -> None:
        # A round's time is when its global state existed: when its reduce completed (under
        # overlap the record comes about a slot later, once the workers, busy with the next
        # slot, have applied it), less the evaluation pauses before it.
        at = (rec.reduced_s if rec.reduced_s is not None else rec.time_s) - state["eval_s"]
        if paused:
            state["eval_s"] += rec.eval_s
        # the run's training time ends with the last round, less the wait for its evaluation
        # (under overlap the earlier waits are not pauses: the centers compute meanwhile)
        state["end_s"] = rec.time_s - state["eval_s"] - (0.0 if paused else rec.eval_s)
        for c, st in rec.centers.items():  # a center's running total (participants only)
            taken[c] = st["samples"]
        state["samples"] = sum(taken.values())
        if rec.round_s > 0:
            for nbytes in rec.link_bytes.values():
                state["peak"] = max(state["peak"], nbytes * 8 / rec.round_s / 1e6)
        if rec.eval_loss is not None:
            history.append({
                "train_s": at,
                "samples": state["samples"],
                "eval_loss": rec.eval_loss,
                "wan_bytes": rec.wan_bytes,
            })

    res = Job(cfg, demo_functions(cfg), routes=routes).run(on_round=on_round)
    train_s = state["end_s"] if history else float("nan")  # all of training, the last apply included
    busy = {n: c.compute_s / train_s for n, c in res.centers.items()} if history else {}
    return {
        "history": [{"train_s": 0.0, "samples": 0, "eval_loss": res.initial_eval_loss, "wan_bytes": 0}, *history],
        "train_s": train_s,
        "final_eval_loss": res.final_eval_loss,
        "initial_eval_loss": res.initial_eval_loss,
        "wan_bytes": res.wan_bytes,
        "wan_bytes_kernel": (counters() - k0) if counters else 0,
        "samples": state["samples"],
        "utilization": min(busy.values(), default=float("nan")),
        "peak_wan_mbit": state["peak"],
        "params_agree": res.params_agree,
        "compile": cfg.train.compile,
        "seed": cfg.job.seed,
        "rounds": res.rounds,
        "strategy": spec["strategy"],
        "codec": spec["codec"],
        "inner_steps_per_round": {n: cfg.center_inner_steps(n) for n, _ in CENTERS},
        "slot_s": spec["strategy"].get("slot_s"),
        "steps_per_center": {n: c.steps for n, c in res.centers.items()},
        "busy": busy,
    }


def run_spec(name: str, ddp_steps: int, batch: int = BATCH) -> dict[str, Any]:
    """``STRATEGIES`` entry of run ``name``; time-boxed slots take what they manage, so
    such a run stops on the samples DDP takes in ``ddp_steps`` steps of ``batch`` per
    worker instead."""
    spec = STRATEGIES[name.removesuffix("_unshaped")]
    if spec["strategy"].get("slot_s"):
        spec = {**spec, "samples": batch * sum(w for _, w in CENTERS) * ddp_steps}
    return spec


def equal_sample_steps(spec: dict[str, Any], ddp_steps: int) -> int:
    """``train.steps`` for ``spec`` whose rounds add up to the samples DDP takes in
    ``ddp_steps`` steps (every worker of every center, one batch each), to the nearest
    round: centers with their own inner steps take more (or fewer) samples per round. Every
    worker's batch is the same, so batches are counted (worker-steps), not samples."""
    cfg = _config(spec, 1, 1)
    per_round = sum(w * cfg.center_inner_steps(n) for n, w in CENTERS)
    ddp_batches = sum(w for _, w in CENTERS) * ddp_steps
    rounds = max(1, round(ddp_batches / per_round))
    return rounds * cfg.inner_steps


def to_target(history: Sequence[dict[str, Any]], target: float) -> tuple[float | None, int | None]:
    for h in history:
        if h["eval_loss"] is not None and h["eval_loss"] <= target:
            return h["train_s"], h["wan_bytes"]
    return None, None


def _plot(runs: dict[str, dict[str, Any]], target: float, path: pathlib.Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'suanwang[plot]'): no plot"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {base: f"C{i}" for i, base in enumerate(["ddp", "ddp_powersgd", "sync", "diloco", "streaming"])}
    for name, r in runs.items():
        xs = [h["train_s"] for h in r["history"]]
        ys = [h["eval_loss"] for h in r["history"]]
        unshaped = name.endswith("_unshaped")
        color = colors.get(name.removesuffix("_unshaped"), "k")
        ax1.plot(xs, ys, "--" if unshaped else "-", color=color, label=name)
        pts = [(h["wan_bytes"] / 1e6, h["eval_loss"]) for h in r["history"] if h["wan_bytes"] > 0]
        if pts and not unshaped:
            ax2.plot(*zip(*pts), "-", color=color, label=name)
    for ax in (ax1, ax2):
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=8)
    ax1.set_xlabel("training time, s")
    ax1.set_xscale("symlog", linthresh=1.0)
    ax1.set_xlim(left=0)
    ax2.set_xlabel("WAN MB (log)")
    ax2.set_xscale("log")
    fig.suptitle(f"3 centers, {RATE_MBIT:g} Mbit/s {RTT_MS:g} ms links (emulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="suanwang bench e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", default="e2e.json", help="write results (and a PNG beside it)")
    ap.add_argument("--steps", type=int, default=300,
                    help="DDP steps per worker; every strategy takes the same samples in all")
    ap.add_argument("--target", type=float, default=TARGET_LOSS, help="target held-out loss")
    ap.add_argument("--runs", default="ddp_unshaped,streaming_unshaped,ddp,ddp_powersgd,sync,diloco,streaming")
    ap.add_argument("--batch", type=int, default=BATCH,
                    help=f"per-worker batch of every run, DDP's included (default {BATCH}, the demo's)")
    ap.add_argument("--seeds", default="", metavar="S1,S2,...",
                    help=f"also run ddp and streaming on the links with these job seeds (every other run, "
                         f"and the headline ratios, use seed {SEED}); ~2.5 min per seed")
    opts = ap.parse_args(argv)
    try:
        extra_seeds = [int(x) for x in opts.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds: integers separated by commas, got {opts.seeds!r}")
    if opts.batch < 2:
        ap.error(f"--batch: at least 2 (the contrastive loss needs pairs), got {opts.batch}")
    if len(set(extra_seeds)) != len(extra_seeds):
        ap.error(f"--seeds: a seed named twice in {opts.seeds!r}")
    if SEED in extra_seeds:
        ap.error(f"--seeds: seed {SEED} is the main runs' own; name other seeds")
    logging.basicConfig(level=os.environ.get("SUANWANG_LOG_LEVEL", "WARNING"))
    import ray

    from suanwang.benchmarks.ddp import run_ddp, wan_counters
    from suanwang.runtime.job import EMBEDDED_RAY_SYSTEM_CONFIG
    from suanwang.runtime.wan.bridge import BridgedRoutes
    from suanwang.runtime.wan.emulator import WanEmulator, emulator_available

    wanted = [r.strip() for r in opts.runs.split(",") if r.strip()]
    runs: dict[str, dict[str, Any]] = {}
    seed_runs: dict[str, dict[str, Any]] = {}  # "<run>@<seed>": the --seeds repeats
    emulator: dict[str, Any] = {}
    names = [n for n, _ in CENTERS]
    ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING, namespace="suanwang-e2e",
             _system_config=EMBEDDED_RAY_SYSTEM_CONFIG)  # as a job's own cluster
    try:
        for name in [r for r in wanted if r.endswith("_unshaped")]:
            t0 = time.time()
            if name.startswith("ddp"):
                runs[name] = run_ddp(CENTERS, opts.steps, seed=SEED, batch_size=opts.batch, target_loss=opts.target,
                                     compile=COMPILE)
            else:
                runs[name] = run_ours(name, opts.steps, batch=opts.batch)
            print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
        shaped = [r for r in wanted if not r.endswith("_unshaped")]
        if shaped or extra_seeds:
            ok, why = emulator_available("tun")
            if not ok:
                print(f"shaped runs skipped: {why}", file=sys.stderr)
                shaped, extra_seeds = [], []
        if shaped or extra_seeds:
            links = [(a, b, RATE_MBIT, RTT_MS) for i, a in enumerate(names) for b in names[i + 1 :]]
            with WanEmulator(names, links, latency="tun") as emu:
                m = emu.measure(names[0], names[1], seconds=3.0)
                emulator = {
                    "rate_mbit": RATE_MBIT, "rtt_ms": RTT_MS,
                    "measured_rate_mbit": m["rate_mbit"], "measured_rtt_ms": m["rtt_ms"],
                }
                def counters() -> int:
                    return sum(wan_counters(emu, names).values())

                for name in shaped:
                    t0 = time.time()
                    if name == "ddp":
                        runs[name] = run_ddp(CENTERS, opts.steps, emu=emu, seed=SEED, batch_size=opts.batch,
                                             target_loss=opts.target, compile=COMPILE)
                    elif name == "ddp_powersgd":
                        runs[name] = run_ddp(CENTERS, opts.steps, emu=emu, seed=SEED, powersgd_rank=4,
                                             batch_size=opts.batch, target_loss=opts.target, compile=COMPILE)
                    else:
                        with BridgedRoutes(emu) as routes:
                            runs[name] = run_ours(name, opts.steps, routes, counters, batch=opts.batch)
                    print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
                for seed in extra_seeds:
                    t0 = time.time()
                    seed_runs[f"ddp@{seed}"] = run_ddp(CENTERS, opts.steps, emu=emu, seed=seed, batch_size=opts.batch,
                                                       target_loss=opts.target, compile=COMPILE)
                    with BridgedRoutes(emu) as routes:
                        seed_runs[f"streaming@{seed}"] = run_ours("streaming", opts.steps, routes, counters, seed=seed,
                                                                  batch=opts.batch)
                    print(f"seed {seed}: ddp and streaming done in {time.time() - t0:.0f} s", flush=True)
    finally:
        ray.shutdown()

    for r in [*runs.values(), *seed_runs.values()]:
        r["time_to_target_s"], r["wan_bytes_to_target"] = to_target(r["history"], opts.target)
    rows = []
    for name, r in runs.items():
        rows.append({
            "run": name,
            "to_target_s": r["time_to_target_s"],
            "wan_MB_to_target": None if r["wan_bytes_to_target"] is None else r["wan_bytes_to_target"] / 1e6,
            "final_loss": r["final_eval_loss"],
            "train_s": r["train_s"],
            "wan_MB": r["wan_bytes"] / 1e6,
            "util": r["utilization"],
            "peak_Mbit": r["peak_wan_mbit"],
        })
    print_table(rows, title=f"e2e: target held-out loss {opts.target}, samples of {opts.steps} DDP steps")
    ratios = _ratios(runs)
    for k, v in ratios.items():
        print(f"{k}: {v}")
    sweep = by_target(runs)
    if sweep:
        print_table(sweep, title="ddp over streaming, by target held-out loss")
    seeds = by_seed({**{f"{n}@{SEED}": r for n, r in runs.items() if n in ("ddp", "streaming")}, **seed_runs},
                    opts.target)
    if len(seeds) > 1:
        print_table(seeds, title=f"ddp over streaming on the links, by job seed (target {opts.target})")
        sp = spread(seed_time_ratios(seeds))
        print(f"time ratio over {sp['seeds']} seeds: median {_fmt(sp['median'])}, least {_fmt(sp['min'])}, "
              f"most {_fmt(sp['max'])}; streaming missed the target in {sp['missed']}")
    out = pathlib.Path(opts.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    note = _plot(runs, opts.target, png) if runs else "no runs"
    write_json(out, {
        "machine": machine_info(),
        "target_loss": opts.target,
        "steps_per_worker": opts.steps,
        "batch_per_worker": opts.batch,
        "compile": COMPILE,
        "centers": CENTERS,
        "emulator": emulator,
        "runs": runs,
        "ratios": ratios,
        "ddp_over_streaming_by_target": sweep,
        "ddp_over_streaming_by_seed": seeds,
        "time_ratio_over_seeds": spread(seed_time_ratios(seeds)) if seeds else None,
        "seed_runs": seed_runs,
        "plot": None if note else str(png),
        "notes": [n for n in [note, runs.get("ddp", {}).get("note")] if n],
    })
    print(f"wrote {out}" + ("" if note else f" and {png}"))
    return 0


SWEEP_TARGETS = (2.6, 2.2, 2.0, 1.8, 1.6, 1.5, 1.4, 1.3)


def samples_to_target(history: Sequence[dict[str, Any]], target: float) -> int | None:
    """Samples taken (all centers) by the first evaluation at or below ``target``."""
    return next((h["samples"] for h in history if h["eval_loss"] is not None and h["eval_loss"] <= target), None)


def by_seed(runs: dict[str, dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """``ddp`` over ``streaming`` for every job seed that has both runs (keys ``"ddp@<seed>"``,
    ``"streaming@<seed>"``): time and WAN bytes to ``target``, the samples each needed, and
    streaming's final loss over DDP's after equal samples. A run that never reached the
    target gives ``None`` ratios."""

    def ratio(x, y):
        return None if x is None or y is None or y <= 0 else x / y

    out = []
    seeds = sorted({int(k.split("@")[1]) for k in runs if k.startswith("ddp@")})
    for seed in seeds:
        d, s = runs.get(f"ddp@{seed}"), runs.get(f"streaming@{seed}")
        if d is None or s is None:
            continue
        (td, bd), (ts, bs) = to_target(d["history"], target), to_target(s["history"], target)
        out.append({
            "seed": seed,
            "ddp_s": td, "streaming_s": ts, "time_ratio": ratio(td, ts),
            "bytes_ratio": ratio(bd, bs),
            "ddp_samples": samples_to_target(d["history"], target),
            "streaming_samples": samples_to_target(s["history"], target),
            "ddp_final": d["final_eval_loss"], "streaming_final": s["final_eval_loss"],
            "final_ratio": ratio(s["final_eval_loss"], d["final_eval_loss"]),
        })
    return out


def seed_time_ratios(rows: Sequence[dict[str, Any]]) -> list[float | None]:
    """The time ratios of :func:`by_seed` rows for :func:`spread`: ``None`` where streaming
    missed the target (its worst case); a seed where DDP missed it, or with no ratio for
    another reason (a target at the initial loss), is left out."""
    out: list[float | None] = []
    for r in rows:
        if r["ddp_s"] is None:
            continue
        if r["streaming_s"] is None:
            out.append(None)
        elif r["time_ratio"] is not None:
            out.append(r["time_ratio"])
    return out


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, least and most of ``values`` over ``seeds`` of them; ``None`` (a run that
    missed the target) ranks below every ratio and is counted in ``missed``: a median that
    falls on a miss is ``None``, and so is the least ratio once any run missed."""
    missed = sum(v is None for v in values)
    ranked: list[float | None] = [None] * missed + sorted(v for v in values if v is not None)
    n = len(ranked)
    if n == 0:
        return {"seeds": 0, "median": None, "min": None, "max": None, "missed": 0}
    mid = ranked[n // 2 - 1 : n // 2 + 1] if n % 2 == 0 else [ranked[n // 2]]
    median = None if None in mid else sum(mid) / len(mid)
    return {"seeds": n, "median": median, "min": ranked[0], "max": ranked[-1], "missed": missed}


def by_target(runs: dict[str, dict[str, Any]], a: str = "ddp", b: str = "streaming") -> list[dict[str, Any]]:
    """``a`` over ``b`` in time and WAN bytes to each of :data:`SWEEP_TARGETS` that both
    reach: how much the headline ratio depends on the chosen target."""
    out = []
    if a not in runs or b not in runs:
        return out
    for t in SWEEP_TARGETS:
        (ta, ba), (tb, bb) = to_target(runs[a]["history"], t), to_target(runs[b]["history"], t)
        if ta is None or tb is None:
            continue
        out.append({"target": t, f"{a}_s": ta, f"{b}_s": tb, "time_ratio": ta / tb if tb else None,
                    "bytes_ratio": ba / bb if bb else None})
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def ratio(a, b, key):
        x, y = runs.get(a, {}).get(key), runs.get(b, {}).get(key)
        return None if not x or not y else x / y

    return {
        "ddp_shaped_over_unshaped_time": ratio("ddp", "ddp_unshaped", "time_to_target_s"),
        "ddp_over_streaming_time": ratio("ddp", "streaming", "time_to_target_s"),
        "streaming_shaped_over_unshaped_time": ratio("streaming", "streaming_unshaped", "time_to_target_s"),
        "ddp_over_streaming_wan_bytes": ratio("ddp", "streaming", "wan_bytes_to_target"),
        "streaming_final_loss_over_ddp": ratio("streaming", "ddp", "final_eval_loss"),
    }


if __name__ == "__main__":
    sys.exit(main())
