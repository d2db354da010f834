"""Checkpoints on disk: every center saves its own state, the coordinator seals the set.

Layout under ``checkpoint.dir``::

    round-000009/
      manifest.json            # written last: its presence marks a complete checkpoint
      shenzhen/gateway.pt      # strategy state (global params, outer momentum), codec
                               # states per tensor group (error feedback, warm starts)
      shenzhen/worker-0.pt     # model, inner optimizer, data stream position, RNG
      ...

A checkpoint is written into ``round-NNNNNN.tmp`` and renamed when every center has saved,
so a job killed mid-save leaves the previous checkpoint as the latest. Each center writes
its own files (in a multi-cluster job, on its own disk).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any

from suanwang.runtime.results import CenterTotals, RoundRecord

MANIFEST = "manifest.json"


def save_atomic(obj: Any, path: str | pathlib.Path) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    import os

    import torch

    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".part")
    torch.save(obj, tmp)
    os.replace(tmp, p)


def round_dir(root: pathlib.Path, round: int) -> pathlib.Path:
    return root / f"round-{round:06d}"


def staging_dir(root: pathlib.Path, round: int) -> pathlib.Path:
    return root / f"round-{round:06d}.tmp"


def gateway_path(base: pathlib.Path, center: str) -> pathlib.Path:
    return base / center / "gateway.pt"


def worker_path(base: pathlib.Path, center: str, rank: int) -> pathlib.Path:
    return base / center / f"worker-{rank}.pt"


@dataclasses.dataclass
class Manifest:
    """What the coordinator knows of a sealed checkpoint."""

    job: str
    round: int
    strategy: str
    centers: dict[str, int]  # name -> workers
    numel: int
    params_digest: str  # of the state every center shares (Worker.shared_digest)
    initial_eval_loss: float
    totals: dict[str, dict[str, Any]]
    link_bytes: dict[str, int]
    wan_bytes: int
    elapsed_s: float
    history: list[dict[str, Any]]
    events: list[str]

    def restore_totals(self) -> dict[str, CenterTotals]:
        return {k: CenterTotals(**v) for k, v in self.totals.items()}

    def restore_history(self) -> list[RoundRecord]:
        return [RoundRecord(**h) for h in self.history]


def seal(root: pathlib.Path, manifest: Manifest, keep: int) -> pathlib.Path:
    """Write the manifest into the staging dir, move it into place, prune old ones."""
    stage = staging_dir(root, manifest.round)
    (stage / MANIFEST).write_text(json.dumps(dataclasses.asdict(manifest), indent=1) + "\n")
    final = round_dir(root, manifest.round)
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)
    sealed = sorted(p for p in root.glob("round-*") if p.is_dir() and (p / MANIFEST).exists() and not p.name.endswith(".tmp"))
    for old in sealed[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: pathlib.Path) -> tuple[pathlib.Path, Manifest] | None:
    """The newest sealed checkpoint under ``root``, or ``None``.

    Raises:
        ValueError: the newest manifest is unreadable (naming the file).
    """
    if not root.is_dir():
        return None
    sealed = sorted(p for p in root.glob("round-*") if not p.name.endswith(".tmp") and (p / MANIFEST).exists())
    if not sealed:
        return None
    path = sealed[-1] / MANIFEST
    try:
        return sealed[-1], Manifest(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"checkpoint manifest {path} is unreadable: {err}") from None
