"""Integration fixtures: the WAN emulator and the skip rule for tests marked ``root``."""

from __future__ import annotations

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
