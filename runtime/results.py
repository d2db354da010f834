"""What a job reports: per-round records and the final result, JSON-ready."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any


@dataclasses.dataclass
class CenterTotals:
    """Running totals of one center."""

    workers: int
    samples: int = 0
    steps: int = 0
    compute_s: float = 0.0
    wait_s: float = 0.0
    wan_bytes_sent: int = 0


@dataclasses.dataclass
class RoundRecord:
    """One completed round."""

    round: int
    time_s: float
    round_s: float
    participants: list[str]
    excluded: dict[str, str]
    eval_loss: float | None
    wan_bytes: int
    # bytes each link carried in this round (both directions)
    link_bytes: dict[str, int]
    centers: dict[str, dict[str, Any]]
    # a participant failed to reduce and every participant rolled the round back
    abandoned: bool = False
    # streaming: which fragment of the model this round synchronised
    fragment: int = 0
    # time the coordinator waited for this round's evaluation (benchmarks subtract it)
    eval_s: float = 0.0
    # when (on time_s's clock) every participant had reduced: the round's global state
    # exists from then on. Under overlap time_s comes about a slot later, once the
    # workers, busy with the next slot, have applied it.
    reduced_s: float | None = None


@dataclasses.dataclass
class JobResult:
    """The outcome of a job (what ``suanwang run --json`` writes)."""

    job: str
    strategy: str
    codec: str
    centers: dict[str, CenterTotals]
    links: dict[str, dict[str, Any]]
    wan_bytes: int
    rounds: int
    wall_s: float
    initial_eval_loss: float
    final_eval_loss: float
    params_agree: bool
    history: list[RoundRecord]
    events: list[str]
    insecure: bool
    # The parameters every center ended with (not written to JSON).
    final_params: Any = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x

        d = dataclasses.asdict(dataclasses.replace(self, final_params=None))
        del d["final_params"]
        return clean(d)

    def write_json(self, path: str | pathlib.Path) -> None:
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
