"""The workflow systems: how a step's commands run (``pipetask``, ``bps-parsl``, ``bps-panda``).

Executors are registered by name through the entry points ``multisite_nb.executors`` (the
toolkit's own in its ``pyproject.toml``); a site manifest's ``workflow.mode`` names one, or
``bps`` for the BPS plugin its site config names. Only the interface is imported here; the
executors load on first lookup. :mod:`.submitfile` writes BPS submit files, :mod:`.panda` builds
a PanDA workflow offline, :mod:`.status` reads a step's quanta from its graph and the Butler.
"""

from __future__ import annotations

from multisite_nb.adapters.workflow.base import *  # noqa: F403 - this package's public face is its interface module's
from multisite_nb.adapters.workflow.base import __all__ as __all__
