"""A run folder's alerts: ``<run_dir>/alerts/<digest of the key>.json``, one per alert, sent once.

:func:`raise_alert` keeps the alert and sends it (:func:`multisite_nb.adapters.notify.send`), unless
an entry with the same key is there already: then nothing is sent again and that entry is returned
(one that was never delivered is tried again, a person not having heard of it yet). A key raised again
after a person (or the supervisor) resolved it is the same trouble back: a new alert, sent, its entry
counting the times before. Raising the same key from two threads or processes at once sends it once
(a lock file per key). :func:`load_alerts`
reads them all, oldest first, skipping a file that cannot be read; :func:`resolve_alert` marks one
dealt with, keeping it. Every file is written atomically, and holds no credential: the alert's
texts are redacted when it is made, and the delivery's error never names a webhook's URL.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.notify import scrub, send
from multisite_nb.domain.alerts import MAX_ALERT_TEXT, Alert, AlertEntry, alert_digest
from multisite_nb.domain.config import Notify
from multisite_nb.domain.results import utcnow

__all__ = ["alert_path", "alerts_dir", "load_alerts", "open_alerts", "raise_alert", "resolve_alert"]


def alerts_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``<run_dir>/alerts``."""
    return Path(run_dir) / "alerts"


def alert_path(run_dir: str | os.PathLike[str], key: str) -> Path:
    """Where the alert of ``key`` is kept: ``<run_dir>/alerts/<16 hex digits>.json``."""
    return alerts_dir(run_dir) / f"{alert_digest(key)}.json"


@contextmanager
def _held(run_dir: str | os.PathLike[str], key: str) -> Iterator[None]:
    """Hold the key's lock file (threads and processes alike) while the block runs."""
    folder = alerts_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".{alert_digest(key)}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: Path) -> AlertEntry | None:
    try:
        return AlertEntry.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return None


def _write(run_dir: str | os.PathLike[str], entry: AlertEntry) -> None:
    atomic_write_text(alert_path(run_dir, entry.key), entry.model_dump_json(indent=2) + "\n")


def _scrubbed(alert: Alert, notify: Notify | None) -> Alert:
    """The alert without the webhook's URL in any of its texts (the toolkit never puts it there)."""
    url = notify.webhook.get_secret_value() if notify is not None and notify.webhook is not None else None
    if not url:
        return alert
    fields = ("subject", "cause", "blocked", "action")
    scrubbed = {f: scrub(getattr(alert, f), url, limit=MAX_ALERT_TEXT) for f in fields}
    changed = {f: v for f, v in scrubbed.items() if v != getattr(alert, f)}
    return alert.model_validate({**alert.model_dump(), **changed}) if changed else alert


def raise_alert(
    run_dir: str | os.PathLike[str],
    alert: Alert,
    notify: Notify | None,
    *,
    log: Callable[[str], object] = print,
) -> AlertEntry:
    """Keep ``alert`` in the run folder and send it, once per key.

    Parameters
    ----------
    run_dir
        The run folder.
    alert
        The alert.
    notify
        The site manifest's ``notify`` block (``campaign.manifest.notify``); ``None``: kept, not sent.
    log
        Gets a line when the alert could not be delivered (see :func:`~multisite_nb.adapters.notify.send`).

    Returns
    -------
    AlertEntry
        The entry now in ``alerts/``: the one already there for this key (not sent again), or the new
        one with its delivery. An entry there that was never delivered (and is not resolved) is
        sent again when ``notify`` is given, its attempts added up; one that was resolved is
        replaced by ``alert``, sent as new.
    """
    alert = _scrubbed(alert, notify)
    path = alert_path(run_dir, alert.key)
    with _held(run_dir, alert.key):
        have = _read(path) if path.is_file() else None
        before = 0
        if have is not None and not have.open:  # resolved, and raised again: the trouble is back
            before, have = have.raised_before + 1, None
        if have is not None and (have.delivery.delivered or notify is None):
            return have
        delivery = send(have.alert if have is not None else alert, notify, log=log)
        if have is not None:
            delivery = delivery.model_copy(update={"attempts": have.delivery.attempts + delivery.attempts})
            entry = have.model_copy(update={"delivery": delivery})
        else:
            entry = AlertEntry(alert=alert, delivery=delivery, raised_before=before)
        _write(run_dir, entry)
        return entry


def load_alerts(run_dir: str | os.PathLike[str] | None) -> list[AlertEntry]:
    """Every alert of the run folder, oldest first (a file that cannot be read is skipped)."""
    folder = alerts_dir(run_dir) if run_dir is not None else None
    if folder is None or not folder.is_dir():
        return []
    entries = [e for p in sorted(folder.glob("*.json")) if not p.name.startswith(".") and (e := _read(p)) is not None]
    return sorted(entries, key=lambda e: (e.alert.raised, e.key))


def open_alerts(run_dir: str | os.PathLike[str] | None) -> list[AlertEntry]:
    """The alerts nobody has resolved yet, oldest first."""
    return [e for e in load_alerts(run_dir) if e.open]


def resolve_alert(run_dir: str | os.PathLike[str], key: str, *, note: str = "") -> AlertEntry | None:
    """Mark the alert of ``key`` dealt with by a person (kept, no longer open).

    Parameters
    ----------
    run_dir
        The run folder.
    key
        The alert's key (:attr:`~multisite_nb.domain.alerts.Alert.key`).
    note
        What was done (one line).

    Returns
    -------
    AlertEntry or None
        The entry as now kept (one resolved before keeps its first resolution); ``None`` if the run
        folder holds no readable alert of that key.
    """
    path = alert_path(run_dir, key)
    if not path.is_file():
        return None
    with _held(run_dir, key):
        have = _read(path)
        if have is None or not have.open:
            return have
        # validated again: the note is made one line, its credentials redacted
        entry = AlertEntry.model_validate({**have.model_dump(), "resolved": utcnow(), "note": note})
        _write(run_dir, entry)
        return entry
