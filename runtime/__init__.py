"""suanwang's runtime: config, strategies, the WAN plane, Ray actors and the job API.

Heavy modules (Ray, gRPC) load on first use, so ``import suanwang.runtime.config`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Job": "suanwang.runtime.job",
    "JobFunctions": "suanwang.runtime.functions",
    "DataShard": "suanwang.runtime.functions",
    "JobConfig": "suanwang.runtime.config",
    "ConfigError": "suanwang.runtime.config",
    "load_config": "suanwang.runtime.config",
    "parse_config": "suanwang.runtime.config",
    "Fault": "suanwang.runtime.faults",
    "JobResult": "suanwang.runtime.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'suanwang.runtime' has no attribute {name!r}")
