"""The ``suanwang`` command: ``run``, ``plan`` and ``bench``.

Flags are parsed in :func:`main` only, never at import time.
"""

from __future__ import annotations

import argparse
import logging
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
def predict(cfg: JobConfig) -> dict:
    """Predicted WAN bytes and WAN time per round, from the declared links and the default
    codec: two-shot and ring move ``2 (n - 1) / n`` payloads per center, a gather ``n - 1``.
    A streaming round carries one fragment (taken as ``1 / fragments`` of the model).
    """
    from suanwang.models.clip import ClipConfig
    from suanwang.runtime.topology import pick_schedule

    numel = ClipConfig.preset(cfg.model.size).param_count()
    st = cfg.strategy
    fragments = st.fragments if st.kind == "streaming" else 1
    codec = cfg.codec.build()
    payload = numel / fragments * 4 / codec.estimate_ratio(numel // fragments)
    n = len(cfg.centers)
    schedule = pick_schedule(cfg.wan.schedule, codec.kind, n)
    per_center = payload * (n - 1 if schedule == "gather" else 2 * (n - 1) / n)
    # half round trips in a row (gather: send, ack; two-shot: two hops, the last ack; ring:
    # each of its 2 (n - 1) steps waits for its ack) and the share of a payload per link
    halves, share = {"gather": (2, 1.0), "two_shot": (3, 2 / n), "ring": (4 * (n - 1), 2 * (n - 1) / n)}[schedule]
    per_link_s = {
        "<->".join(sorted(link.between)): share * payload * 8 / (link.bandwidth_mbit * 1e6)
        + halves * link.rtt_ms / 2e3
        for link in cfg.links
    }
    return {
        "parameters": numel,
        "schedule": schedule,
        "payload_bytes": int(payload),
        "wan_bytes_per_round": int(per_center * n),
        "wan_s_per_round": max(per_link_s.values(), default=0.0),
        "rounds": cfg.rounds,
        "wan_bytes_total": int(per_center * n * cfg.rounds),
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
    p = predict(cfg)
    print(
        f"\n# prediction: {p['parameters']:,} parameters, {p['rounds']} rounds, "
        f"{_mb(p['payload_bytes'])} MB payload per center per round ({p['schedule']} schedule),\n"
        f"#   {_mb(p['wan_bytes_per_round'])} MB on the WAN per round "
        f"({_mb(p['wan_bytes_total'])} MB in all), "
        f"at least {p['wan_s_per_round']:.3f} s of WAN time per round on the declared links"
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
