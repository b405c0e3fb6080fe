"""Submission: pipeline steps at the sites, with ``pipetask`` or BPS, through the real middleware.

What runs where (:mod:`.steprun`), its BPS submit file (:mod:`.submitfile`), the checks
before it starts (:mod:`.preflight`), the workflow systems that run it (:mod:`.executors`),
one attempt and its record (:mod:`.runner`, :mod:`.status`), and a stage's steps at its
sites (:mod:`.stage`, :mod:`.summary`).

No step or dataset type name is written here: steps are pipeline subsets named by the
caller, and the log / config dataset types come from the pipeline graph.

The names below load on first use, so importing the package (or :mod:`.summary`) does not
import the middleware.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executors import (
        Attempt,
        BpsPlugin,
        Executor,
        Launch,
        executor_for,
        executor_names,
        get_executor,
        register_executor,
    )
    from .preflight import preflight
    from .runner import run_step, running_steps, stop_running_steps
    from .stage import run_sites, run_steps
    from .steprun import StepRun, reference_step_run, step_run
    from .submitfile import SampleSubmitFile, sample_submit_files, submit_file, write_submit_file
    from .summary import InFlight, dump_steps, steps_table, steps_verdict

_EXPORTS = {
    "Attempt": "executors",
    "BpsPlugin": "executors",
    "Executor": "executors",
    "Launch": "executors",
    "executor_for": "executors",
    "executor_names": "executors",
    "get_executor": "executors",
    "register_executor": "executors",
    "preflight": "preflight",
    "run_step": "runner",
    "running_steps": "runner",
    "stop_running_steps": "runner",
    "run_sites": "stage",
    "run_steps": "stage",
    "StepRun": "steprun",
    "reference_step_run": "steprun",
    "step_run": "steprun",
    "SampleSubmitFile": "submitfile",
    "sample_submit_files": "submitfile",
    "submit_file": "submitfile",
    "write_submit_file": "submitfile",
    "InFlight": "summary",
    "dump_steps": "summary",
    "steps_table": "summary",
    "steps_verdict": "summary",
}

__all__ = [
    "Attempt",
    "BpsPlugin",
    "Executor",
    "InFlight",
    "Launch",
    "SampleSubmitFile",
    "StepRun",
    "dump_steps",
    "executor_for",
    "executor_names",
    "get_executor",
    "preflight",
    "reference_step_run",
    "register_executor",
    "run_sites",
    "run_step",
    "run_steps",
    "running_steps",
    "sample_submit_files",
    "step_run",
    "steps_table",
    "steps_verdict",
    "stop_running_steps",
    "submit_file",
    "write_submit_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
