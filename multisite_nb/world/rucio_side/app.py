"""WSGI entry point of the embedded world's Rucio server (for gunicorn: ``app:application``).

Imports :mod:`world_policy` first (SQLite limits: caps ``rucio.common.utils.chunks``, chunks
``add_replicas``; registers the ``butler_path`` lfn2pfn algorithm), then Rucio's Flask
application. Run with the Rucio
server venv and ``RUCIO_CONFIG`` pointing at the world's server config.
"""

import world_policy  # (must precede every rucio.core import)

world_policy.patch_core()

from rucio.web.rest.flaskapi.v1.main import application  # noqa: E402

__all__ = ["application"]
