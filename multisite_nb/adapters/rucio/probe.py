"""Asking Rucio whether it can serve a campaign at all: reachable, this account authenticated, its RSEs known.

The preflight's questions, each answered with its own named cause (never a generic failure), and
each bounded in time: an unreachable server is found by one ``/ping`` with a timeout before any
client (which would retry) is made.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.request
from collections.abc import Iterable

from multisite_nb.adapters.rucio.config import RucioClientConfig, make_client
from multisite_nb.domain.errors import RucioError, one_line

__all__ = ["PING_TIMEOUT_S", "authenticated_account", "known_rses", "ping"]

#: Seconds a preflight waits for Rucio's ``/ping`` before calling it unreachable.
PING_TIMEOUT_S = 5.0


def ping(cfg: RucioClientConfig, timeout: float = PING_TIMEOUT_S) -> str:
    """The server's version, from its ``/ping`` (no authentication needed).

    Raises
    ------
    RucioError
        "Rucio at HOST cannot be reached", with the reason.
    """
    url = cfg.host.rstrip("/") + "/ping"
    context = ssl.create_default_context(cafile=cfg.ca_cert) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:  # noqa: S310 - the config's host
            reply = json.loads(answer.read(65536))
        if not isinstance(reply, dict):
            raise ValueError(f"/ping answered {type(reply).__name__}, not Rucio's version")
        return str(reply.get("version", "?"))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = one_line(exc, 200)
        raise RucioError(f"Rucio at {cfg.host} cannot be reached ({reason})") from None


def authenticated_account(cfg: RucioClientConfig) -> str:
    """The account Rucio says this config authenticates as.

    Raises
    ------
    RucioError
        "account ... cannot authenticate at Rucio HOST", with the server's reason.
    """
    try:
        client = make_client(cfg, quiet=True)
        return str(client.whoami()["account"])
    except Exception as exc:  # rucio-clients raises its own kinds (CannotAuthenticate, ...)
        reason = one_line(exc, 200)
        who = cfg.account or "(the config's default account)"
        raise RucioError(f"account {who} cannot authenticate at Rucio {cfg.host} ({cfg.auth_type}): {reason}") from None


def known_rses(cfg: RucioClientConfig, wanted: Iterable[str]) -> set[str]:
    """Which of ``wanted`` RSEs Rucio knows (one listing call)."""
    client = make_client(cfg, quiet=True)
    names = {r["rse"] for r in client.list_rses()}
    return {rse for rse in wanted if rse in names}
