"""Sending an alert to a person: the site manifest's ``notify`` command or webhook.

:func:`send` delivers one :class:`~multisite_nb.domain.alerts.Alert` the way the manifest's
:class:`~multisite_nb.domain.config.Notify` says, and returns its
:class:`~multisite_nb.domain.alerts.Delivery`. Both ways get the same JSON, Slack-style::

    {"text": "<alert.text>", "alert": {"kind": ..., "site": ..., "key": ..., ...}}

* ``command``: run (in its own session, the caller's environment without the chain's lock token)
  with that JSON on stdin; exit 0 is delivered; a non-zero exit or a timeout is tried again;
* ``webhook``: an HTTP POST of it (``Content-Type: application/json``, the standard library only);
  a 2xx is delivered; a refused connection, a timeout, an HTTP 5xx (or 429, too many requests) is
  tried again; any other 4xx is not (the request itself is wrong).

Tries are ``1 + retries``, waiting ``backoff_s`` before the second, doubling. The webhook's URL
usually holds a token: it is never in the delivery, the log or an error text (it is replaced by
``<webhook>`` wherever an exception quotes it, whole or in part). After the last failure one line is
logged, naming the alert's key and the error.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from multisite_nb.adapters.processes import stop_group
from multisite_nb.domain.alerts import Alert, Delivery, redact_credentials
from multisite_nb.domain.config import Notify
from multisite_nb.domain.results import utcnow

__all__ = ["payload", "scrub", "send"]

#: What stands for a webhook's URL (or a piece of it) in an error text.
WEBHOOK_MARK = "<webhook>"
#: The chain's lock token reaches its phase kernels in this variable; a notify command never needs it.
_LOCK_TOKEN_ENV = "MSNB_LOCK_TOKEN"
_MAX_ERROR = 300
_MAX_BACKOFF_S = 300.0


def payload(alert: Alert) -> dict[str, Any]:
    """The JSON a command or a webhook receives: ``{"text": alert.text, "alert": {...its fields...}}``."""
    return {"text": alert.text, "alert": alert.model_dump(mode="json")}


def _secret_parts(url: str) -> list[str]:
    """The URL, its path and query, and each of their pieces long enough to be a token (longest first)."""
    parts = urlsplit(url)
    tail = url[len(f"{parts.scheme}://{parts.netloc}") :] if parts.netloc else url
    pieces = [url, tail, parts.path, parts.query]
    pieces += [p for p in parts.path.split("/") if len(p) >= 6]
    pieces += [v for kv in parts.query.split("&") for v in kv.split("=")[1:] if len(v) >= 6]
    if parts.password:
        pieces.append(parts.password)
    return sorted({p for p in pieces if len(p) >= 6}, key=len, reverse=True)


def scrub(text: str, url: str | None, *, limit: int = _MAX_ERROR) -> str:
    """``text`` without the webhook ``url`` (whole or in part), credentials redacted, one line of at most ``limit``."""
    if url:
        for piece in _secret_parts(url):
            text = text.replace(piece, WEBHOOK_MARK)
    text = redact_credentials(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(url: str) -> str:
    """What a log line may say of a webhook: its host, never its path or query."""
    host = urlsplit(url).hostname or "?"
    port = urlsplit(url).port
    return f"webhook at {host}{f':{port}' if port else ''}"


def _post(url: str, body: bytes, timeout_s: float) -> tuple[bool, bool, str]:
    """One POST: (delivered, worth trying again, error)."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "multisite-nb"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(4096)
            return True, False, ""
    except urllib.error.HTTPError as exc:
        try:
            said = exc.read(300).decode("utf-8", errors="replace")
        except Exception:  # the body is only a hint
            said = ""
        again = exc.code >= 500 or exc.code == 429
        return False, again, f"HTTP {exc.code} {exc.reason}" + (f": {said}" if said.strip() else "")
    except urllib.error.URLError as exc:  # refused, unreachable, DNS, TLS: the service may come back
        return False, True, f"{type(exc.reason).__name__}: {exc.reason}"
    except (TimeoutError, OSError) as exc:
        return False, True, f"{type(exc).__name__}: {exc}"
    except ValueError as exc:  # not a URL urllib can use: trying again will not help
        return False, False, f"{type(exc).__name__}: {exc}"


def _run(command: list[str], body: bytes, timeout_s: float) -> tuple[bool, bool, str]:
    """One run of the command: (delivered, worth trying again, error)."""
    env = {k: v for k, v in os.environ.items() if k != _LOCK_TOKEN_ENV}
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:  # not found, not executable: trying again will not help
        return False, False, f"cannot run {command[0]}: {exc.strerror or exc}"
    try:
        _, err = proc.communicate(body, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc, timeout=2.0, kill_timeout=2.0)
        proc.communicate()
        return False, True, f"{command[0]} did not end within {timeout_s:g} s"
    if proc.returncode == 0:
        return True, False, ""
    last = next((ln for ln in reversed(err.decode("utf-8", errors="replace").splitlines()) if ln.strip()), "")
    return False, True, f"{command[0]} exited {proc.returncode}" + (f": {last.strip()}" if last else "")


def send(
    alert: Alert,
    notify: Notify | None,
    *,
    log: Callable[[str], object] = print,
    sleep: Callable[[float], object] = time.sleep,
) -> Delivery:
    """Deliver ``alert`` by the manifest's ``notify`` block, trying again on a passing failure.

    Parameters
    ----------
    alert
        The alert.
    notify
        The site manifest's ``notify`` block; ``None``: nothing is sent (``via="none"``, 0 attempts).
    log
        Gets one line after the last failure: the alert's key and the error (never a webhook's URL).
    sleep
        How to wait between tries.

    Returns
    -------
    Delivery
        Delivered or not, after how many tries, and the last error.
    """
    if notify is None:
        return Delivery(delivered=False, attempts=0, error="no notify block in the site manifest", via="none")
    body = json.dumps(payload(alert), ensure_ascii=False).encode("utf-8")
    url = notify.webhook.get_secret_value() if notify.webhook is not None else None
    via: Literal["command", "webhook"] = "command" if url is None else "webhook"
    attempts, wait = 0, notify.backoff_s
    while True:
        attempts += 1
        if url is not None:
            ok, again, error = _post(url, body, notify.timeout_s)
        else:
            assert notify.command is not None  # Notify holds exactly one of them
            ok, again, error = _run(list(notify.command), body, notify.timeout_s)
        if ok:
            return Delivery(delivered=True, attempts=attempts, via=via, finished=utcnow())
        if not again or attempts > notify.retries:
            break
        sleep(wait)
        wait = min(wait * 2, _MAX_BACKOFF_S)
    error = scrub(error, url)
    where = _where(url) if url is not None else f"command {notify.command[0] if notify.command else '?'}"
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    log(f"alert {alert.key}: not delivered to the {where} after {tries}: {error}")
    return Delivery(delivered=False, attempts=attempts, error=error, via=via, finished=utcnow())
