"""The ``suanwang`` command: ``run``, ``plan`` and ``bench``.

Flags are parsed in :func:`main` only, never at import time.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Sequence

import yaml

from suanwang.runtime.config import ConfigError, JobConfig, demo_config_path, load_config

log = logging.getLogger("suanwang")


def _load(path: str | None) -> JobConfig:
    return load_config(path or demo_config_path())


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


# ------------------------------------------------------------------ plan
def model_layout(cfg: JobConfig) -> list[tuple[int, str, tuple[int, ...]]]:
    """The flat layout of the config's model, as a job's workers lay it out: ``(config group,
    name, shape)`` per trainable parameter (see :mod:`suanwang.runtime.groups`). The model
    is built on the meta device: shapes only, no memory, however large the preset."""
    import torch

    from suanwang.models.clip import ClipConfig, ClipModel
    from suanwang.runtime.worker import layout_of

    with torch.device("meta"):
        model = ClipModel(ClipConfig.preset(cfg.model.size))
    return layout_of(model, cfg)


def _encoded_bytes(codec, numel: int, shape: tuple[int, ...] | None) -> float:
    """What ``codec`` sends for ``numel`` fp32 elements (a per-tensor codec: of that shape)."""
    plan = getattr(codec, "plan", None)
    if shape is not None and plan is not None:
        low = plan(shape)  # powersgd: (rows, cols, rank), or None to send it dense
        return 4.0 * ((low[0] + low[1]) * low[2] if low else numel)
    return numel * 4 / codec.estimate_ratio(numel)


def predict(cfg: JobConfig) -> dict:
    """Predicted WAN bytes and WAN time per round, from the declared links and the codecs
    of each tensor group (``codec``, ``codec_groups``; per-tensor codecs by each tensor's
    shape), over the model's real layout: a streaming round carries one fragment, cut at
    tensor boundaries as the job cuts it, and rounds take the fragments in turn.

    Per payload group: two-shot and ring move ``2 (n - 1) / n`` payloads per center, a gather
    ``n - 1``. WAN time per round on a link: every group's bytes at the link's rate, plus
    half round trips in a row (gather groups: one send and its ack, together; each two-shot
    group: two hops and the last ack; each ring group: ``2 (n - 1)`` steps, each waiting
    for its ack). ``payload_bytes`` and ``wan_bytes_per_round`` are the mean over the
    fragments, ``wan_s_per_round`` the slowest fragment's round.
    """
    from suanwang.runtime.compress import make_codec
    from suanwang.runtime.groups import cut_at_fragments, fragment_bounds, plan_groups
    from suanwang.runtime.topology import pick_schedule

    layout = model_layout(cfg)
    numel = sum(math.prod(shape) for _, _, shape in layout)
    st = cfg.strategy
    fragments = fragment_bounds(layout, st.fragments) if st.kind == "streaming" else [(0, numel)]
    specs = [cfg.codec] + [g.codec for g in cfg.codec_groups]
    # the payload groups, cut at fragment edges as the gateway cuts them
    plans = plan_groups(layout, cfg)
    pieces = [  # (start, stop, codec, shape)
        (a, b, make_codec("none") if g.dense else specs[g.config_index].build(), g.shape)
        for g, ranges in zip(plans, cut_at_fragments([g.numel for g in plans], fragments))
        for a, b in ranges
    ]
    n = len(cfg.centers)
    halves_of = {"gather": 2, "two_shot": 3, "ring": 4 * (n - 1)}
    per_round = []  # (payload bytes per center, WAN bytes per center, {link: seconds}, schedules)
    for a, b in fragments:
        payload = sent = 0.0
        bits_share = 0.0  # bytes crossing one link, summed over the groups
        halves, gathered, schedules = 0, False, set()
        for lo, hi, codec, shape in pieces:
            if not (a <= lo and hi <= b):
                continue
            size = _encoded_bytes(codec, hi - lo, shape)
            schedule = pick_schedule(cfg.wan.schedule, codec.kind, n, shape is not None)
            schedules.add(schedule)
            payload += size
            sent += size * (n - 1 if schedule == "gather" else 2 * (n - 1) / n)
            bits_share += size * (1.0 if schedule == "gather" else 2 / n if schedule == "two_shot" else 2 * (n - 1) / n)
            if schedule == "gather":
                gathered = True  # every gather group of a round goes in one batch
            else:
                halves += halves_of[schedule]
        halves += halves_of["gather"] if gathered else 0
        link_s = {
            "<->".join(sorted(link.between)): bits_share * 8 / (link.bandwidth_mbit * 1e6) + halves * link.rtt_ms / 2e3
            for link in cfg.links
        }
        per_round.append((payload, sent, link_s, schedules))
    schedules = set().union(*(r[3] for r in per_round))
    total = sum(per_round[r % len(per_round)][1] * n for r in range(cfg.rounds))
    return {
        "parameters": numel,
        "schedule": schedules.pop() if len(schedules) == 1 else "mixed",
        "payload_bytes": int(sum(r[0] for r in per_round) / len(per_round)),
        "wan_bytes_per_round": int(sum(r[1] for r in per_round) * n / len(per_round)),
        "wan_s_per_round": max((max(r[2].values(), default=0.0) for r in per_round), default=0.0),
        "rounds": cfg.rounds,
        "wan_bytes_total": int(total),
    }


def measured_links(cfg: JobConfig) -> dict:
    """The links as the gateways measured them in this job's last run (``result.json`` in
    its output dir), or ``{}``."""
    import json

    path = cfg.job.resolved_output_dir / "result.json"
    try:
        links = json.loads(path.read_text()).get("links", {})
    except (OSError, ValueError):
        return {}
    return {k: v["measured"] for k, v in links.items() if v.get("measured")}


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    measured = measured_links(cfg)
    if measured:
        print(f"\n# links as measured by the gateways in the last run ({cfg.job.resolved_output_dir / 'result.json'}):")
        for key, m in sorted(measured.items()):
            link = cfg.link(*key.split("<->"))
            rate = m.get("transfer_mbit") or m.get("probe_mbit")
            print(
                f"#   {key}: declared {link.bandwidth_mbit:g} Mbit/s {link.rtt_ms:g} ms; measured "
                f"RTT {m['rtt_ms']:.2f} ms, {rate:.0f} Mbit/s ({'transfers' if m.get('transfer_mbit') else 'probes'})"
            )
    try:
        p = predict(cfg)
    except ValueError as err:  # a layout the config does not fit (more fragments than tensors, say)
        print(f"suanwang: {err}", file=sys.stderr)
        return 2
    mean = f" (mean over {cfg.strategy.fragments} fragments)" if cfg.strategy.kind == "streaming" else ""
    print(
        f"\n# prediction: {p['parameters']:,} parameters, {p['rounds']} rounds, "
        f"{_mb(p['payload_bytes'])} MB payload per center per round{mean} ({p['schedule']} schedule),\n"
        f"#   {_mb(p['wan_bytes_per_round'])} MB on the WAN per round "
        f"({_mb(p['wan_bytes_total'])} MB in all), "
        f"at least {p['wan_s_per_round']:.3f} s of WAN time in {'the slowest' if mean else 'a'} round "
        f"on the declared links"
    )
    return 0


# ------------------------------------------------------------------ run
def _progress(rec) -> None:
    cells = " | ".join(
        f"{name} step {c['steps']} loss {c['loss']:.3f} wan {_mb(c['wan_bytes_sent'])}MB"
        for name, c in rec.centers.items()
    )
    ev = f" eval {rec.eval_loss:.3f}" if rec.eval_loss is not None else ""
    out = f"[{rec.time_s:7.1f}s] round {rec.round + 1}{ev} | {cells}"
    if rec.excluded:
        out += f" | left out: {rec.excluded}"
    print(out, flush=True)


def _summary(result) -> str:
    rows = [("center", "workers", "samples", "compute_s", "wait_s", "wan_MB_sent")]
    for name, c in result.centers.items():
        rows.append((name, str(c.workers), str(c.samples), f"{c.compute_s:.1f}", f"{c.wait_s:.1f}", _mb(c.wan_bytes_sent)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.append("")
    for key, link in result.links.items():
        lines.append(f"link {key}: {_mb(link['bytes'])} MB")
    lines.append(
        f"rounds {result.rounds}, wall {result.wall_s:.1f} s, WAN {_mb(result.wan_bytes)} MB, "
        f"held-out loss {result.initial_eval_loss:.3f} -> {result.final_eval_loss:.3f}, "
        f"parameters agree: {result.params_agree}"
    )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from suanwang.launch.demo import demo_functions
    from suanwang.runtime.job import Job

    cfg = _load(args.config)
    if cfg.wan.insecure:
        print("WARNING: insecure run: gateways use plaintext gRPC (wan.insecure: true)", file=sys.stderr)
    job = Job(cfg, demo_functions(cfg), resume=args.resume)
    print(
        f"suanwang: job {cfg.job.name}: {len(cfg.centers)} centers "
        f"({', '.join(f'{c.name}x{c.workers} {c.device}' for c in cfg.centers)}), "
        f"strategy {cfg.strategy.kind}, codec {cfg.codec.kind}, {cfg.rounds} rounds",
        flush=True,
    )
    try:
        result = job.run(on_round=None if args.quiet else _progress)
    except KeyboardInterrupt:
        print("\nsuanwang: interrupted; every center was stopped", file=sys.stderr)
        return 130
    print(_summary(result))
    out_dir = cfg.job.resolved_output_dir
    result.write_json(out_dir / "result.json")
    print(f"wrote {out_dir / 'result.json'}")
    if args.json:
        result.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


# ------------------------------------------------------------------ certs
def cmd_certs(args: argparse.Namespace) -> int:
    from suanwang.runtime.wan.tls import make_dev_ca

    cfg = _load(args.config)
    files = make_dev_ca(args.out, [c.name for c in cfg.centers], days=args.days)
    for name in sorted(files):
        print(f"wrote {files[name]}")
    out = args.out.rstrip("/")
    print(
        "\n# development certificates only; put this in the launch config:\n"
        f"wan:\n  insecure: false\n  tls: {{ca: {out}/ca.pem, cert: '{out}/{{center}}.pem', "
        f"key: '{out}/{{center}}.key'}}"
    )
    return 0


# ------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    try:
        mod = importlib.import_module(f"suanwang.benchmarks.{args.which}")
    except ModuleNotFoundError:
        print(f"suanwang bench: no benchmark {args.which!r}", file=sys.stderr)
        return 2
    return int(mod.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="suanwang", description="Train one model across compute centers.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job embedded on this machine (default: the demo)")
    run.add_argument("config", nargs="?", help="launch config (YAML); default: the packaged demo")
    run.add_argument("--json", metavar="PATH", help="write the result as JSON")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in checkpoint.dir")
    run.set_defaults(func=cmd_run)
    plan = sub.add_parser("plan", help="validate a config, print it resolved, predict WAN cost")
    plan.add_argument("config", nargs="?", help="launch config (YAML); default: the packaged demo")
    plan.set_defaults(func=cmd_plan)
    certs = sub.add_parser("certs", help="make a development CA and a certificate per center")
    certs.add_argument("config", nargs="?", help="launch config (YAML); default: the packaged demo")
    certs.add_argument("--out", required=True, help="directory to write PEM files into")
    certs.add_argument("--days", type=int, default=30, help="validity in days")
    certs.set_defaults(func=cmd_certs)
    bench = sub.add_parser("bench", help="run a benchmark: codecs, wan, ddp or e2e (each takes --help)")
    bench.add_argument("which", help="codecs | wan | ddp | e2e")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("SUANWANG_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"suanwang: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
