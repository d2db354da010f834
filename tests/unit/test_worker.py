"""A worker's inner steps, without Ray: gradients live in the flat buffer the center
all-reduces, and the steps equal a plain PyTorch loop bit for bit, whatever the user's
callables do to ``.grad``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from suanwang.launch.demo import demo_functions
from suanwang.runtime import parse_config
from suanwang.runtime.config import demo_config_path
from suanwang.runtime.functions import DataShard
from suanwang.runtime.flat import digest
from suanwang.runtime.worker import Worker, WorkerSpec, default_optimizer


def _cfg(**strategy):
    d = yaml.safe_load(demo_config_path().read_text())
    d["centers"] = [{"name": "a", "workers": 1}]
    d["links"] = []
    if strategy:
        d["strategy"] = strategy
    return parse_config(d, environ={})


def _worker(cfg, fns) -> Worker:
    return Worker(WorkerSpec("a", 0, 1, 0, 1), cfg, fns)


def _reference(cfg, fns, steps: int) -> tuple[torch.Tensor, list[float]]:
    """The same steps as a plain loop: seed, model, the config's optimizer, the shard."""
    torch.manual_seed(cfg.job.seed)
    model = fns.model_fn()
    opt = default_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    data = fns.data_fn(DataShard("a", 0, 1, 0, 1, cfg.job.seed))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fns.loss_fn(model, next(data))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), losses


def _params(w: Worker) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in w.model.parameters()])


def test_gradients_are_views_of_the_buffer_and_steps_match_a_plain_loop():
    cfg = _cfg()
    fns = demo_functions(cfg)
    w = _worker(cfg, fns)
    start = w._buf.data_ptr()
    stats = w.train_steps(4)
    assert stats.steps == 4 and stats.samples == 4 * cfg.data.batch_size
    assert w._grads_in_buffer()
    for p in w.params:  # every gradient lives inside the one buffer
        assert start <= p.grad.data_ptr() < start + 4 * w.numel
    assert torch.equal(w.gradient_vector(), torch.cat([p.grad.reshape(-1) for p in w.params]))
    ref, _ = _reference(cfg, fns, 4)
    assert torch.equal(_params(w), ref)


def test_a_loss_function_that_drops_the_gradients_still_trains_exactly():
    cfg = _cfg()
    fns = demo_functions(cfg)

    def careless_loss(model, batch):
        model.zero_grad(set_to_none=True)  # drops the views: backward allocates new grads
        return fns.loss_fn(model, batch)

    w = _worker(cfg, dataclasses.replace(fns, loss_fn=careless_loss))
    w.train_steps(3)
    assert w._grads_in_buffer(), "the views are attached again after a step"
    ref, _ = _reference(cfg, fns, 3)
    assert torch.equal(_params(w), ref)


def test_a_float64_model_takes_the_copying_path():
    cfg = _cfg()
    fns = demo_functions(cfg)

    def model64():
        return fns.model_fn().double()

    def loss64(model, batch):
        images, tokens = batch
        return fns.loss_fn(model, (images.double(), tokens))

    w = _worker(cfg, dataclasses.replace(fns, model_fn=model64, loss_fn=loss64))
    assert w._views is None
    before = _params(w).clone()
    w.train_steps(2)
    assert all(p.grad.dtype == torch.float64 for p in w.params)
    assert not torch.equal(_params(w), before)


@pytest.mark.parametrize("device, fused", [("cpu", True), ("meta", None)])
def test_default_adamw_is_fused_where_torch_has_the_kernel(device, fused):
    cfg = _cfg()
    p = torch.nn.Parameter(torch.zeros(3, device=device))
    opt = default_optimizer(cfg, [p])
    assert opt.defaults["fused"] is fused


@pytest.mark.parametrize("careless", [False, True])
def test_a_center_steps_every_worker_on_the_reduced_gradient(monkeypatch, careless):
    """A 2-worker center without a second process: the all-reduce adds a peer's weighted
    gradient. Whether the gradients stayed views of the buffer or a user's loss function
    replaced them, every parameter must end with the sample-weighted mean."""
    import suanwang.runtime.worker as worker_mod

    cfg = _cfg()
    fns = demo_functions(cfg)
    if careless:
        loss_fn = fns.loss_fn

        def dropping(model, batch):
            model.zero_grad(set_to_none=True)
            return loss_fn(model, batch)

        fns = dataclasses.replace(fns, loss_fn=dropping)
    w = _worker(cfg, fns)
    peer_n = 16
    peer = torch.randn(w.numel, generator=torch.Generator().manual_seed(3))
    seen = {}

    def all_reduce(buf):
        n = int(buf[w.numel])
        seen["local"], seen["n"] = buf[: w.numel] / n, n
        buf[: w.numel] += peer * peer_n
        buf[w.numel] += peer_n
        buf[w.numel + 1] += 1.0 * peer_n

    monkeypatch.setattr(worker_mod.dist, "all_reduce", all_reduce)
    w._group_ready = True
    n, loss = w._forward_backward()
    total, _, _, _ = w._reduce_in_center(n, loss)
    assert total == n + peer_n and seen["n"] == n
    want = (seen["local"] * n + peer * peer_n) / (n + peer_n)
    got = torch.cat([p.grad.reshape(-1) for p in w.params])
    torch.testing.assert_close(got, want)
    assert w._grads_in_buffer()


def test_resume_keeps_this_workers_optimizer_kernel(tmp_path):
    cfg = _cfg()
    fns = demo_functions(cfg)
    plain = dataclasses.replace(fns, optimizer_fn=lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False))
    old = _worker(cfg, plain)
    old.train_steps(1)
    old.save(str(tmp_path / "w.pt"))
    new = _worker(cfg, fns)
    new.load(str(tmp_path / "w.pt"))
    assert new.optimizer.param_groups[0]["fused"] is True
    new.train_steps(1)  # and it steps with the loaded state


def _compiled_cfg():
    cfg = _cfg()
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": True})})


@pytest.mark.parametrize("stream", ["resumable", "generator"])
def test_compile_warms_up_without_a_trace_and_trains_like_eager(stream):
    """``train.compile``: compiled at start-up on the first batch, which is still the one
    the first step trains on; the random state is untouched; the steps match eager ones up
    to the compiled kernels' rounding."""
    cfg = _compiled_cfg()
    fns = demo_functions(cfg)
    if stream == "generator":  # no state_dict: the batch is put back in front
        data_fn = fns.data_fn
        fns = dataclasses.replace(fns, data_fn=lambda shard: (b for b in data_fn(shard)))
    loss_fn = fns.loss_fn
    # a loss that draws random numbers (as dropout would): the warm-up's draws must not count
    fns = dataclasses.replace(fns, loss_fn=lambda model, batch: loss_fn(model, batch) + 0.0 * torch.rand(()))
    eager = _worker(_cfg(), fns)
    rng_eager = torch.get_rng_state()
    w = _worker(cfg, fns)
    assert torch.equal(torch.get_rng_state(), rng_eager), "the warm-up pass drew random numbers"
    assert w.model._compiled_call_impl is not None
    assert all(p.grad is v for p, v in zip(w.params, w._views)) and not w._buf.any()
    first = w.train_steps(1)
    ref_first = eager.train_steps(1)
    assert first.loss == pytest.approx(ref_first.loss, abs=1e-5)  # the same first batch
    w.train_steps(3)
    eager.train_steps(3)
    torch.testing.assert_close(_params(w), _params(eager), atol=1e-4, rtol=0)


def test_a_failed_compile_names_the_setting_and_the_worker(monkeypatch):
    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("inductor: no working C++ compiler")

        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    cfg = _compiled_cfg()
    with pytest.raises(RuntimeError, match=r"train.compile: compiling the model failed on a rank 0: .*C\+\+ compiler"):
        _worker(cfg, demo_functions(cfg))


def test_the_evaluator_compiles_too_and_agrees_with_eager():
    from suanwang.runtime.worker import Evaluator

    cfg = _compiled_cfg()
    fns = demo_functions(cfg)
    flat = _worker(_cfg(), fns).params_vector()
    compiled, eager = Evaluator(cfg, fns), Evaluator(_cfg(), fns)
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    assert compiled.evaluate(flat) == pytest.approx(eager.evaluate(flat), abs=1e-5)


def test_on_arrival_every_worker_of_a_center_applies_after_the_same_step(monkeypatch):
    """``apply_on_arrival`` in a 2-worker center, the peer simulated in the all-reduce: a
    result that came in mid-slot is applied after the first step at which both workers
    hold it (the flag rides in the step's all-reduce), not as soon as this one has it."""
    import threading

    import suanwang.runtime.worker as worker_mod

    cfg = _cfg(kind="streaming", inner_steps=6, fragments=3, overlap=1, mix=0.5, apply_on_arrival=True)
    w = Worker(WorkerSpec("a", 0, 1, 0, 2), cfg, demo_functions(cfg))
    a, b = w.strategy.fragments[0]
    glob = torch.full((b - a,), 0.25)
    peer_ready = [0.0, 0.0, 1.0, 1.0, 1.0]
    steps, applied_after, delivered = [], [], {}

    def all_reduce(buf):
        k = len(steps)
        steps.append(float(buf[w.numel + 3]))  # this worker's flag at step k
        buf[: w.numel + 3] *= 2  # the peer: the same gradient, samples and loss
        buf[w.numel + 3] += peer_ready[k]
        if k == 0:  # the result comes in during the first step
            t = threading.Thread(target=lambda: delivered.update(d=w.deliver(7, (a, b, glob))))
            t.start()
            delivered["t"] = t
            while not w.arrivals.in_hand():
                pass

    apply = w.apply

    def counting_apply(result, verify=True):
        applied_after.append(len(steps))
        return apply(result, verify)

    monkeypatch.setattr(worker_mod.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(w, "apply", counting_apply)
    w._group_ready = True
    w.local_work(8, steps=5)
    delivered["t"].join(5)
    # in hand from step 1; applied after step 2, the first at which both workers had it
    assert steps == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert applied_after == [3]
    assert torch.equal(w.round_start[a:b], glob)
    assert all(delivered["d"])  # the shared state's digest, and this replica's (2 workers)
    assert w.arrivals.applied_round == 7 and not w.arrivals.in_hand()


@pytest.mark.parametrize("kind", ["sync", "streaming"])
def test_a_verified_apply_reports_the_agreed_state_and_this_replica(kind):
    # the first digest is what every center agrees on, the second what every worker of this
    # center holds: under streaming the replica (half local, half global) differs from the
    # global state and is hashed too; under sync the agreed digest is the replica's own
    # (compared across every worker), and a worker alone in its center compares with nobody
    strategy = {"kind": "streaming", "inner_steps": 6, "fragments": 3, "overlap": 0, "mix": 0.5} if kind == "streaming" else {"kind": "sync"}
    cfg = _cfg(**strategy)
    pair = Worker(WorkerSpec("a", 0, 1, 0, 2), cfg, demo_functions(cfg))
    alone = _worker(cfg, demo_functions(cfg))
    for w in (pair, alone):
        w.train_steps(2)
    if kind == "streaming":
        a, b = pair.strategy.fragments[0]
        result = (a, b, torch.full((b - a,), 0.25))
    else:
        result = torch.zeros(pair.numel)
    agreed, mine = pair.apply(result)
    assert agreed == digest(pair.strategy.agreement_tensor(pair))
    if kind == "streaming":
        assert mine == digest(pair.params_vector()) and mine != agreed
    else:
        assert mine == "" and agreed == digest(pair.params_vector())
    assert alone.apply(result)[1] == ""
    assert pair.apply(result, verify=False) == ("", "")
