"""The executor interface and its registry: how a step's command is run, by name.

An :class:`Executor` runs one attempt of a step (an :class:`Attempt`: what, where, which
folder) and says how it went (a :class:`Launch`); the runner turns that into a
:class:`~multisite_nb.domain.records.StepRecord`. Executors are registered by name, the way
papermill registers its engines (:func:`register_executor`, :func:`get_executor`); the
built-in ones are ``pipetask``, ``bps-parsl`` and ``bps-panda``, loaded on first use.

The manifest says ``workflow.mode: pipetask | bps``; for ``bps`` the plugin comes from the
BPS site config's ``wmsServiceClass`` (:func:`executor_for`).
"""

from __future__ import annotations

import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import yaml

from multisite_nb.adapters.files import atomic_write_json
from multisite_nb.adapters.processes import ChildRegistry, run_logged
from multisite_nb.domain.config import BPS_MODE, EXECUTOR_ENTRY_POINTS, Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.steps import StepRun

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

#: The entry-point group of executors: name -> an :class:`Executor` class (the toolkit's own are
#: declared in its ``pyproject.toml``; another package can add its own).
ENTRY_POINTS = EXECUTOR_ENTRY_POINTS
_REGISTRY: dict[str, type[Executor]] = {}
_loaded = False
_LOADING = threading.RLock()


# -- what an executor gets and gives ----------------------------------------------------------


@dataclass
class Attempt:
    """One attempt of a step, as the runner hands it to an executor.

    Attributes
    ----------
    campaign, step_run
        What to run.
    number, folder
        ``NN`` and ``<log_dir>/<site>/<step>/attempt-NN/``.
    log
        The attempt's log file (commands append their output to it).
    extend
        Finish an earlier attempt of the same output run instead of starting it.
    previous
        The ``attempt.json`` records of the earlier attempts of this run (oldest first).
    config_overrides
        Task config overrides ``label:name=value``.
    jobs
        Parallel quanta where the executor runs them itself (``pipetask -j``).
    timeout
        Seconds before the command is stopped.
    children
        The registry the attempt's commands are held in while they run.
    record
        What ``attempt.json`` says; executors add to it and `save` it.
    """

    campaign: Campaign
    step_run: StepRun
    number: int
    folder: Path
    log: Path
    extend: bool
    previous: list[dict[str, Any]]
    config_overrides: tuple[str, ...]
    jobs: int
    timeout: float | None
    children: ChildRegistry
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        """The PID record of the command running now (so a later process can find it)."""
        return self.folder / "pid.json"

    def save(self) -> None:
        """Write ``attempt.json`` (atomically)."""
        atomic_write_json(self.folder / "attempt.json", self.record)

    def run(
        self, cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float | None
    ) -> tuple[int | None, bool]:
        """One command of the attempt: (exit code, timed out); `~multisite_nb.adapters.processes.run_logged`."""
        return run_logged(
            cmd, self.log, env=env, cwd=cwd, timeout=timeout, registry=self.children, pid_file=self.pid_file
        )


@dataclass
class Launch:
    """How an attempt's commands ended.

    Attributes
    ----------
    returncode
        The exit code (or the workflow's, for a workflow waited for).
    timed_out
        The command was stopped at the timeout.
    graph
        The quantum graph this attempt ran, if one was made.
    summary
        ``pipetask --summary`` file, if any (causes of failed quanta).
    note
        Something the operator should know.
    already_done
        Quanta found already done when a restart had nothing left to run (then nothing ran).
    """

    returncode: int | None
    timed_out: bool
    graph: Path | None = None
    summary: Path | None = None
    note: str = ""
    already_done: int | None = None


class Executor(ABC):
    """Runs an attempt of a step with one workflow system."""

    #: Registered name (``pipetask``, ``bps-parsl``, ...).
    name: ClassVar[str]
    #: The manifest's ``workflow.mode`` it serves (recorded as the step's ``mode``).
    mode: ClassVar[str]
    #: File name of the attempt's log.
    log_name: ClassVar[str]

    @abstractmethod
    def run(self, attempt: Attempt) -> Launch:
        """Run (or, with ``attempt.extend``, finish) the step; record the commands in ``attempt.record``."""


class BpsPlugin(ABC):
    """What a BPS workflow plugin adds to a submit file and to its jobs' environment."""

    #: Lower-case part of a BPS ``wmsServiceClass`` naming this plugin (``"parsl"``, ``"panda"``).
    wms_match: ClassVar[str]
    #: ``numberOfRetries`` unless the caller says otherwise.
    default_retries: ClassVar[int] = 1
    #: Added to the submit file's ``finalJob`` (beside its queue).
    final_job: ClassVar[Mapping[str, Any]] = {}

    def submit_additions(self) -> dict[str, Any]:
        """Top-level keys this plugin adds to a submit file (e.g. an ``environment``)."""
        return {}

    def job_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment ``bps`` runs with (a plugin may leave variables out)."""
        return dict(env)


# -- registry ----------------------------------------------------------------------------------


def _load_builtins() -> None:
    """Load the executors' entry points once (sites look theirs up from several threads at once)."""
    global _loaded
    with _LOADING:
        if not _loaded:
            for ep in entry_points(group=ENTRY_POINTS):
                cls = ep.load()
                if not (isinstance(cls, type) and issubclass(cls, Executor)):
                    raise ConfigError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINTS}) is not an Executor class")
                _REGISTRY.setdefault(ep.name, cls)
            _loaded = True


def register_executor(name: str, cls: type[Executor]) -> None:
    """Make ``cls`` available as ``name`` (replacing a built-in of that name)."""
    _load_builtins()
    _REGISTRY[name] = cls


def executor_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_executor(name: str) -> Executor:
    """An executor by registered name.

    Raises
    ------
    ConfigError
        If no executor has that name.
    """
    _load_builtins()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ConfigError(f"no executor {name!r} (registered: {', '.join(sorted(_REGISTRY))})") from None


def site_config_path(campaign: Campaign) -> Path:
    """The manifest's BPS site config (``workflow.bps_site_config``), absolute."""
    name = campaign.manifest.workflow.bps_site_config
    if not name:
        raise ConfigError(f"{campaign.manifest_path}: key 'workflow.bps_site_config' is not set")
    path = Path(name)
    return path if path.is_absolute() else (repo_root() / path).resolve()


def bps_executor_for(campaign: Campaign) -> Executor:
    """The BPS executor of the plugin the manifest's BPS site config names (``wmsServiceClass``).

    Raises
    ------
    ConfigError
        If the site config is not set, or names no registered plugin.
    """
    _load_builtins()
    path = site_config_path(campaign)
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as the BPS site config ({exc})") from exc
    cls = str(data.get("wmsServiceClass", "")).lower()
    for name, ex in sorted(_REGISTRY.items()):
        if issubclass(ex, BpsPlugin) and ex.wms_match in cls:
            return get_executor(name)
    known = [ex.wms_match for ex in _REGISTRY.values() if issubclass(ex, BpsPlugin)]
    raise ConfigError(f"{path}: key 'wmsServiceClass' is {cls!r}, none of the BPS plugins {known}")


def executor_for(campaign: Campaign, mode: str | None = None) -> Executor:
    """The executor for ``mode`` (default: the manifest's ``workflow.mode``).

    ``pipetask`` runs ``pipetask run`` here; ``bps`` picks ``bps-parsl`` or ``bps-panda`` from
    the BPS site config; any other registered name is taken as it is.
    """
    mode = mode or campaign.manifest.workflow.mode
    if mode == BPS_MODE:
        return bps_executor_for(campaign)
    return get_executor(mode)


# -- what every executor's commands need ---------------------------------------------------------


def tool_path(name: str) -> str:
    """A command of the toolkit's venv (``pipetask``, ``bps``), else as found on ``PATH``."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def child_env(extra: Mapping[str, str] | None = None, *, db_auth: str | None = None) -> dict[str, str]:
    """This process's environment with the venv's ``bin`` on ``PATH`` and ``extra`` expanded into it;
    ``db_auth``: daf_butler's registry credentials file, handed to the child as ``LSST_DB_AUTH``."""
    env = dict(os.environ)
    if db_auth:
        env["LSST_DB_AUTH"] = db_auth
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    for key, value in (extra or {}).items():
        env[key] = os.path.expandvars(value.replace("${" + key + "}", env.get(key, ""))).rstrip(":")
    return env
