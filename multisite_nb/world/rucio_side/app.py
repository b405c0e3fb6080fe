"""WSGI entry point of the embedded world's Rucio server (for gunicorn: ``app:application``).

Imports :mod:`world_policy` first (SQLite adaptations, the ``butler_path`` lfn2pfn
algorithm), then Rucio's Flask application. Run with the Rucio server venv and
``RUCIO_CONFIG`` pointing at the world's server config.
"""

import logging

import world_policy  # (must precede every rucio.core import)

world_policy.patch_core()

from rucio.web.rest.flaskapi.v1.main import application  # noqa: E402


class _DropBooleanNagging(logging.Filter):
    """rucio-clients 41 sends 0/1 for some booleans; the server logs a warning per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Booleans should only accept true/false")


logging.getLogger().addFilter(_DropBooleanNagging())

__all__ = ["application"]
