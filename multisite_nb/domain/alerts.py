"""Alerts: what needs a person, as one typed record each, and how it was delivered.

An :class:`Alert` names what happened (``cause``), what it blocks, and the one command or decision
for the person (``action``). Its :attr:`Alert.key` (kind, site, subject; never the time) is its
identity: the same alert raised twice is one alert, sent once. The run folder keeps an
:class:`AlertEntry` per key (:mod:`multisite_nb.adapters.alerts`), with the :class:`Delivery` of the
notification (:mod:`multisite_nb.adapters.notify`) and, once a person dealt with it, when.

No credential is in an alert: its texts are built by the toolkit, and whatever looks like one in
them (a password assignment, a bearer token, a password inside a URL, a JSON web token, a private
key) is replaced by ``[redacted]`` when the alert is made (:func:`redact_credentials`), a
placeholder the run folder's secret scan accepts.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field, model_validator

from multisite_nb.domain.results import utcnow

__all__ = [
    "MAX_ALERT_TEXT",
    "REDACTED_MARK",
    "Alert",
    "AlertEntry",
    "AlertKind",
    "Delivery",
    "alert_digest",
    "redact_credentials",
]

#: The longest one field of an alert may be (characters; a longer one is cut with "…").
MAX_ALERT_TEXT = 500

#: What a credential-looking value becomes (the secret scan takes it for a placeholder).
REDACTED_MARK = "[redacted]"

_NAME = r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*)?$"  # a site name, or "" (campaign-wide)

# (pattern, replacement); applied in this order
_CREDENTIALS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|$)", re.S),
        f"{REDACTED_MARK} private key",
    ),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED_MARK),  # a JWT
    (re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{REDACTED_MARK}"),
    (re.compile(r"""(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@"'\\]+:)[^/\s@"'\\]+@"""), rf"\1{REDACTED_MARK}@"),
    (
        re.compile(
            r"""(?i)((?<![A-Za-z0-9])[A-Za-z0-9_-]*?(?:password|passwd|passphrase|pwd|secret|token|api_?key"""
            r"""|access_?key|private_?key|auth)["']?\s*[=:]\s*["']?)(?!\[redacted\])[^\s"'\\,;(){}\[\]]+"""
        ),
        rf"\1{REDACTED_MARK}",
    ),
]


def redact_credentials(text: str) -> str:
    """``text`` with every credential-looking value replaced by :data:`REDACTED_MARK`.

    Parameters
    ----------
    text
        Any text the toolkit puts in an alert (an error message may quote a URL or a setting).

    Returns
    -------
    str
        The text, its passwords, tokens, passwords in URLs, JWTs and private keys redacted.
    """
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    return text


def _line(value: str) -> str:
    """One line, credentials redacted, at most :data:`MAX_ALERT_TEXT` characters."""
    text = redact_credentials(" ".join(value.split()))
    return text if len(text) <= MAX_ALERT_TEXT else text[: MAX_ALERT_TEXT - 1] + "…"


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (use multisite_nb.domain.results.utcnow())")
    return value.astimezone(UTC)


#: A one-line text of an alert (credentials redacted).
Line = Annotated[str, AfterValidator(_line)]
#: A UTC timestamp (naive ones refused).
UtcTime = Annotated[datetime, AfterValidator(_utc)]


class AlertKind(StrEnum):
    """What needs a person."""

    NO_GOOD_COPY = "no_good_copy"  # a file has no good replica left anywhere
    GROUP_HELD = "group_held"  # a group failed its retries and waits for a decision
    SITE_DOWN = "site_down"  # a site's Rucio, Butler or workflow system does not answer
    DISK_FULL = "disk_full"  # an RSE or a local disk cannot take what the campaign writes
    CREDENTIAL_REFUSED = "credential_refused"  # a system refused the campaign's credentials
    PLACEMENT_COLLISION = "placement_collision"  # something of another campaign is in the way
    PHASE_FAILED = "phase_failed"  # a phase's gate failed


def alert_digest(key: str) -> str:
    """The short digest of an alert's key: its file name in the run folder (16 hex digits)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


class Alert(BaseModel):
    """One thing that needs a person.

    Attributes
    ----------
    kind : AlertKind
        What kind of thing.
    site : str
        The site it concerns; ``""`` for the campaign as a whole.
    subject : str
        What exactly (a file, a group, a phase); part of the key.
    cause : str
        One line: what happened.
    blocked : str
        What it blocks.
    action : str
        The one command or decision for the person.
    raised : datetime
        When (timezone-aware UTC; default now).

    Every text is made one line and its credential-looking values redacted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AlertKind
    site: str = Field(default="", pattern=_NAME)
    subject: Line = ""
    cause: Annotated[Line, Field(min_length=1)]
    blocked: Annotated[Line, Field(min_length=1)]
    action: Annotated[Line, Field(min_length=1)]
    raised: UtcTime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _derived_key(cls, data: Any) -> Any:
        """Read an alert written with its key: the key is derived, never taken from the file."""
        if isinstance(data, dict) and "key" in data:
            data = dict(data)
            data.pop("key")
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def key(self) -> str:
        """Its identity: ``kind/site/subject`` (``-`` for an empty part), never the time."""
        return f"{self.kind}/{self.site or '-'}/{self.subject or '-'}"

    @property
    def digest(self) -> str:
        """:func:`alert_digest` of the key."""
        return alert_digest(self.key)

    @property
    def text(self) -> str:
        """One readable line for a chat message."""
        where = self.site or "campaign"
        parts = [f"[{self.kind}] {where}: {self.cause.rstrip('.')}", f"blocks: {self.blocked.rstrip('.')}"]
        return " | ".join([*parts, f"action: {self.action}"])

    def __str__(self) -> str:
        return self.text


class Delivery(BaseModel):
    """How an alert's notification went.

    Attributes
    ----------
    delivered : bool
        Whether the command or the webhook took it.
    attempts : int
        Tries made (0: nothing to send it with).
    error : str
        The last failure (never a webhook's URL), ``""`` when delivered.
    via : str
        ``command``, ``webhook`` or ``none`` (the manifest has no ``notify`` block).
    finished : datetime or None
        When the last try ended.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    delivered: bool = False
    attempts: Annotated[int, Field(ge=0)] = 0
    error: Line = ""
    via: Literal["command", "webhook", "none"] = "none"
    finished: UtcTime | None = None


class AlertEntry(BaseModel):
    """An alert as the run folder keeps it: the alert, its delivery, and whether a person dealt with it.

    Attributes
    ----------
    alert : Alert
        The alert (first raised).
    delivery : Delivery
        Its notification.
    resolved : datetime or None
        When a person marked it dealt with (``None``: still open).
    note : str
        What they said.
    raised_before : int
        How many times this key was raised and resolved before this alert (the same trouble back).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert: Alert
    delivery: Delivery = Delivery()
    resolved: UtcTime | None = None
    note: Line = ""
    raised_before: Annotated[int, Field(ge=0)] = 0

    @property
    def key(self) -> str:
        return self.alert.key

    @property
    def open(self) -> bool:
        """Nobody has marked it resolved yet."""
        return self.resolved is None
