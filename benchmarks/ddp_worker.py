"""One worker of the plain-PyTorch DDP baseline (:mod:`suanwang.benchmarks.ddp`).

Run by the parent as ``python -m suanwang.benchmarks.ddp_worker ...``, one process per
worker, inside its center's network namespace when the WAN is emulated. The worker trains
the demo job (the CLIP model, ``--model-size``, on the digits pairs; the same data shard,
seed, batch and inner AdamW as a runtime worker of that center) under ``DistributedDataParallel`` on gloo,
across *all* workers of *all* centers: every step all-reduces the gradients over the WAN.

The conversation with the parent, JSON lines on stdout and plain lines on stdin:

* rank 0 creates the TCPStore (port 0) and prints ``{"event": "store", "port": P}``; every
  other rank reads ``{"store_port": P}`` from stdin before connecting.
* At every eval point (step 0, every ``--eval-every`` steps, the last step) all ranks meet
  at a barrier (so no gradient bytes are in flight), rank 0 evaluates the held-out loss,
  prints ``{"event": "eval", ...}`` and waits for a line on stdin (the parent reads the WAN
  byte counters meanwhile), then all ranks meet at a second barrier and train on. Rank 0's
  training clock stops over the whole pause, so ``train_s`` is training time only.
* Each rank prints ``{"event": "done", ...}`` with its timings and exits.

Utilization. DDP overlaps the all-reduce with the backward pass, so the time a step spends
blocked on the network cannot be read off a step. Instead, before training, every rank runs
the same model on its own data with no communication at all (a copy of the model, its own
optimizer and batch stream, so the real run is untouched): a few untimed steps, a barrier,
``COMPUTE_STEPS`` timed steps, a barrier. All ranks run them at the same time, sharing the
CPUs as in training. ``group_compute_s`` (barrier to barrier over the steps) is how long a
synchronous step takes when communication is free; its ratio to the mean training step is
the run's utilization. Each rank also reports the mean of its own compute-only steps
(``compute_s``); on an oversubscribed host (4 workers, 2 cores) that figure swings between
ranks with the scheduler, which is why the group figure is the headline.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from suanwang.models.clip import ClipConfig, ClipModel, clip_loss
from suanwang.models.data import Batches, eval_loss, load_digits_pairs, shard

MODULE = "suanwang.benchmarks.ddp_worker"

# The demo job's settings (launch/configs/demo.yaml).
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
EVAL_FRACTION = 0.2
LR = 2e-3
BETAS = (0.9, 0.95)
# Local compute-only steps: untimed, then timed.
WARMUP_STEPS = 3
COMPUTE_STEPS = 20


def _say(**msg: Any) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _hear() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:  # the parent is gone: nothing left to report to
        raise SystemExit("ddp_worker: stdin closed by the parent")
    return json.loads(line)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # the runtime's own inner optimizer (runtime.worker.default_optimizer): fused on CPU
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0, fused=True)


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Any,
                scalars: list[torch.nn.Parameter] = ()) -> None:
    """One step; ``scalars`` are parameters outside DDP whose gradients are averaged here."""
    # clip_loss(*model(images, tokens)) is ClipModel.loss(batch), spelled out so that the
    # call goes through DDP's forward (which arms its gradient all-reduce).
    opt.zero_grad(set_to_none=True)
    clip_loss(*model(*batch)).backward()
    if scalars:
        flat = torch.stack([p.grad for p in scalars])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for p, g in zip(scalars, flat):
            p.grad.copy_(g)
    opt.step()


def _compute_only(model: torch.nn.Module, batches: Batches, compile: bool = False) -> tuple[float, float]:
    """Local steps (forward, backward, AdamW) with no gradient communication, on a copy
    of the (not yet compiled) model; compiled as training will be, in the untimed steps.

    Returns:
        ``(mean seconds of this rank's steps, seconds per step of all ranks together)``.
    """
    model = copy.deepcopy(model)
    if compile:
        model.compile()
    opt = _optimizer(model)
    batches = copy.deepcopy(batches)
    for _ in range(WARMUP_STEPS):
        _train_step(model, opt, next(batches))
    dist.barrier()
    t_group = time.perf_counter()
    own = 0.0
    for _ in range(COMPUTE_STEPS):
        t0 = time.perf_counter()
        _train_step(model, opt, next(batches))
        own += time.perf_counter() - t0
    dist.barrier()
    return own / COMPUTE_STEPS, (time.perf_counter() - t_group) / COMPUTE_STEPS


def _compile(model: torch.nn.Module, batches: Batches) -> None:
    """Compile ``model`` in place, now: one forward and backward of the stream's next batch
    (read from a copy of the stream), outside the training clock. Nothing of it stays: the
    stream, the random state and the parameters are as before, the gradients are dropped."""
    model.compile()
    batch = next(copy.deepcopy(batches))
    with torch.random.fork_rng(devices=[]):
        clip_loss(*model(*batch)).backward()
    model.zero_grad(set_to_none=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--center", required=True)
    p.add_argument("--center-index", type=int, required=True)
    p.add_argument("--num-centers", type=int, required=True)
    p.add_argument("--local-rank", type=int, required=True)
    p.add_argument("--local-workers", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--model-size", default="tiny", help="ClipConfig preset")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="per-worker batch")
    p.add_argument("--store-host", required=True, help="address of rank 0's TCPStore")
    p.add_argument("--gloo-ifname", required=True,
                   help="interface whose address gloo binds to (becomes GLOO_SOCKET_IFNAME)")
    p.add_argument("--powersgd-rank", type=int, default=None)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (as the runtime's train.compile), before the clock starts")
    p.add_argument("--timeout-s", type=float, default=600.0, help="gloo and store timeout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(1)
    # gloo takes the address it binds to and advertises from this interface (inside the
    # center's namespace every WAN veth carries the center's one address).
    os.environ["GLOO_SOCKET_IFNAME"] = a.gloo_ifname

    train, held = load_digits_pairs(a.seed, eval_fraction=EVAL_FRACTION)
    mine = shard(shard(train, a.center_index, a.num_centers), a.local_rank, a.local_workers)
    batches = Batches(mine, min(a.batch_size, len(mine)),
                      seed=a.seed * 1009 + a.center_index * 101 + a.local_rank)
    torch.manual_seed(a.seed)
    model = ClipModel(ClipConfig.preset(a.model_size))

    timeout = datetime.timedelta(seconds=a.timeout_s)
    if a.rank == 0:
        store = dist.TCPStore(a.store_host, 0, a.world, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        _say(event="store", port=store.port)
    else:
        store = dist.TCPStore(a.store_host, int(_hear()["store_port"]), a.world,
                              is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=a.rank, world_size=a.world, timeout=timeout)
    global_batch = torch.tensor([batches.batch_size])
    dist.all_reduce(global_batch)

    compute_s, group_compute_s = _compute_only(model, batches, a.compile)
    if a.compile:  # after the copy above was taken: a copy of a compiled module runs the original
        _compile(model, batches)

    scalars: list[torch.nn.Parameter] = []
    if a.powersgd_rank is not None:
        # PyTorch's PowerSGD hook views every gradient as ``shape[0] x -1`` and fails on a
        # 0-dim one (ClipModel.logit_scale): keep those out of DDP and average them here.
        names = [n for n, p in model.named_parameters() if p.dim() == 0]
        scalars = [p for p in model.parameters() if p.dim() == 0]
        # DDP spells a root module's parameter "name" in one place and ".name" (module name
        # "" + "." + name) where it builds the reducer's buckets: give both spellings.
        names += ["." + n for n in names if "." not in n]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        for p in scalars:
            dist.broadcast(p.data, 0)
    ddp = DistributedDataParallel(model)  # broadcasts rank 0's parameters (equal anyway)
    if a.powersgd_rank is not None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=a.powersgd_rank,
                                   start_powerSGD_iter=2)
        ddp.register_comm_hook(state, psgd.powerSGD_hook)
    opt = _optimizer(ddp)

    train_s = 0.0  # rank 0's training clock: wall time outside eval pauses
    step_s = 0.0  # this rank's summed step wall times
    t_start = time.perf_counter()

    def eval_point(step: int) -> None:
        dist.barrier()  # every rank has finished the step: no gradient bytes in flight
        if a.rank == 0:
            t0 = time.perf_counter()
            loss = eval_loss(ddp.module, held, EVAL_BATCH_SIZE)
            _say(event="eval", step=step, train_s=train_s, samples=step * int(global_batch),
                 eval_loss=loss, eval_s=time.perf_counter() - t0)
            _hear()  # the parent has read the byte counters
        dist.barrier()

    eval_point(0)
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        _train_step(ddp, opt, next(batches), scalars)
        dt = time.perf_counter() - t0
        step_s += dt
        train_s += dt
        if step % a.eval_every == 0 or step == a.steps:
            eval_point(step)
    _say(event="done", rank=a.rank, center=a.center, compute_s=compute_s,
         group_compute_s=group_compute_s,
         step_s=step_s / a.steps, wall_s=time.perf_counter() - t_start, train_s=train_s,
         global_batch=int(global_batch))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is reported and the process group destroyed: leave without the interpreter's
    # teardown, in which a c10d/gloo thread still joinable when its owner is destructed can
    # abort the process ("terminate called without an active exception", exit -6; seen once
    # in CI, on rank 1 of the shaped DDP baseline, after its results were in).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
