"""Executors: how a step's commands run (``pipetask``, ``bps-parsl``, ``bps-panda``), registered by name.

Only the interface is imported here; the built-in executors load on first lookup.
"""

from __future__ import annotations

from .base import *  # noqa: F403 - this package's public face is its interface module's
from .base import __all__ as __all__
