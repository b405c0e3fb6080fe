"""multisite_nb: the operator's toolkit for multisite Rubin data production."""

from __future__ import annotations

__version__ = "0.1.0"
