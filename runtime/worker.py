"""A worker: one device, one model replica, one data shard, one rank of its center's group.

Plain class; :mod:`suanwang.runtime.actors` wraps it in a Ray actor. Inside a center the
workers form a ``torch.distributed`` group (gloo / nccl / hccl by device kind) and
all-reduce gradients every inner step; nothing here crosses the WAN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import logging
import time

import torch
import torch.distributed as dist

from suanwang.runtime import device as devices
from suanwang.runtime.arrival import Arrivals
from suanwang.runtime.checkpoint import save_atomic
from suanwang.runtime.config import JobConfig
from suanwang.runtime.faults import Fault, fire
from suanwang.runtime.flat import digest, flatten, unflatten_into
from suanwang.runtime.groups import fragment_bounds, group_of, group_order
from suanwang.runtime.functions import DataShard, JobFunctions, batch_samples, batch_to
from suanwang.runtime.strategies import LocalStats, worker_strategy

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Where a worker sits."""

    center: str
    center_index: int
    num_centers: int
    rank: int
    world_size: int
    device: devices.DeviceKind = "cpu"
    threads: int = 1


def default_optimizer(cfg: JobConfig, params) -> torch.optim.Optimizer:
    """The configured inner optimizer. AdamW is PyTorch's fused kernel on CPU and CUDA
    (one pass over all parameters instead of a Python loop over them: a fifth of the
    demo's step time on CPU), its default implementation on other devices."""
    o = cfg.optimizer
    params = list(params)
    if o.kind == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def flat_layout(model: torch.nn.Module, cfg: JobConfig) -> tuple[list[str], list[torch.nn.Parameter]]:
    """The trainable parameters in flat-vector order: group by group, so each codec group
    is one contiguous range (see :mod:`suanwang.runtime.groups`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    order, _ = group_order([n for n, _ in named], cfg)
    return [named[i][0] for i in order], [named[i][1] for i in order]


def layout_of(model: torch.nn.Module, cfg: JobConfig) -> list[tuple[int, str, tuple[int, ...]]]:
    """The flat layout of ``model``: ``(config group, name, shape)`` per trainable parameter,
    in :func:`flat_layout` order (see :mod:`suanwang.runtime.groups`)."""
    names, params = flat_layout(model, cfg)
    return [(group_of(n, cfg), n, tuple(p.shape)) for n, p in zip(names, params)]


class Evaluator:
    """Held-out evaluation off the training path (``train.eval_on: evaluator``): a replica
    that only loads the flat parameters it is handed and evaluates them, so no center's
    leader stops training to evaluate. It runs on CPU in its own process.

    Raises:
        ValueError: the model has buffers (BatchNorm statistics, say): they never travel
            with the parameters, so this replica's would be stale.
    """

    def __init__(self, cfg: JobConfig, fns: JobFunctions):
        torch.set_num_threads(1)
        torch.manual_seed(cfg.job.seed)
        self.fns = fns
        self.model = fns.model_fn()
        buffers = [n for n, _ in self.model.named_buffers()]
        if buffers:
            raise ValueError(
                f"train.eval_on: evaluator gets the trainable parameters only, and the model has "
                f"buffers {buffers[:5]}; evaluate on the leader (train.eval_on: leader)"
            )
        _, self.params = flat_layout(self.model, cfg)
        self.model.eval()
        if cfg.train.compile:  # compiles at the first evaluation, the job's initial one
            self.model.compile()

    def evaluate(self, flat: torch.Tensor) -> float:
        if self.fns.eval_fn is None:
            return float("nan")
        with torch.no_grad():
            unflatten_into(flat.to(torch.float32), self.params)
            return float(self.fns.eval_fn(self.model))


class Worker:
    """One rank of a center.

    Args:
        spec: center, rank and device.
        cfg: the job's config.
        fns: the user's model/data/loss/eval/optimizer callables.
        faults: injected faults (tests and drills).
    """

    def __init__(self, spec: WorkerSpec, cfg: JobConfig, fns: JobFunctions, faults: tuple[Fault, ...] = ()):
        self.spec = spec
        self.cfg = cfg
        self.fns = fns
        self.faults = faults
        torch.set_num_threads(spec.threads)
        self.device = devices.torch_device(spec.device, spec.rank)
        # Same seed everywhere: every replica of every center starts bit-identical.
        torch.manual_seed(cfg.job.seed)
        self.model = fns.model_fn().to(self.device)
        self.param_names, self.params = flat_layout(self.model, cfg)
        self.numel = sum(p.numel() for p in self.params)
        opt_fn = fns.optimizer_fn or (lambda ps: default_optimizer(cfg, ps))
        self.optimizer = opt_fn(self.params)
        self.data = fns.data_fn(
            DataShard(spec.center, spec.center_index, spec.num_centers, spec.rank, spec.world_size, cfg.job.seed)
        )
        if cfg.train.compile:
            self._compile_model()
        self.strategy = worker_strategy(cfg, spec.center)
        if hasattr(self.strategy, "fragments"):
            self.strategy.fragments = fragment_bounds(self.layout(), cfg.strategy.fragments)
        # strategy.apply_on_arrival: results come in on a second actor thread (see
        # suanwang.runtime.arrival); whatever else touches the parameters holds the guard
        self.arrivals = (
            Arrivals(f"{spec.center} rank {spec.rank}", cfg.wan.round_timeout_s * 2)
            if getattr(cfg.strategy, "apply_on_arrival", False)
            else None
        )
        self._guard = self.arrivals.guard if self.arrivals else contextlib.nullcontext()
        # grads (weighted by local samples), then [samples, loss * samples, stop flag,
        # result-in-hand flag]
        self._buf = torch.zeros(self.numel + 4, dtype=torch.float32, device=self.device)
        self._views = self._attach_grad_views(copy=True)
        self.round_start = self.params_vector()
        self._store = None
        self._group_ready = False

    def _compile_model(self) -> None:
        """``train.compile``: compile the model in place (``nn.Module.compile``: its
        parameters and state dict stay its own) and compile it now, on one forward and
        backward of the first batch, so that the first round does not pay for it. Nothing
        of that pass remains: the batch is still the stream's next one, and the random
        state, the module's buffers (BatchNorm statistics, say) and the gradients are as
        before.

        Raises:
            RuntimeError: compilation failed (no C++ compiler for inductor on CPU, say).
        """
        data = self.data
        if hasattr(data, "state_dict") and hasattr(data, "load_state_dict"):
            mark = data.state_dict()
            first = next(data)
            data.load_state_dict(mark)
        else:
            first = next(data)
            self.data = itertools.chain([first], data)
        self.model.compile()
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        kind = self.device.type
        rng_devices = [] if kind == "cpu" else [self.device]
        try:
            with torch.random.fork_rng(devices=rng_devices, device_type=kind if kind != "cpu" else "cuda"):
                self.fns.loss_fn(self.model, batch_to(first, self.device)).backward()
        except Exception as err:
            where = f"{self.spec.center} rank {self.spec.rank}"
            raise RuntimeError(
                f"train.compile: compiling the model failed on {where}: {type(err).__name__}: {err} "
                f"(train.compile: false runs it eagerly)"
            ) from err
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p in self.model.parameters():
            p.grad = None

    # ------------------------------------------------------------ intra-center group
    def create_store(self, host: str) -> int:
        """On rank 0: start the center's rendezvous store; returns its port."""
        self._store = dist.TCPStore(
            host, 0, self.spec.world_size, is_master=True, wait_for_workers=False,
            timeout=datetime.timedelta(seconds=120),
        )
        return self._store.port

    def init_group(self, host: str, port: int) -> None:
        """Join the center's process group (a group of one needs no collective)."""
        if self.spec.world_size == 1:
            return
        if self._store is None:
            self._store = dist.TCPStore(
                host, port, self.spec.world_size, is_master=False,
                timeout=datetime.timedelta(seconds=120),
            )
        dist.init_process_group(
            devices.backend_for(self.spec.device),
            store=self._store,
            rank=self.spec.rank,
            world_size=self.spec.world_size,
            timeout=datetime.timedelta(seconds=self.cfg.wan.round_timeout_s * 2),
        )
        self._group_ready = True

    def shutdown(self) -> None:
        if self._group_ready:
            dist.destroy_process_group()
            self._group_ready = False

    # ------------------------------------------------------------ local computation
    def _attach_grad_views(self, copy: bool) -> list[torch.Tensor] | None:
        """Make every parameter's ``.grad`` a view of the flat buffer (as DDP's
        ``gradient_as_bucket_view`` does): backward accumulates straight into what the
        center all-reduces, and no step copies gradients in or out. With ``copy`` the views
        take the gradients' current values, else they keep the buffer's. ``None`` (the
        copying path) where a parameter is not fp32 on the buffer's device.

        A trainable parameter that gets no gradient then steps with a zero one (AdamW's
        momentum still moves it), as it would after ``zero_grad(set_to_none=False)``."""
        if any(p.dtype != torch.float32 or p.device != self._buf.device for p in self.params):
            return None
        views, offset = [], 0
        for p in self.params:
            views.append(self._buf[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        with torch.no_grad():
            for p, v in zip(self.params, views):
                if copy and p.grad is not None:
                    v.copy_(p.grad)
                p.grad = v
        return views

    def _grads_in_buffer(self) -> bool:
        """Whether every gradient is still its view of the buffer (a user's loss function
        or optimizer may have replaced or dropped one)."""
        return self._views is not None and all(p.grad is v for p, v in zip(self.params, self._views))

    def _forward_backward(self) -> tuple[int, float]:
        batch = batch_to(next(self.data), self.device)
        n = batch_samples(batch)
        if self._grads_in_buffer():
            self._buf[: self.numel].zero_()
        else:
            self.optimizer.zero_grad(set_to_none=False)
        loss = self.fns.loss_fn(self.model, batch)
        loss.backward()
        return n, float(loss.detach())

    def _reduce_in_center(self, n: int, loss: float, stop: bool = False) -> tuple[int, float, bool, bool]:
        """Sample-weighted mean of gradients over the center's workers, in place; the
        third value is whether any worker asked to stop, the fourth whether every worker
        holds a round result to apply after this step (both ride in the same all-reduce,
        so every worker of the center takes the same steps and applies at the same one)."""
        ready = self.arrivals is not None and self.arrivals.in_hand()
        buf = self._buf
        copied = not self._grads_in_buffer()
        if copied:
            flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params], out=buf[: self.numel])
        if self._group_ready:
            buf[: self.numel].mul_(n)
            buf[self.numel] = n
            buf[self.numel + 1] = loss * n
            buf[self.numel + 2] = float(stop)
            buf[self.numel + 3] = float(ready)
            dist.all_reduce(buf)
            total, loss_sum, stops, readies = buf[self.numel :].tolist()  # one read of the device
            buf[: self.numel].div_(total)
            n, loss, stop = int(round(total)), loss_sum / total, stops > 0
            ready = int(round(readies)) == self.spec.world_size
        if copied:  # the gradients become views of the (reduced) buffer again
            self._views = self._attach_grad_views(copy=False)
            if self._views is None:
                for p in self.params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                unflatten_into(buf[: self.numel], [p.grad for p in self.params])
        return n, loss, stop, ready

    def train_steps(self, steps: int, until: float | None = None) -> LocalStats:
        """Up to ``steps`` inner steps: forward, backward, intra-center all-reduce, optimizer
        step. With ``until`` (a ``time.time()`` deadline) the center stops early once the
        next step would end more than half a step past it; the first step always runs."""
        t0 = time.perf_counter()
        samples, loss_sum, done, step_s = 0, 0.0, 0, 0.0
        for _ in range(steps):
            t_step, wall = time.perf_counter(), time.time()
            n, loss = self._forward_backward()
            # a next step would end about 2 * step_s after this one started: stop if more
            # than half of it would fall past the deadline
            stop = until is not None and wall + 1.5 * (step_s or time.perf_counter() - t_step) > until
            total, mean_loss, stop, apply_now = self._reduce_in_center(n, loss, stop)
            self.optimizer.step()
            if apply_now:
                self.arrivals.apply_now(self.apply)
            samples += total
            loss_sum += mean_loss
            done += 1
            dt = time.perf_counter() - t_step
            step_s = dt if not step_s else 0.7 * step_s + 0.3 * dt
            if stop:
                break
        return LocalStats(done, samples, loss_sum / max(done, 1), time.perf_counter() - t0)

    def accumulate_gradient(self) -> LocalStats:
        """One forward/backward and intra-center all-reduce, without an optimizer step."""
        t0 = time.perf_counter()
        n, loss = self._forward_backward()
        total, mean_loss, _, _ = self._reduce_in_center(n, loss)
        return LocalStats(1, total, mean_loss, time.perf_counter() - t0)

    def gradient_vector(self) -> torch.Tensor:
        return self._buf[: self.numel].cpu().clone()

    def step_with_gradient(self, grad: torch.Tensor) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        unflatten_into(grad.to(self.device), [p.grad for p in self.params])
        self.optimizer.step()

    # ------------------------------------------------------------ parameters
    def params_vector(self) -> torch.Tensor:
        with self._guard:
            return flatten(self.params)

    def load_params_vector(self, flat: torch.Tensor, round_start: torch.Tensor | None = None) -> None:
        """Load parameters; the global state becomes ``round_start`` (default: ``flat``)."""
        unflatten_into(flat.to(self.device), self.params)
        src = flat if round_start is None else round_start
        self.round_start = src.detach().to(torch.float32).cpu().clone()

    def layout(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """The flat layout: (config group, name, shape) per parameter, in order (see
        :mod:`suanwang.runtime.groups`)."""
        return layout_of(self.model, self.cfg)

    def shared_digest(self) -> str:
        """Digest of what every center holds alike: the parameters, or under diloco and
        streaming the global state."""
        with self._guard:
            return digest(self.strategy.agreement_tensor(self))

    def digests(self) -> tuple[str, str]:
        """:meth:`shared_digest`, and, under streaming, the digest of this replica's
        parameters, which every worker of the center must hold bit for bit (they differ
        between centers); the second is empty where the first already covers the replica,
        or no other worker of the center has one."""
        with self._guard:
            shared = self.shared_digest()
            if self.spec.world_size == 1 or not self.strategy.keeps_local_progress:
                return shared, ""
            return shared, digest(self.params_vector())

    # ------------------------------------------------------------ the round, as the coordinator drives it
    def local_work(
        self,
        round: int,
        steps: int | None = None,
        until: float | None = None,
        contribute: bool = False,
        wait_applied: int | None = None,
    ) -> LocalStats | tuple[LocalStats, torch.Tensor]:
        """Round ``round``'s local work: ``steps`` inner steps (default: the strategy's
        count), stopping early at the wall-clock deadline ``until`` if given. With
        ``contribute`` (the leader) also returns the round's contribution, saving the
        separate call where nothing has to be applied in between. Under
        ``apply_on_arrival`` the results through round ``wait_applied`` are applied first
        (see :mod:`suanwang.runtime.arrival`)."""
        fire(self.faults, self.spec.center, round, self.spec.rank)
        training = self.arrivals.training(round, wait_applied, self.apply) if self.arrivals else contextlib.nullcontext()
        with training:
            stats = self.strategy.local_work(self, round, steps, until)
            return (stats, self.contribution()) if contribute else stats

    def deliver(self, round: int, result, verify: bool = True, settle_after: int | None = None) -> tuple[str, str]:
        """``apply_on_arrival``: round ``round``'s result, handed over while this worker
        may be training (the actor's second thread); returns as :meth:`apply`, once applied
        (see :class:`~suanwang.runtime.arrival.Arrivals` for when)."""
        if self.arrivals is None:
            raise RuntimeError(f"{self.spec.center} rank {self.spec.rank}: deliver needs strategy.apply_on_arrival")
        return self.arrivals.deliver(round, result, verify, self.apply, settle_after)

    def contribution(self) -> torch.Tensor:
        return self.strategy.contribution(self)

    def apply(self, result, verify: bool = True) -> tuple[str, str]:
        """Apply a round's result. With ``verify``, returns :meth:`digests`; ``("", "")``
        without (hashing a large model every round is not free)."""
        with self._guard:
            self.strategy.apply(self, result)
            return self.digests() if verify else ("", "")

    # ------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        """Write this worker's state (model, inner optimizer, data position, RNG)."""
        with self._guard:  # a consistent snapshot; the file is written outside the lock
            sd = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "round_start": self.round_start,
                "rng": torch.get_rng_state(),
                "data": self.data.state_dict() if hasattr(self.data, "state_dict") else None,
                "strategy": self.strategy.state_dict(),
            }
        save_atomic(sd, path)

    def load(self, path: str) -> tuple[str, str]:
        """Restore a :meth:`save`; returns :meth:`digests` of the state now held.

        Raises:
            ValueError: the file does not fit this model (naming the file).
        """
        sd = torch.load(path, map_location=self.device, weights_only=True)
        # the kernel choice is this worker's (its device), not the checkpoint writer's
        kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(sd["model"])
            self.optimizer.load_state_dict(sd["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"checkpoint {path} does not fit this model: {err}") from None
        for group, flags in zip(self.optimizer.param_groups, kernels):
            group.update(flags)
        self.round_start = sd["round_start"].cpu()
        self.strategy.load_state_dict(sd.get("strategy") or {})
        torch.set_rng_state(sd["rng"])
        if sd.get("data") is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(sd["data"])
        return self.digests()

    def eval_state(self) -> torch.Tensor:
        """The flat parameters an evaluation of this worker would use."""
        with self._guard:
            swap = self.strategy.eval_tensor(self)
            return (swap if swap is not None else self.params_vector()).detach().cpu().clone()

    def evaluate(self, after: int | None = None) -> float:
        """Held-out loss of this worker's state; under ``apply_on_arrival``, once round
        ``after``'s result is applied."""
        if self.arrivals is not None and after is not None:
            self.arrivals.wait_applied(after)
        if self.fns.eval_fn is None:
            return float("nan")
        with self._guard:
            swap = self.strategy.eval_tensor(self)
            saved = self.params_vector() if swap is not None else None
            self.model.eval()
            try:
                with torch.no_grad():
                    if swap is not None:
                        unflatten_into(swap.to(self.device), self.params)
                    return float(self.fns.eval_fn(self.model))
            finally:
                if saved is not None:
                    unflatten_into(saved.to(self.device), self.params)
                self.model.train()
