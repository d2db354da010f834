"""Network-namespace plumbing of the WAN emulator: running ``ip``/``tc``, whether an
emulator can be built here, and which namespaces belong to live or crashed emulators (each
live emulator holds an exclusive ``flock`` on ``/run/suanwang-wanemu/<prefix>.lock``).

A process an emulator runs outside its namespaces (the packet delayer of ``latency="tun"``,
which lives in the host's namespace) is recorded in ``/run/suanwang-wanemu/<prefix>.pid``
as ``pid starttime``, so that :func:`cleanup_stale` can stop it when its emulator crashed
(the start time guards against a recycled pid).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from suanwang.runtime.wan.relay import EmulatorError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "swemu"
_STATE_DIR = Path("/run/suanwang-wanemu")


def _run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise EmulatorError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_list() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_kill_and_delete(ns: str) -> None:
    """Kill every process inside ``ns`` (TERM, then KILL), then delete the namespace."""
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
        pids = [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.02)
    _run("ip", "netns", "del", ns, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


_AVAILABLE: tuple[bool, str] | None = None


def emulator_available(latency: str = "relay") -> tuple[bool, str]:
    """Whether a :class:`WanEmulator` with ``latency`` can be created here, and if not, why.

    Checks root, the ``ip`` and ``tc`` tools, and actually creates (then removes) a probe
    namespace with a tbf-shaped veth pair; for ``latency="tun"`` also the TUN driver
    (``/dev/net/tun``). The answer is cached for the process.

    Returns:
        ``(True, "")`` or ``(False, reason)``.
    """
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = _check_available()
    if _AVAILABLE[0] and latency == "tun" and not os.path.exists("/dev/net/tun"):
        return False, "latency='tun' needs the TUN driver: /dev/net/tun does not exist"
    return _AVAILABLE


def _check_available() -> tuple[bool, str]:
    if sys.platform != "linux":
        return False, f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return False, "needs root for network namespaces and tc (euid is %d)" % os.geteuid()
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not found on PATH (install iproute2)"
    try:
        prefix, lock_fd = _claim_prefix(None)
    except (EmulatorError, OSError) as exc:
        return False, str(exc)
    ns = f"{prefix}-probe"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        _run("tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "tbf",
             "rate", "100mbit", "burst", "32k", "limit", "128k")
        _run("ip", "netns", "exec", ns, "true")
    except (EmulatorError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create a shaped network namespace: {exc}"
    finally:
        _run("ip", "netns", "del", ns, check=False)
        _release_prefix(prefix, lock_fd)
    return True, ""


def _claim_prefix(requested: str | None) -> tuple[str, int]:
    """Pick a prefix (``requested`` or a random one) and hold its lock file exclusively.

    Returns:
        ``(prefix, fd)``; the lock lives as long as ``fd`` is open (not inherited by children).
    """
    try:
        _STATE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmulatorError(f"cannot create {_STATE_DIR}: {exc}") from None
    for _ in range(100):
        prefix = requested or f"{DEFAULT_PREFIX}{secrets.token_hex(3)}"
        path = _STATE_DIR / f"{prefix}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if requested:
                raise EmulatorError(f"prefix {prefix!r} is held by a live emulator") from None
            continue
        if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)  # a concurrent cleanup_stale unlinked it before we locked it
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        cleanup_stale(prefix + "-", force=True)  # a crashed run's leftovers under this name
        return prefix, fd
    raise EmulatorError("could not find a free emulator prefix")


def _record_process(prefix: str, pid: int) -> None:
    """Record ``pid`` as a process of emulator ``prefix`` that lives outside its namespaces."""
    (_STATE_DIR / f"{prefix}.pid").write_text(f"{pid} {_start_time(pid)}\n")


def _forget_process(prefix: str) -> None:
    (_STATE_DIR / f"{prefix}.pid").unlink(missing_ok=True)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _kill_recorded(path: Path) -> None:
    """Kill the process recorded in ``path`` (if it is still that process), then unlink it."""
    try:
        pid_s, start_s = path.read_text().split()
        pid, start = int(pid_s), int(start_s)
    except (OSError, ValueError):
        pid = start = None  # type: ignore[assignment]
    if pid is not None and _start_time(pid) == start:
        for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)
            if not _alive(pid):
                break
    path.unlink(missing_ok=True)


def _release_prefix(prefix: str, fd: int) -> None:
    (_STATE_DIR / f"{prefix}.lock").unlink(missing_ok=True)
    os.close(fd)


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, force: bool = False) -> list[str]:
    """Remove namespaces (and the processes in them) left by crashed emulators.

    A namespace whose name starts with ``prefix`` is stale when no live process holds the
    lock of the emulator that created it. Live emulators (of this or another process) are
    left alone unless ``force`` is true.

    The processes such an emulator recorded outside its namespaces (its packet delayer)
    are stopped as well.

    Args:
        prefix: namespace-name prefix to consider; an emulator's own prefix, or the default
            that every emulator's prefix starts with.
        force: also remove namespaces (and recorded processes) of live emulators.

    Returns:
        The namespaces removed.
    """
    removed = []
    live: dict[str, bool] = {}
    for ns in _netns_list():
        if not ns.startswith(prefix) or "-" not in ns:
            continue
        inst = ns.split("-", 1)[0]
        if inst not in live:
            live[inst] = not force and _instance_alive(inst)
        if not live[inst]:
            _netns_kill_and_delete(ns)
            removed.append(ns)
    if _STATE_DIR.is_dir():
        for rec in _STATE_DIR.glob("*.pid"):
            inst = rec.stem  # ``prefix`` may be a namespace prefix, ``<inst>-``
            if (inst + "-").startswith(prefix) or inst.startswith(prefix):
                if force or not _instance_alive(inst):
                    _kill_recorded(rec)
        for lock in _STATE_DIR.glob(f"{prefix}*.lock"):
            if not _instance_alive(lock.stem):
                lock.unlink(missing_ok=True)
    if removed:
        log.warning("removed stale WAN emulator namespaces: %s", ", ".join(removed))
    return removed


def _instance_alive(inst: str) -> bool:
    path = _STATE_DIR / f"{inst}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
