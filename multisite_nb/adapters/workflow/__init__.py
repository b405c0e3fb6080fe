"""Executors: how a step's commands run (``pipetask``, ``bps-parsl``, ``bps-panda``), registered by name.

Only the interface is imported here; the built-in executors load on first lookup.
"""

from __future__ import annotations

from multisite_nb.adapters.workflow.base import *  # noqa: F403 - this package's public face is its interface module's
from multisite_nb.adapters.workflow.base import __all__ as __all__
