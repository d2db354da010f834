"""End-to-end: time and WAN bytes to a target held-out loss, strategies against DDP.

Three centers (2, 1 and 1 workers: the demo's shape) joined by emulated links of 100 Mbit/s
and 40 ms RTT (:class:`~suanwang.runtime.wan.emulator.WanEmulator`). Every run trains the
demo model on the same per-worker shards with the same seed, batch and inner optimizer for
the same number of steps per worker, so "final loss after equal samples" compares like with
like. Runs:

* ``ddp``, ``ddp_powersgd``: plain PyTorch DDP (gloo) over all workers of all centers, its
  gradient traffic crossing the shaped links (:mod:`suanwang.benchmarks.ddp`; it pays the
  link rate but not the RTT, which favours it);
* ``sync``, ``diloco``, ``streaming``: suanwang's strategies (int8 codec), gateways bridged
  into the emulator (:class:`~suanwang.runtime.wan.bridge.BridgedRoutes`): shaped, delayed;
* ``ddp_unshaped``, ``streaming_unshaped``: the same on loopback, no WAN.

Times exclude evaluation pauses and start-up (training time from the first step). WAN bytes
for DDP are the kernel's veth counters; for suanwang runs the gateways' counts of the gRPC
messages they sent (the kernel's total for the run is reported beside them).
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
STRATEGIES: dict[str, dict[str, Any]] = {
    "sync": {"kind": "sync"},
    "diloco": {"kind": "diloco", "inner_steps": 10, "outer_lr": 0.7, "outer_momentum": 0.9},
    "streaming": {
        "kind": "streaming", "inner_steps": 30, "fragments": 3, "overlap": 1, "mix": 0.5,
        "outer_lr": 0.7, "outer_momentum": 0.9,
    },
}


def _config(strategy: dict[str, Any], steps: int, eval_every_rounds: int):
    import yaml

    from suanwang.runtime import parse_config
    from suanwang.runtime.config import demo_config_path

    d = yaml.safe_load(demo_config_path().read_text())
    d["centers"] = [{"name": n, "workers": w} for n, w in CENTERS]
    d["links"] = [
        {"between": [a, b], "bandwidth_mbit": RATE_MBIT, "rtt_ms": RTT_MS}
        for i, (a, _) in enumerate(CENTERS) for b, _ in CENTERS[i + 1 :]
    ]
    d["strategy"] = strategy
    d["codec"] = {"kind": "int8"}
    d["train"] = {"steps": steps, "eval_every_rounds": eval_every_rounds}
    d["checkpoint"] = {"every_rounds": 0}
    d["job"] = {"name": "e2e", "output_dir": "/tmp/suanwang-e2e"}
    return parse_config(d, environ={})


def run_ours(name: str, steps: int, routes=None, counters=None, eval_points: int = 15) -> dict[str, Any]:
    """One suanwang run; ``counters()`` returns the kernel's WAN byte count (or None)."""
    from suanwang.launch.demo import demo_functions
    from suanwang.runtime import Job

    strat = STRATEGIES[name.removesuffix("_unshaped")]
    probe = _config(strat, steps, 1)
    eval_every = max(1, probe.rounds // eval_points)
    cfg = _config(strat, steps, eval_every)
    samples_per_round = {c.name: cfg.data.batch_size * c.workers * cfg.center_inner_steps(c.name) for c in cfg.centers}
    history: list[dict[str, Any]] = []
    state = {"eval_s": 0.0, "samples": 0, "peak": 0.0}
    k0 = counters() if counters else None

    def on_round(rec) -> None:
        state["eval_s"] += rec.eval_s
        state["samples"] += sum(samples_per_round[c] for c in rec.participants)
        if rec.round_s > 0:
            for nbytes in rec.link_bytes.values():
                state["peak"] = max(state["peak"], nbytes * 8 / rec.round_s / 1e6)
        if rec.eval_loss is not None:
            history.append({
                "train_s": rec.time_s - state["eval_s"],
                "samples": state["samples"],
                "eval_loss": rec.eval_loss,
                "wan_bytes": rec.wan_bytes,
            })

    res = Job(cfg, demo_functions(cfg), routes=routes).run(on_round=on_round)
    train_s = history[-1]["train_s"] if history else float("nan")
    util = min(c.compute_s / train_s for c in res.centers.values()) if history else float("nan")
    return {
        "history": [{"train_s": 0.0, "samples": 0, "eval_loss": res.initial_eval_loss, "wan_bytes": 0}, *history],
        "train_s": train_s,
        "final_eval_loss": res.final_eval_loss,
        "initial_eval_loss": res.initial_eval_loss,
        "wan_bytes": res.wan_bytes,
        "wan_bytes_kernel": (counters() - k0) if counters else 0,
        "samples": state["samples"],
        "utilization": util,
        "peak_wan_mbit": state["peak"],
        "params_agree": res.params_agree,
        "rounds": res.rounds,
    }


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
    ap.add_argument("--steps", type=int, default=300, help="inner steps per worker (equal samples)")
    ap.add_argument("--target", type=float, default=2.6, help="target held-out loss")
    ap.add_argument("--runs", default="ddp_unshaped,streaming_unshaped,ddp,ddp_powersgd,sync,diloco,streaming")
    opts = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SUANWANG_LOG_LEVEL", "WARNING"))
    import ray

    from suanwang.benchmarks.ddp import run_ddp, wan_counters, wan_interfaces
    from suanwang.runtime.wan.bridge import BridgedRoutes
    from suanwang.runtime.wan.emulator import WanEmulator, emulator_available

    wanted = [r.strip() for r in opts.runs.split(",") if r.strip()]
    runs: dict[str, dict[str, Any]] = {}
    emulator: dict[str, Any] = {}
    names = [n for n, _ in CENTERS]
    ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING, namespace="suanwang-e2e")
    try:
        for name in [r for r in wanted if r.endswith("_unshaped")]:
            t0 = time.time()
            if name.startswith("ddp"):
                runs[name] = run_ddp(CENTERS, opts.steps, target_loss=opts.target)
            else:
                runs[name] = run_ours(name, opts.steps)
            print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
        shaped = [r for r in wanted if not r.endswith("_unshaped")]
        if shaped:
            ok, why = emulator_available()
            if not ok:
                print(f"shaped runs skipped: {why}", file=sys.stderr)
                shaped = []
        if shaped:
            links = [(a, b, RATE_MBIT, RTT_MS) for i, a in enumerate(names) for b in names[i + 1 :]]
            with WanEmulator(names, links) as emu:
                m = emu.measure(names[0], names[1], seconds=1.5)
                emulator = {
                    "rate_mbit": RATE_MBIT, "rtt_ms": RTT_MS,
                    "measured_rate_mbit": m["rate_mbit"], "measured_rtt_ms": m["rtt_ms"],
                }
                ifaces = wan_interfaces(emu, names)

                def counters() -> int:
                    return sum(wan_counters(emu, ifaces).values())

                for name in shaped:
                    t0 = time.time()
                    if name == "ddp":
                        runs[name] = run_ddp(CENTERS, opts.steps, emu=emu, target_loss=opts.target)
                    elif name == "ddp_powersgd":
                        runs[name] = run_ddp(CENTERS, opts.steps, emu=emu, powersgd_rank=4, target_loss=opts.target)
                    else:
                        with BridgedRoutes(emu) as routes:
                            runs[name] = run_ours(name, opts.steps, routes, counters)
                    print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    finally:
        ray.shutdown()

    for r in runs.values():
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
    print_table(rows, title=f"e2e: target held-out loss {opts.target}, {opts.steps} steps per worker")
    ratios = _ratios(runs)
    for k, v in ratios.items():
        print(f"{k}: {v}")
    out = pathlib.Path(opts.json)
    png = out.with_suffix(".png")
    note = _plot(runs, opts.target, png) if runs else "no runs"
    write_json(out, {
        "machine": machine_info(),
        "target_loss": opts.target,
        "steps_per_worker": opts.steps,
        "centers": CENTERS,
        "emulator": emulator,
        "runs": runs,
        "ratios": ratios,
        "plot": None if note else str(png),
        "notes": [n for n in [note, runs.get("ddp", {}).get("note")] if n],
    })
    print(f"wrote {out}" + ("" if note else f" and {png}"))
    return 0


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
