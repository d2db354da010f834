"""Codec kernel benchmark: encode/decode throughput, ratio and error of every codec.

Every figure is also given as a ratio to the copy bandwidth measured in the same run;
topk is compared with ``torch.topk`` at the same k, and powersgd with the math of
PyTorch's PowerSGD DDP hook at the same rank.

    python -m suanwang.benchmarks.codecs --json codecs.json            # 64M and 4M elements
    python -m suanwang.benchmarks.codecs --quick                        # smoke test
    python -m suanwang.benchmarks.codecs --device cuda --json codecs_cuda.json

Throughput is GB of float32 input per second. Codecs with error feedback (topk, sign,
powersgd) are timed with a state, as they are used. Each figure is timed taking turns with
the copy (and topk with torch.topk, powersgd with the hook), and its ratio uses the copy
measured alongside: on a shared machine, load changes within seconds.

On an accelerator (``--device cuda``, ``npu``) the input, the copy baseline, torch.topk and
the hook all live on the device, and every timed call ends with the device synchronised.
Encode is what a gateway pays: the kernels on the device, then the payload copied to a
host buffer for the wire; decode is the reverse (the payload copied to the device, decoded
into a device tensor).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from typing import Any

import torch

from suanwang.benchmarks.common import (
    CopyBaseline,
    check_device,
    device_sync,
    format_size,
    parse_size,
    print_table,
    set_threads,
    timeit_interleaved,
    write_json,
)
from suanwang.runtime.compress import CodecState, make_codec
from suanwang.runtime.compress.powersgd import matrix_shape


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    kind: str
    params: dict
    error_feedback: bool


CONFIGS = [
    Config("fp16", "fp16", {}, False),
    Config("bf16", "bf16", {}, False),
    Config("int8", "int8", {}, False),
    Config("int4", "int4", {}, False),
    Config("topk", "topk", {"ratio": 0.01}, True),
    Config("topk_int8", "topk", {"ratio": 0.01, "values": "int8"}, True),
    Config("sign", "sign", {}, True),
    Config("powersgd", "powersgd", {"rank": 4}, True),
]
TOPK_RATIO = 0.01
TARGET_MIN_NUMEL = 16 << 20
"""Targets are judged on large tensors only (they are set for 64M elements)."""
POWERSGD_RANK = 4

# name, figure, threshold: the targets the codecs are built to meet on CPU (2 threads, 64M
# fp32); not judged on an accelerator, whose figures are given against its own copy and
# against copying the raw float32 to the host
TARGETS = [
    ("int8 encode >= 0.25x copy", lambda r: r["codecs"]["int8"]["encode_vs_copy"], 0.25),
    ("int8 decode >= 0.25x copy", lambda r: r["codecs"]["int8"]["decode_vs_copy"], 0.25),
    ("int8 rel_err <= 0.01", lambda r: -r["codecs"]["int8"]["rel_err"], -0.01),
    ("topk 1% (EF) encode >= 0.1x copy", lambda r: r["codecs"]["topk"]["encode_vs_copy"], 0.1),
    ("topk 1% (EF) encode >= 10x torch.topk", lambda r: r["topk_vs_torch_topk"], 10.0),
    ("sign (EF) encode >= 0.2x copy", lambda r: r["codecs"]["sign"]["encode_vs_copy"], 0.2),
    ("fp16 encode >= 0.5x copy", lambda r: r["codecs"]["fp16"]["encode_vs_copy"], 0.5),
    ("fp16 decode >= 0.5x copy", lambda r: r["codecs"]["fp16"]["decode_vs_copy"], 0.5),
    ("bf16 encode >= 0.5x copy", lambda r: r["codecs"]["bf16"]["encode_vs_copy"], 0.5),
    ("bf16 decode >= 0.5x copy", lambda r: r["codecs"]["bf16"]["decode_vs_copy"], 0.5),
    ("powersgd r4 (EF) encode+decode >= 2x faster than hook", lambda r: r["powersgd_vs_hook"], 2.0),
]


class HookMath:
    """The arithmetic of ``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook`` on
    one matrix, without the all-reduces: error feedback, warm-started Q, ``P = M Q``,
    orthogonalize, ``Q = M^T P``, ``M = P Q^T``, new error = input - M."""

    def __init__(self, rows: int, cols: int, rank: int, device: torch.device | str = "cpu") -> None:
        try:
            from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _orthogonalize
        except ImportError:  # pragma: no cover - torch builds without distributed
            _orthogonalize = _gram_schmidt
        self.orthogonalize = _orthogonalize
        self.rows, self.cols = rows, cols
        self.input = torch.zeros(rows * cols, device=device)
        self.error = torch.zeros(rows * cols, device=device)
        self.p = torch.empty(1, rows, rank, device=device)
        g = torch.Generator().manual_seed(0)
        self.q = torch.randn(1, cols, rank, generator=g).to(device)

    def load(self, x: torch.Tensor) -> None:
        """Put the next gradient into the bucket (untimed: the hook receives it there)."""
        self.input[: x.numel()].copy_(x.reshape(-1))

    def step(self) -> None:
        inp = self.input
        inp.add_(self.error)
        kept = inp.detach().clone()
        m = inp.view(1, self.rows, self.cols)
        self.orthogonalize(self.q)
        torch.bmm(m, self.q, out=self.p)
        self.orthogonalize(self.p)
        torch.bmm(m.transpose(1, 2), self.p, out=self.q)
        torch.bmm(self.p, self.q.transpose(1, 2), out=m)
        self.error = kept - inp


def _gram_schmidt(matrices: torch.Tensor) -> None:  # pragma: no cover
    for i in range(matrices.shape[2]):
        col = matrices[:, :, i : i + 1]
        col /= torch.norm(col, dim=1, keepdim=True)
        if i + 1 < matrices.shape[2]:
            rest = matrices[:, :, i + 1 :]
            rest -= torch.sum(col * rest, dim=1, keepdim=True) * col


def bench_codec(cfg: Config, x: torch.Tensor, copy: CopyBaseline, repeat: int) -> dict[str, Any]:
    """Encode and decode throughput of one codec, taking turns with the copy baseline
    (on ``x``'s device; the payload is on the host, as it goes on the wire)."""
    gb = x.numel() * 4 / 1e9
    codec = make_codec(cfg.kind, **cfg.params)
    state = CodecState() if cfg.error_feedback else None
    payload = codec.encode(x, state)  # also compiles the kernels, untimed
    out = torch.empty_like(x)
    t = timeit_interleaved(
        {
            "copy": copy,
            "encode": lambda: codec.encode(x, state).release(),
            "decode": lambda: codec.decode(payload, out=out),
        },
        repeat=repeat,
        warmup=1,
        sync=device_sync(x.device),
    )
    ratio = x.numel() * 4 / payload.nbytes
    payload.release()
    # One stateless round trip for the error.
    fresh = make_codec(cfg.kind, **cfg.params)
    fresh.decode(fresh.encode(x), out=out)
    rel_err = float(torch.linalg.vector_norm(out.sub_(x)) / torch.linalg.vector_norm(x))
    copy_gbps = copy.gbps(t["copy"])
    enc_gbps, dec_gbps = t["encode"].rate(gb), t["decode"].rate(gb)
    return {
        "encode_GBps": enc_gbps,
        "decode_GBps": dec_gbps,
        "encode_vs_copy": enc_gbps / copy_gbps,
        "decode_vs_copy": dec_gbps / copy_gbps,
        "copy_GBps": copy_gbps,
        "encode_s": t["encode"].median,
        "decode_s": t["decode"].median,
        "ratio": ratio,
        "rel_err": rel_err,
        "error_feedback": cfg.error_feedback,
        "params": cfg.params,
    }


def bench_baselines(x: torch.Tensor, copy: CopyBaseline, repeat: int) -> dict[str, Any]:
    """torch.topk and the PowerSGD hook math, each taking turns with the codec it is the
    baseline of (and with the copy)."""
    numel = x.numel()
    gb = numel * 4 / 1e9
    sync = device_sync(x.device)
    k = max(1, math.ceil(TOPK_RATIO * numel))
    topk = make_codec("topk", ratio=TOPK_RATIO)
    topk_state = CodecState()
    topk.encode(x, topk_state).release()
    fns = {
        "copy": copy,
        "torch_topk": lambda: torch.topk(x.abs(), k, sorted=False),
        "topk": lambda: topk.encode(x, topk_state).release(),
    }
    if x.device.type != "cpu":  # what sending the raw float32 would cost: its copy to the host
        host = torch.empty(numel, pin_memory=True)
        fns["to_host"] = lambda: host.copy_(x)
    t1 = timeit_interleaved(
        fns,
        repeat=max(1, min(repeat, 3)),
        warmup=1,
        sync=sync,
    )
    del topk, topk_state
    rows, cols = matrix_shape((numel,), numel)
    rank = min(POWERSGD_RANK, rows, cols)
    hook = HookMath(rows, cols, rank, x.device)
    psgd = make_codec("powersgd", rank=rank)
    psgd_state = CodecState()
    payload = psgd.encode(x, psgd_state)
    out = torch.empty_like(x)
    t2 = timeit_interleaved(
        {
            "copy": copy,
            "hook": hook.step,
            "encode": lambda: psgd.encode(x, psgd_state).release(),
            "decode": lambda: psgd.decode(payload, out=out),
        },
        repeat=max(1, min(repeat, 3)),
        warmup=1,
        setup={"hook": lambda: hook.load(x)},
        sync=sync,
    )
    del hook
    copy_gbps = copy.gbps(t1["copy"])
    extra = {}
    if "to_host" in t1:
        extra = {"to_host_GBps": t1["to_host"].rate(gb), "to_host_vs_copy": t1["to_host"].rate(gb) / copy_gbps}
    return {
        **extra,
        "copy_times": [t1["copy"].median, t2["copy"].median],
        "torch_topk_GBps": t1["torch_topk"].rate(gb),
        "torch_topk_vs_copy": t1["torch_topk"].rate(gb) / copy_gbps,
        "topk_vs_torch_topk": t1["torch_topk"].median / t1["topk"].median,
        "powersgd_hook_s": t2["hook"].median,
        "powersgd_hook_GBps": t2["hook"].rate(gb),
        "powersgd_hook_vs_copy": t2["hook"].rate(gb) / copy.gbps(t2["copy"]),
        "powersgd_vs_hook": t2["hook"].median / (t2["encode"].median + t2["decode"].median),
        "powersgd_encode_vs_hook": t2["hook"].median / t2["encode"].median,
    }


def bench_size(numel: int, repeat: int, configs: list[Config], device: torch.device | str = "cpu") -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=g).to(device)  # the same values on every device
    copy = CopyBaseline(numel, device)
    base = bench_baselines(x, copy, repeat)
    codecs = {cfg.name: bench_codec(cfg, x, copy, repeat) for cfg in configs}
    copy_s = base.pop("copy_times") + [numel * 4 / 1e9 / c["copy_GBps"] for c in codecs.values()]
    if "to_host_GBps" in base:
        for c in codecs.values():
            c["encode_vs_to_host"] = c["encode_GBps"] / base["to_host_GBps"]
    return {
        "numel": numel,
        # the median of the copy figures measured next to each codec and baseline
        "copy_GBps": numel * 4 / 1e9 / statistics.median(copy_s),
        **base,
        "codecs": codecs,
    }


def check_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, figure, threshold in TARGETS:
        try:
            value = figure(res)
        except KeyError:
            continue
        shown = -value if threshold < 0 else value
        rows.append({"target": name, "measured": shown, "met": "yes" if value >= threshold else "NO"})
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m suanwang.benchmarks.codecs", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="PATH", help="write the results here as JSON")
    p.add_argument("--sizes", nargs="+", default=["64M", "4M"], help="float32 elements per tensor (K/M/G suffixes)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="timed repeats per figure; the median is reported")
    p.add_argument("--codecs", nargs="+", choices=[c.name for c in CONFIGS], help="only these codecs")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats, for smoke tests")
    p.add_argument("--device", default="cpu", help="where the input lives: cpu (default), cuda, cuda:1, npu")
    args = p.parse_args(argv)
    try:
        args.device = check_device(args.device)
    except ValueError as err:
        p.error(f"--device: {err}")
    if args.quick:
        args.sizes = ["64K"]
        args.repeat = 2
    try:
        args.numels = [parse_size(s) for s in args.sizes]
    except ValueError as err:
        p.error(str(err))
    if args.threads < 1 or args.repeat < 1:
        p.error("--threads and --repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    configs = [c for c in CONFIGS if args.codecs is None or c.name in args.codecs]
    results: dict[str, Any] = {}
    for numel in args.numels:
        label = format_size(numel)
        res = bench_size(numel, args.repeat, configs, args.device)
        results[label] = res
        rows = [
            {
                "codec": name,
                "enc GB/s": c["encode_GBps"],
                "enc/copy": c["encode_vs_copy"],
                "dec GB/s": c["decode_GBps"],
                "dec/copy": c["decode_vs_copy"],
                "ratio": c["ratio"],
                "rel_err": c["rel_err"],
                "EF": "yes" if c["error_feedback"] else "",
                **({"enc/to_host": c["encode_vs_to_host"]} if "encode_vs_to_host" in c else {}),
            }
            for name, c in res["codecs"].items()
        ]
        where = f"{args.threads} threads" if args.device.type == "cpu" else str(args.device)
        print_table(rows, title=f"{label} fp32 elements, {where}, copy_ {res['copy_GBps']:.2f} GB/s")
        base = [
            {"baseline": "copy_", "GB/s": res["copy_GBps"], "vs copy": 1.0, "s": numel * 4 / 1e9 / res["copy_GBps"]},
            *([{"baseline": "fp32 to host (pinned)", "GB/s": res["to_host_GBps"], "vs copy": res["to_host_vs_copy"],
                "s": numel * 4 / 1e9 / res["to_host_GBps"]}] if "to_host_GBps" in res else []),
            {"baseline": f"torch.topk k={TOPK_RATIO:g}n", "GB/s": res["torch_topk_GBps"],
             "vs copy": res["torch_topk_vs_copy"], "s": numel * 4 / 1e9 / res["torch_topk_GBps"]},
            {"baseline": f"PowerSGD hook math r{POWERSGD_RANK}", "GB/s": res["powersgd_hook_GBps"],
             "vs copy": res["powersgd_hook_vs_copy"], "s": res["powersgd_hook_s"]},
        ]
        print_table(base)
        extra = []
        if "topk_vs_torch_topk" in res:
            extra.append(f"topk encode is {res['topk_vs_torch_topk']:.1f}x torch.topk")
        if "powersgd_vs_hook" in res:
            extra.append(
                f"powersgd encode+decode is {res['powersgd_vs_hook']:.1f}x faster than the hook math "
                f"(encode alone {res['powersgd_encode_vs_hook']:.1f}x)"
            )
        if extra:
            print("; ".join(extra))
        if numel >= TARGET_MIN_NUMEL and args.device.type == "cpu":  # the targets are the CPU's
            res["targets"] = check_targets(res)
            print_table(res["targets"])
    primary = results[format_size(max(args.numels))]
    summary = {k: v for k, v in primary.items() if k != "targets"}
    payload = {
        "args": {
            "sizes": [format_size(n) for n in args.numels], "threads": args.threads, "repeat": args.repeat,
            "device": str(args.device),
        },
        "primary_size": format_size(max(args.numels)),
        **summary,
        "sizes": results,
    }
    if args.json:
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
