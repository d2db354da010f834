"""Round policy: who takes part in a round, decided from what the gateways report.

Pure logic, no Ray: the coordinator feeds it reports and carries out the decision.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class RoundDecision:
    """The outcome of one round.

    Attributes:
        round: the round.
        participants: centers whose payloads every participant holds; they commit.
        excluded: center -> reason, for every live center left out.
    """

    round: int
    participants: tuple[str, ...]
    excluded: Mapping[str, str]

    @property
    def proceed(self) -> bool:
        return bool(self.participants)


def decide_round(
    round: int,
    live: list[str],
    held: Mapping[str, list[str]],
    failures: Mapping[str, str],
) -> RoundDecision:
    """Choose the participants of ``round``.

    Args:
        round: the round.
        live: centers that were asked to take part.
        held: for each center whose gateway reported in time, the senders it holds
            payloads from (itself included).
        failures: center -> why it did not report (late, dead).

    A center takes part only if every other participant holds its payload, so that every
    participant reduces exactly the same set. While that fails, the center with the most
    broken pairs (payloads it lacks plus peers lacking its payload) is dropped, ties by
    name: a center whose own network failed is dropped, not every center it missed.
    """
    excluded: dict[str, str] = {}
    for c in live:
        if c not in held:
            excluded[c] = failures.get(c, "no report before the round deadline")
    parts = sorted(c for c in live if c in held)
    while True:
        broken = {
            c: [g for g in parts if g != c and (c not in held[g] or g not in held[c])]
            for c in parts
        }
        worst = max(parts, key=lambda c: (len(broken[c]), c), default=None)
        if worst is None or not broken[worst]:
            break
        parts.remove(worst)
        excluded[worst] = f"payloads between it and {broken[worst]} did not arrive before the deadline"
    return RoundDecision(round, tuple(parts), excluded)
