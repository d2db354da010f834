"""Integration fixtures: the WAN emulator and the skip rule for tests marked ``root``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from suanwang.runtime.wan.emulator import WanEmulator, cleanup_stale, emulator_available


@pytest.fixture(autouse=True)
def _skip_root_tests_without_emulator(request: pytest.FixtureRequest) -> None:
    """Skip a ``@pytest.mark.root`` test, with the reason, where no emulator can be built."""
    if request.node.get_closest_marker("root") is not None:
        ok, why = emulator_available()
        if not ok:
            pytest.skip(f"WAN emulator unavailable: {why}")


@pytest.fixture(scope="session")
def _stale_emulators_removed() -> None:
    """Remove leftovers of crashed runs once per session (live runs are left alone)."""
    if emulator_available()[0]:
        cleanup_stale()


@pytest.fixture
def wan(_stale_emulators_removed: None) -> Iterator[Callable[..., WanEmulator]]:
    """Factory: ``wan(centers, links)`` returns a started emulator, closed after the test."""
    made: list[WanEmulator] = []

    def make(centers: list[str], links: list[tuple], **kwargs: object) -> WanEmulator:
        emu = WanEmulator(centers, links, **kwargs)  # type: ignore[arg-type]
        emu.start()
        made.append(emu)
        return emu

    yield make
    for emu in made:
        emu.close()


_DIAL = textwrap.dedent("""
    import socket, sys
    for host in sys.argv[1:]:
        try:
            socket.create_connection((host, 9), timeout=1).close()
            print("open")
        except ConnectionRefusedError:
            print("refused")  # the host answered: there is a route
        except OSError as exc:
            print(type(exc).__name__)
""")


@pytest.fixture
def dial() -> Callable[..., list[str]]:
    """``dial(emu, src, *centers)``: from ``src``'s namespace, a TCP connect to port 9 of
    each center's address; per center ``"refused"`` (reachable, nothing listening),
    ``"open"`` or the error's name (e.g. ``TimeoutError``: no route)."""

    def run(emu: WanEmulator, src: str, *centers: str) -> list[str]:
        argv = [sys.executable, "-c", _DIAL, *(emu.address(c) for c in centers)]
        return emu.popen(src, argv, stdout=subprocess.PIPE, text=True).communicate(timeout=10)[0].split()

    return run
