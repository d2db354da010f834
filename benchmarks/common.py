"""Helpers every benchmark shares: timing, the copy-bandwidth baseline, sizes, a table
printer and JSON output stamped with what machine produced it.

Every figure a benchmark reports should be put next to a baseline measured in the same
run (``copy_bandwidth`` here), since absolute numbers on shared machines drift.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864 (binary K/M/G suffixes; a plain number is taken as is).

    Raises:
        ValueError: not a size.
    """
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 256K, 64M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    """67108864 -> ``"64M"``; sizes that are not whole K/M/G print as numbers."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over the repeats (warm-up excluded)."""

    median: float
    best: float
    worst: float
    repeats: int

    def rate(self, amount: float) -> float:
        """``amount`` per second at the median time (e.g. GB/s for an amount in GB)."""
        return amount / self.median if self.median > 0 else float("inf")


def timeit(
    fn: Callable[[], Any],
    *,
    repeat: int = 5,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
    sync: Callable[[], Any] | None = None,
) -> Timing:
    """Time ``fn``: ``warmup`` untimed calls, then the median of ``repeat`` timed calls.

    Args:
        setup: called before every call, outside the timed region (e.g. to restore an
            input that ``fn`` overwrites).
        sync: called at the end of every timed region (e.g. ``torch.cuda.synchronize``).
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    for _ in range(max(1, repeat)):
        if setup is not None:
            setup()
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), len(times))


def timeit_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeat: int = 5,
    warmup: int = 1,
    setup: dict[str, Callable[[], Any]] | None = None,
    sync: Callable[[], Any] | None = None,
) -> dict[str, Timing]:
    """Time several functions taking turns (a, b, c, a, b, c, ...), so that each sees the
    same machine: on shared hosts, load drifts within seconds, and a ratio of two figures
    measured a minute apart says more about the neighbours than about the code.

    Args:
        setup: per-name untimed preparation run before each call of that function.
    """
    setup = setup or {}
    for _ in range(warmup):
        for name, fn in fns.items():
            if name in setup:
                setup[name]()
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            if name in setup:
                setup[name]()
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - t0)
    return {
        name: Timing(statistics.median(ts), min(ts), max(ts), len(ts)) for name, ts in times.items()
    }


class CopyBaseline:
    """``dst.copy_(src)`` of float32 into a preallocated tensor: the bandwidth baseline.

    Call it inside :func:`timeit_interleaved` next to what it is the baseline of.
    """

    def __init__(self, numel: int, device: str | torch.device = "cpu") -> None:
        self.numel = numel
        self.src = torch.randn(numel, device=device)
        self.dst = torch.empty_like(self.src)

    def __call__(self) -> None:
        self.dst.copy_(self.src)

    def gbps(self, t: Timing) -> float:
        return t.rate(self.numel * 4 / 1e9)


def check_device(name: str) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``, ``npu``) as a device this process can use,
    through the runtime's device layer (:func:`suanwang.runtime.device.torch_device`).

    Raises:
        ValueError: not a device name, or its backend is missing or sees no such device
            (the message says which).
    """
    from suanwang.runtime.device import DeviceUnavailable, import_torch_npu, torch_device

    try:
        if name.split(":")[0] == "npu":
            import_torch_npu()  # torch knows the name only once torch_npu registered it
        dev = torch.device(name)
    except DeviceUnavailable as err:
        raise ValueError(f"{name!r}: {err}") from None
    except RuntimeError as err:
        raise ValueError(f"{name!r} is not a device name ({err})") from None
    try:
        found = torch_device(dev.type, dev.index or 0)
    except (DeviceUnavailable, ValueError) as err:  # ValueError: a kind the runtime does not run on
        raise ValueError(f"{name!r}: {err}") from None
    if dev.index is not None and found.index != dev.index:  # torch_device wraps the index
        count = getattr(torch, dev.type).device_count()
        raise ValueError(f"{name!r}: this machine has {count} {dev.type} device(s)")
    return found


def device_sync(device: torch.device | str) -> Callable[[], Any] | None:
    """What waits for ``device``'s queued work (``torch.cuda.synchronize``, ...); ``None``
    on CPU, where every op has finished when it returns."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return None
    return getattr(torch, dev.type).synchronize


def copy_bandwidth(numel: int, *, repeat: int = 5, device: str | torch.device = "cpu") -> float:
    """GB/s of float32 input that ``dst.copy_(src)`` moves into a preallocated tensor."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    sync = device_sync(device)
    t = timeit(lambda: dst.copy_(src), repeat=repeat, warmup=2, sync=sync)
    return t.rate(numel * 4 / 1e9)


def close_pipes(proc: subprocess.Popen) -> None:
    """Close a child's stdin and stdout (a peer reading stdin takes EOF as "exit")."""
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


def reap(proc: subprocess.Popen, wait_s: float = 0.0, term_s: float = 3.0) -> None:
    """Give a child ``wait_s`` to exit on its own, then TERM, then KILL; always reaps it."""
    try:
        proc.wait(timeout=wait_s)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=term_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads (torch and the OpenMP/MKL pools it drives)."""
    torch.set_num_threads(n)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What produced the numbers: host, CPU, threads, load, software versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def write_json(path: str | os.PathLike, results: dict[str, Any]) -> None:
    """Write ``results`` with a ``machine`` section (see :func:`machine_info`)."""
    payload = {"machine": machine_info(), **results}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table: one dict per row, floats with 3 significant digits."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "nan"
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns))
