"""The toolkit's exceptions: one base, a few kinds an operator can act on.

Every message names what is at fault (a file and key, a site and step, a Rucio rule) so
that the error alone says where to look. Catch :class:`MsnbError` to catch them all.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ButlerError",
    "ConfigError",
    "GateError",
    "MsnbError",
    "PlanError",
    "PreflightError",
    "RucioError",
    "ServiceError",
    "StorageError",
    "WorkflowError",
]


class MsnbError(Exception):
    """Base of every error the toolkit raises on purpose."""


class ConfigError(MsnbError, ValueError):
    """A parameter or manifest file is wrong; the message names the file and the key."""


class StorageError(MsnbError, OSError):
    """A folder the toolkit must write to cannot take it (read-only, full, not a run folder)."""


class GateError(MsnbError):
    """A phase cannot start: an earlier phase has no result, or its gate failed."""


class PlanError(MsnbError):
    """A plan does not match the systems it describes (e.g. a planned dataset is gone)."""


class PreflightError(MsnbError):
    """A step was not started because pre-flight found problems (listed in ``problems``).

    Parameters
    ----------
    where
        The site and step, e.g. ``"RAL step1"``.
    problems
        One sentence per problem.
    """

    def __init__(self, where: str, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where}: not started, preflight found problems:\n{lines}")


class ServiceError(MsnbError):
    """An external system (Rucio, a Butler, the workflow system) cannot do what was asked."""


class RucioError(ServiceError):
    """Rucio refused or failed a request."""


class ButlerError(ServiceError):
    """A Butler repository cannot be opened or refused a request."""


class WorkflowError(ServiceError):
    """The workflow system (pipetask, BPS) cannot run or restart a step."""
