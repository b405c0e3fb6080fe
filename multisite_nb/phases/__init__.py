"""The phases: each a library call that acts, judges its gate and records a typed result.

Each phase is a module or package here exporting its :class:`~.spec.Phase` as ``run``:
``phases.placement.run(campaign, run_dir)``, ``phases.submit.run(campaign, run_dir, "early")``.
The registry (:mod:`.registry`) finds them; the chain follows from their declarations. The phase
modules load on first use (``phases.transfer``), so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["cleanup", "flow", "gather_redistribute", "placement", "qa", "repair", "submit", "transfer", "verify"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
