"""Fault injection that ships with the product: make a center late or dead on cue.

Tests and drills pass faults to a job; workers consult them at the start of a round.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Literal

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Fault:
    """At ``round``, every worker of ``center`` is delayed by ``seconds`` or its process exits.

    Attributes:
        center: the center hit.
        round: the round (0-based) at whose start the fault fires.
        kind: ``delay`` (sleep ``seconds``) or ``crash`` (the worker process exits).
        seconds: the delay.
    """

    center: str
    round: int
    kind: Literal["delay", "crash"] = "delay"
    seconds: float = 0.0


def fire(faults: tuple[Fault, ...], center: str, round: int, rank: int) -> None:
    for f in faults:
        if f.center != center or f.round != round:
            continue
        log.warning("fault injection: %s at round %d on %s rank %d", f.kind, round, center, rank)
        if f.kind == "delay":
            time.sleep(f.seconds)
        elif f.kind == "crash":
            os._exit(17)
