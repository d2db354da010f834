"""Fault injection on the WAN plane, scripted per peer and round.

The real transport consults a :class:`LinkFaults` script on every send, so tests and drills
exercise the production code path rather than a copy of it (hivemind's ``FaultyAverager``
drifted from the code it imitated).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from typing import Literal

log = logging.getLogger(__name__)

Action = Literal["drop", "delay", "corrupt", "duplicate", "throttle", "partition"]


@dataclasses.dataclass(frozen=True)
class LinkFault:
    """One scripted fault on what ``center`` sends.

    Attributes:
        center: the sending center.
        action: ``drop`` (payload never sent), ``delay`` (sent ``seconds`` late),
            ``corrupt`` (a bit of chunk data flipped after its checksum was computed),
            ``duplicate`` (sent twice), ``throttle`` (paced to ``rate_mbit``),
            ``partition`` (nothing reaches the peer, calls fail as unreachable).
        peer: receiving center (glob; ``*`` for all).
        rounds: inclusive ``(first, last)`` round range; ``None`` for every round.
        name: payload name glob (``update``, ``rs.*``, ...).
        seconds: for ``delay``.
        rate_mbit: for ``throttle``.
    """

    center: str
    action: Action
    peer: str = "*"
    rounds: tuple[int, int] | None = None
    name: str = "*"
    seconds: float = 0.0
    rate_mbit: float = 0.0

    def matches(self, peer: str, round: int, name: str) -> bool:
        if not fnmatch.fnmatchcase(peer, self.peer) or not fnmatch.fnmatchcase(name, self.name):
            return False
        return self.rounds is None or self.rounds[0] <= round <= self.rounds[1]


class LinkFaults:
    """The faults that apply to one center's sends."""

    def __init__(self, center: str, faults: tuple[LinkFault, ...] | list[LinkFault]):
        self.center = center
        self.faults = tuple(f for f in faults if f.center == center)
        self.fired: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.faults)

    def for_send(self, peer: str, round: int, name: str) -> list[LinkFault]:
        hits = [f for f in self.faults if f.matches(peer, round, name)]
        for f in hits:
            msg = f"fault injection: {f.action} {self.center}->{peer} round {round} {name}"
            log.warning(msg)
            self.fired.append(msg)
        return hits
