"""Executors: how a step's commands run (``pipetask``, ``bps-parsl``, ``bps-panda``), registered by name.

Only the interface is imported here; the built-in executors load on first lookup.
"""

from __future__ import annotations

from .base import (
    Attempt,
    BpsPlugin,
    Executor,
    Launch,
    bps_executor_for,
    child_env,
    executor_for,
    executor_names,
    get_executor,
    register_executor,
    site_config_path,
    tool_path,
)

__all__ = [
    "Attempt",
    "BpsPlugin",
    "Executor",
    "Launch",
    "bps_executor_for",
    "child_env",
    "executor_for",
    "executor_names",
    "get_executor",
    "register_executor",
    "site_config_path",
    "tool_path",
]
