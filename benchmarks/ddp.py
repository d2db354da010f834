"""Plain-PyTorch DDP baselines for the end-to-end benchmark, on the same emulated WAN.

``run_ddp(centers, steps, emu=...)`` trains the demo job (CLIP, tiny by default, on the
digits pairs; the same per-worker data shards, seed, batch and inner AdamW as the runtime's
workers) with ``torch.nn.parallel.DistributedDataParallel`` on gloo over *every* worker of *every*
center, one process per worker (:mod:`suanwang.benchmarks.ddp_worker`): each step
all-reduces the full gradient across the WAN. With ``powersgd_rank`` the gradients go
through PyTorch's PowerSGD communication hook instead. This is the baseline the runtime's
strategies are held against: what you get by stretching one DDP job over the centers.

Placement. With an emulator in packet mode (``WanEmulator(..., latency="tun")``, what the
module's own runs and ``suanwang bench e2e`` use), each worker runs inside its center's
network namespace (``emu.popen``); gloo binds to the center's emulator address
(``GLOO_SOCKET_IFNAME`` set to ``emu.interface(center)``) and rank 0's TCPStore listens
there, so every cross-center gloo packet pays the link rate *and* rtt/2 each way, while
traffic between workers of one center stays on the namespace's loopback. Under the relay
mode (``latency="relay"``) gloo, which dials peers directly, would see the rate but not the
delay; results then say so in their ``note``. Without an emulator (the "unshaped" control)
the workers are plain processes on 127.0.0.1 and there is no WAN.

What is measured (all on rank 0's clock unless said):

* ``history``: at step 0, every ``eval_every`` steps and at the last step, all ranks stop
  at a barrier, rank 0 evaluates the held-out loss and the parent reads the emulator's byte
  counters; ``train_s`` excludes those pauses (training time only).
* WAN bytes are counted, not estimated: :meth:`WanEmulator.link_bytes` of every link
  direction between two of the run's centers, read at each eval point (IP packets the packet
  delayer delivered, or the veths' ``tx_bytes`` in relay mode), so they include TCP/IP
  headers and the ACKs flowing back. ``wan_bytes``
  counts from the step-0 eval point (after gloo connected and DDP broadcast the initial
  parameters, which ``wan_bytes_setup`` counts) to the last one.
* ``utilization``: the time a step takes when communication is free, over the time a
  training step took (``train_s / steps``). The first is measured before training: every
  rank runs 20 steps of the same model, data and optimizer with no communication, all at
  once (sharing the CPUs as in training), barrier to barrier (see the worker). Per worker,
  ``workers`` also lists its own compute-only and training step means.

Run ``python -m suanwang.benchmarks.ddp [--shaped] [--steps N] [--powersgd-rank R]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from suanwang.benchmarks.common import close_pipes, format_table, reap, write_json
from suanwang.benchmarks.ddp_worker import MODULE as WORKER_MODULE
from suanwang.models.clip import ClipConfig
from suanwang.runtime.wan.emulator import WanEmulator

__all__ = ["DdpError", "main", "ring_bytes_per_step", "run_ddp", "wan_counters"]

NOTE_SHAPED = "every gloo packet between centers pays the emulated link rate and rtt/2"
NOTE_RELAY = ("relay-mode emulator: gloo pays the link rate but not the RTT (it dials peers "
              "directly, bypassing the delaying relay); this favours DDP")
NOTE_UNSHAPED = "unshaped control: every worker on 127.0.0.1, no WAN (0 WAN bytes)"
DEMO_CENTERS = [("shenzhen", 2), ("wuhan", 1), ("xian", 1)]
DEMO_LINK = (100, 40)  # Mbit/s, ms


class DdpError(RuntimeError):
    """A worker failed, or the run did not finish in time."""


class _Worker:
    def __init__(self, rank: int, center: str, proc: subprocess.Popen, log: Any):
        self.rank, self.center, self.proc, self.log = rank, center, proc, log
        self.buf = b""
        self.eof = False
        self.done: dict[str, Any] | None = None

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as err:
            raise DdpError(f"rank {self.rank} ({self.center}): {err}{self.stderr_tail()}") from None

    def stderr_tail(self) -> str:
        try:
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""
        return f"\n--- rank {self.rank} stderr ---\n{tail}" if tail.strip() else ""

    def stop(self) -> None:
        """Close its pipes, then TERM, then KILL; always reaps."""
        close_pipes(self.proc)
        if self.proc.poll() is None:
            reap(self.proc)
        self.log.close()


def _next_message(workers: Sequence[_Worker], deadline: float) -> tuple[_Worker, dict[str, Any]]:
    """The next JSON line any worker prints.

    Raises:
        DdpError: a worker exited without reporting ``done`` or failed, or ``deadline``
            (``time.monotonic``) passed.
    """
    while True:
        for w in workers:
            if b"\n" in w.buf:
                line, w.buf = w.buf.split(b"\n", 1)
                return w, json.loads(line)
        for w in workers:
            if w.eof and w.done is None:
                raise DdpError(f"rank {w.rank} ({w.center}) exited ({w.proc.wait()}) before "
                               f"finishing{w.stderr_tail()}")
        live = {w.proc.stdout.fileno(): w for w in workers if not w.eof}
        left = deadline - time.monotonic()
        if left <= 0:
            raise DdpError(f"timed out{workers[0].stderr_tail()}")
        ready, _, _ = select.select(list(live), [], [], min(left, 1.0))
        for fd in ready:
            w = live[fd]
            chunk = os.read(fd, 65536)
            w.buf += chunk
            w.eof = not chunk


# ---------------------------------------------------------------------- WAN counters
def wan_counters(emu: WanEmulator, names: Sequence[str]) -> dict[str, int]:
    """Bytes carried so far by each emulated link direction between two of ``names``,
    keyed ``src->dst`` (:meth:`WanEmulator.link_bytes`)."""
    inside = set(names)
    return {k: v for k, v in emu.link_bytes().items() if set(k.split("->")) <= inside}


# ---------------------------------------------------------------------- the run
def _validate(centers: Sequence[tuple[str, int]], steps: int, eval_every: int,
              powersgd_rank: int | None, emu: WanEmulator | None) -> None:
    names = [c for c, _ in centers]
    if not centers:
        raise ValueError("centers: need at least one (name, workers)")
    if len(set(names)) != len(names):
        raise ValueError(f"centers: duplicate names in {names}")
    for name, n in centers:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"centers[{name!r}]: workers must be an int >= 1, got {n!r}")
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if eval_every < 1:
        raise ValueError(f"eval_every: must be >= 1, got {eval_every}")
    if powersgd_rank is not None and powersgd_rank < 1:
        raise ValueError(f"powersgd_rank: must be >= 1 or None, got {powersgd_rank}")
    if emu is not None:
        for a, b in itertools.combinations(names, 2):
            emu.link(a, b)  # KeyError names the pair: gloo needs a full mesh


def run_ddp(
    centers: list[tuple[str, int]],
    steps: int,
    *,
    emu: WanEmulator | None = None,
    powersgd_rank: int | None = None,
    seed: int = 0,
    model_size: str = "tiny",
    batch_size: int = 32,
    eval_every: int = 10,
    target_loss: float | None = None,
    timeout_s: float = 600,
    compile: bool = False,
) -> dict[str, Any]:
    """Train the demo job with DDP over every worker of every center (see the module doc).

    Args:
        centers: ``[(center name, workers)]``; global ranks go by center, then local rank.
        steps: optimizer steps (every worker takes each step).
        emu: a started :class:`WanEmulator` holding every named center, with a link between
            each pair; ``None`` runs unshaped on loopback.
        powersgd_rank: use the PowerSGD hook at this rank (vanilla all-reduce for the first
            2 steps, as the hook does); ``None`` for the plain all-reduce.
        seed: the job seed (model init, data split, batch order).
        model_size: the ClipConfig preset (the runtime's ``model.size``).
        batch_size: per-worker batch (the runtime's ``data.batch_size``).
        eval_every: steps between held-out evaluations (step 0 and the last are always).
        target_loss: report when the held-out loss first reaches it.
        timeout_s: bound on the whole run, process start to exit.
        compile: ``torch.compile`` every worker's model (the runtime's ``train.compile``),
            before the training clock starts.

    Returns:
        ``history`` (a list of ``{train_s, step, samples, eval_loss, wan_bytes}``),
        ``wall_s`` (rank 0, first step to the end, eval pauses included), ``train_s``,
        ``startup_s``, ``initial_eval_loss``, ``final_eval_loss``, ``wan_bytes``,
        ``wan_bytes_per_link``, ``wan_bytes_setup``, ``wan_bytes_per_step``, ``samples``,
        ``utilization`` (``compute_step_s``, a compute-only step of all ranks at once, over
        the mean training step), ``workers`` (per rank: compute_s, step_s, utilization),
        ``time_to_target_s``, ``wan_bytes_to_target``, ``steps_to_target`` (None if not
        reached or no target), ``peak_wan_mbit`` (largest rate between two samples, over
        training time, all links together), ``peak_link_mbit`` (the same for the busiest
        link direction), ``steady_wan_bytes_per_step`` (from the first eval point at step
        >= 2 to the last; None if there is no such pair), ``param_count``, ``note`` and the
        run's settings.

    Raises:
        ValueError: bad arguments, or a pair of centers with no emulated link.
        KeyError: a center the emulator does not have.
        DdpError: a worker failed or the run took longer than ``timeout_s``.
    """
    _validate(centers, steps, eval_every, powersgd_rank, emu)
    if model_size not in ClipConfig.PRESETS:
        raise ValueError(f"model_size: {model_size!r} is not one of {sorted(ClipConfig.PRESETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    names = [c for c, _ in centers]
    world = sum(n for _, n in centers)
    deadline = time.monotonic() + timeout_s
    if emu is not None and len(names) > 1:
        store_host = emu.address(names[0])
        ifname = {c: emu.interface(c) for c in names}
        counters = lambda: wan_counters(emu, names)  # noqa: E731
    else:  # no WAN: one center alone has only its loopback
        store_host, ifname = "127.0.0.1", {c: "lo" for c in names}
        counters = dict

    workers: list[_Worker] = []
    t_spawn = t_train0 = time.monotonic()
    try:
        before = counters()
        rank = 0
        for ci, (center, n) in enumerate(centers):
            for local in range(n):
                argv = [sys.executable, "-m", WORKER_MODULE, "--rank", str(rank), "--world", str(world),
                        "--center", center, "--center-index", str(ci), "--num-centers", str(len(centers)),
                        "--local-rank", str(local), "--local-workers", str(n), "--steps", str(steps),
                        "--seed", str(seed), "--eval-every", str(eval_every),
                        "--model-size", model_size, "--batch-size", str(batch_size),
                        "--store-host", store_host, "--gloo-ifname", ifname[center],
                        "--timeout-s", str(timeout_s)]
                if powersgd_rank is not None:
                    argv += ["--powersgd-rank", str(powersgd_rank)]
                if compile:
                    argv.append("--compile")
                log = tempfile.NamedTemporaryFile("w+", prefix=f"ddp-{center}-{rank}-", suffix=".log")
                kw: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
                try:
                    proc = emu.popen(center, argv, **kw) if emu is not None else subprocess.Popen(argv, **kw)
                except BaseException:
                    log.close()
                    raise
                workers.append(_Worker(rank, center, proc, log))
                rank += 1

        history: list[dict[str, Any]] = []
        samples: list[dict[str, int]] = []
        base: dict[str, int] = {}
        while any(w.done is None for w in workers):
            w, msg = _next_message(workers, deadline)
            event = msg.get("event")
            if event == "store":
                for other in workers[1:]:
                    other.send({"store_port": msg["port"]})
            elif event == "eval":
                now = counters()
                if msg["step"] == 0:
                    base = now
                    t_train0 = time.monotonic()
                samples.append(now)
                history.append({
                    "train_s": msg["train_s"], "step": msg["step"], "samples": msg["samples"],
                    "eval_loss": msg["eval_loss"],
                    "wan_bytes": sum(now.values()) - sum(base.values()),
                })
                w.send({"go": True})
            elif event == "done":
                w.done = msg
            else:
                raise DdpError(f"rank {w.rank}: unexpected message {msg}")
        for w in workers:
            try:
                w.proc.wait(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise DdpError(f"rank {w.rank} did not exit after finishing") from None
            if w.proc.returncode != 0:
                raise DdpError(f"rank {w.rank} exited {w.proc.returncode}{w.stderr_tail()}")
        per_worker = [w.done for w in workers]
    finally:
        for w in workers:
            w.stop()
    res = _summarise(centers, steps, emu, powersgd_rank, seed, eval_every, target_loss,
                     history, samples, before, per_worker, t_train0 - t_spawn, compile)
    res.update(model_size=model_size, batch_size=batch_size,
               param_count=ClipConfig.preset(model_size).param_count())
    return res


def _summarise(centers, steps, emu, powersgd_rank, seed, eval_every, target_loss, history,
               samples, before, per_worker, startup_s, compiled) -> dict[str, Any]:
    last, first = history[-1], history[0]
    rank0 = per_worker[0]
    reached = next((h for h in history if target_loss is not None and h["eval_loss"] <= target_loss), None)
    peak = 0.0
    for a, b in zip(history, history[1:]):
        dt = b["train_s"] - a["train_s"]
        if dt > 0:
            peak = max(peak, (b["wan_bytes"] - a["wan_bytes"]) * 8 / 1e6 / dt)
    base, end = (samples[0], samples[-1]) if samples else ({}, {})
    peak_link = 0.0
    for (ha, sa), (hb, sb) in zip(zip(history, samples), zip(history[1:], samples[1:])):
        dt = hb["train_s"] - ha["train_s"]
        if dt > 0:
            peak_link = max([peak_link, *((sb[k] - sa.get(k, 0)) * 8 / 1e6 / dt for k in sb)])
    # Steady state: from the first eval point at or after step 2 (DDP rebuilds its buckets
    # after step 1; PowerSGD runs plain all-reduce for its first 2 steps) to the last.
    after = next((h for h in history if h["step"] >= 2), None)
    steady = ((last["wan_bytes"] - after["wan_bytes"]) / (last["step"] - after["step"])
              if after is not None and after is not last else None)
    workers = [{"rank": i, "center": d["center"], "compute_s": d["compute_s"], "step_s": d["step_s"],
                "utilization": d["compute_s"] / d["step_s"]} for i, d in enumerate(per_worker)]
    shaped = emu is not None and len(centers) > 1
    links = []
    if shaped:
        for a, b in itertools.combinations([c for c, _ in centers], 2):
            ln = emu.link(a, b)
            links.append({"between": [a, b], "rate_mbit": ln.rate_mbit, "rtt_ms": ln.rtt_ms})
    return {
        "mode": "shaped" if shaped else "unshaped",
        "centers": [list(c) for c in centers],
        "world_size": len(per_worker),
        "steps": steps,
        "powersgd_rank": powersgd_rank,
        "compile": compiled,
        "seed": seed,
        "eval_every": eval_every,
        "links": links,
        "history": history,
        "wall_s": rank0["wall_s"],
        "train_s": last["train_s"],
        "startup_s": startup_s,
        "initial_eval_loss": first["eval_loss"],
        "final_eval_loss": last["eval_loss"],
        "wan_bytes": last["wan_bytes"],
        "wan_bytes_per_link": {k: end[k] - base.get(k, 0) for k in sorted(end)},
        "wan_bytes_setup": sum(base.values()) - sum(before.values()),
        "wan_bytes_per_step": last["wan_bytes"] / steps,
        "steady_wan_bytes_per_step": steady,
        "samples": last["samples"],
        "utilization": rank0["group_compute_s"] / (last["train_s"] / steps),
        "compute_step_s": rank0["group_compute_s"],
        "workers": workers,
        "target_loss": target_loss,
        "time_to_target_s": reached["train_s"] if reached else None,
        "wan_bytes_to_target": reached["wan_bytes"] if reached else None,
        "steps_to_target": reached["step"] if reached else None,
        "peak_wan_mbit": peak,
        "peak_link_mbit": peak_link,
        "note": (NOTE_SHAPED if emu.latency == "tun" else NOTE_RELAY) if shaped else NOTE_UNSHAPED,

    }


# ---------------------------------------------------------------------- demo
def ring_bytes_per_step(centers: Sequence[tuple[str, int]], payload_bytes: int) -> float:
    """Payload bytes a ring all-reduce over ranks in order puts on the WAN per step.

    Each of the ``n`` ranks sends ``2 (n - 1) / n`` of the payload to its ring neighbour;
    the ring ``0 -> 1 -> ... -> n-1 -> 0`` crosses a center boundary once per center (when
    there are several), so the WAN carries ``centers * 2 (n - 1) / n * payload``.
    """
    n = sum(w for _, w in centers)
    hops = len(centers) if len(centers) > 1 else 0
    return hops * 2 * (n - 1) / n * payload_bytes


def _row(label: str, r: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": label, "steps": r["steps"], "wall_s": r["wall_s"], "train_s": r["train_s"],
        "ms/step": 1e3 * r["train_s"] / r["steps"], "loss0": r["initial_eval_loss"],
        "loss": r["final_eval_loss"], "WAN MB": r["wan_bytes"] / 1e6,
        "KB/step": r["wan_bytes_per_step"] / 1e3,
        "steady KB/step": None if r["steady_wan_bytes_per_step"] is None else r["steady_wan_bytes_per_step"] / 1e3,
        "peak Mbit/s": r["peak_wan_mbit"], "link peak": r["peak_link_mbit"],
        "util": r["utilization"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m suanwang.benchmarks.ddp", description=__doc__.split("\n")[0])
    p.add_argument("--shaped", action="store_true",
                   help=f"3 centers {DEMO_CENTERS} on emulated links, all {DEMO_LINK[0]} Mbit/s "
                        f"{DEMO_LINK[1]} ms (needs root); default: unshaped on loopback")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--powersgd-rank", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--target-loss", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile every worker's model")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = p.parse_args(argv)
    kw = dict(powersgd_rank=args.powersgd_rank, seed=args.seed, eval_every=args.eval_every,
              target_loss=args.target_loss, compile=args.compile)
    out: dict[str, Any] = {}
    if args.shaped:
        names = [c for c, _ in DEMO_CENTERS]
        links = [(a, b, *DEMO_LINK) for a, b in itertools.combinations(names, 2)]
        with WanEmulator(names, links, latency="tun") as emu:
            m = emu.measure(names[0], names[1], seconds=3.0)
            out["measured_link"] = {k: m[k] for k in ("src", "dst", "rate_mbit", "rtt_ms")}
            res = run_ddp(DEMO_CENTERS, args.steps, emu=emu, **kw)
    else:
        res = run_ddp(DEMO_CENTERS, args.steps, **kw)
    out["result"] = res
    label = ("shaped" if args.shaped else "unshaped") + (f" psgd{args.powersgd_rank}" if args.powersgd_rank else "")
    print(format_table([_row(label, res)]))
    if args.shaped:
        m = out["measured_link"]
        theory = ring_bytes_per_step(DEMO_CENTERS, res["param_count"] * 4)
        print(f"link {m['src']}->{m['dst']} measured {m['rate_mbit']:.1f} Mbit/s, RTT {m['rtt_ms']:.1f} ms "
              f"(the path gloo's packets take)")
        steady = res["steady_wan_bytes_per_step"]
        if args.powersgd_rank is None and steady is not None:
            print(f"ring all-reduce theory: {theory / 1e3:.0f} KB/step of fp32 payload on the WAN; "
                  f"counted {steady / 1e3:.0f} KB/step in the steady state ({steady / theory:.3f}x: "
                  f"headers, ACKs, barriers)")
    print(f"note: {res['note']}")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
