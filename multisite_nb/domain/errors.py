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
    "NotReadyError",
    "PlanError",
    "PreflightError",
    "Problem",
    "RucioError",
    "ServiceError",
    "StorageError",
    "WorkflowError",
    "one_line",
]


class MsnbError(Exception):
    """Base of every error the toolkit raises on purpose."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of a foreign library's error, on one line and at most ``limit`` characters."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]


class Problem:
    """One thing wrong with what an operator gave: the file, the key, the value, why, and the fix.

    Its text is one line: ``FILE: key 'KEY': WHY (got VALUE); FIX`` (no key: ``FILE: WHY``).
    """

    __slots__ = ("file", "fix", "key", "value", "why")
    #: ``value`` when there is none to show.
    UNSET: object = object()

    def __init__(self, file: object, why: str, key: str = "", value: object = UNSET, fix: str = "") -> None:
        self.file, self.why, self.key, self.value, self.fix = str(file), why, key, value, fix

    def __str__(self) -> str:
        where = f"{self.file}: key '{self.key}': " if self.key else f"{self.file}: "
        got = "" if self.value is Problem.UNSET else f" (got {_short(self.value)})"
        return f"{where}{self.why}{got}" + (f"; {self.fix}" if self.fix else "")

    def __repr__(self) -> str:
        return f"Problem({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConfigError(MsnbError, ValueError):
    """A parameter or manifest file is wrong; the message names the file and the key.

    ``problems``: every problem found (one line each in the message), when a check collected several.
    """

    def __init__(self, message: str = "", problems: Sequence[Problem] = ()) -> None:
        self.problems = list(problems)
        super().__init__(message or "\n".join(str(p) for p in self.problems))

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> ConfigError:
        """All of ``problems`` as one error (one line each)."""
        return cls(problems=problems)


class NotReadyError(MsnbError):
    """The systems a campaign's manifest names cannot serve it (Rucio down, an RSE unknown, a Butler
    that does not open, an input missing): found before anything is touched, listed in ``problems``."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


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
