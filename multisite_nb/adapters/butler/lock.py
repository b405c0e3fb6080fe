"""One operator at a time per campaign: a lock every acting phase takes.

The lock is a RUN collection ``<output prefix>/operator-lock`` in the central repository,
registered atomically with its holder as documentation (owner, host, PID and its start time,
when, which run folder). Every operator of the campaign reaches that registry — on one
machine's world and at the facilities alike — so two operators cannot act on one campaign at
once; the second is refused with the holder named.

A chain holds the lock for all its phases and hands its token to the phase kernels in
``$MSNB_LOCK_TOKEN``; a phase run by hand takes it for its own duration. A lock whose process
is gone (same host, PID not alive) is *stale*: it is reported as such, and broken only on
request (``multisite-nb unlock``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from lsst.daf.butler import CollectionType, MissingCollectionError
from pydantic import BaseModel, ValidationError

from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.adapters.processes import PidRecord, live_pid, proc_start_time
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import MsnbError
from multisite_nb.domain.naming import lock_collection

__all__ = ["ENV_TOKEN", "LockHolder", "LockedError", "OperatorLock", "chain_lock", "operator_lock"]

#: The environment variable carrying a chain's lock token to the phases it runs.
ENV_TOKEN = "MSNB_LOCK_TOKEN"


class LockedError(MsnbError):
    """Another operator (or a dead run) holds the campaign's lock."""


class LockHolder(BaseModel):
    """Who holds a campaign's lock."""

    owner: str
    host: str
    pid: int
    pid_start: int | None = None
    started: str
    run_dir: str = ""
    token: str

    @property
    def stale(self) -> bool:
        """Held by a process of this host that is gone (another host's process cannot be checked)."""
        return self.host == socket.gethostname() and live_pid(PidRecord(self.pid, self.pid_start)) is None

    def __str__(self) -> str:
        state = " — its process is gone (stale)" if self.stale else ""
        return f"{self.owner}@{self.host} (pid {self.pid}) since {self.started}, run {self.run_dir or '-'}{state}"


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER") or f"uid {os.getuid()}"


class OperatorLock:
    """The lock of one campaign (in its central repository)."""

    def __init__(self, campaign: Campaign):
        self.campaign = campaign
        self.name = lock_collection(campaign)
        self.repo = campaign.butler_repo(campaign.central)
        self.db_auth = campaign.db_auth

    def holder(self) -> LockHolder | None:
        """The current holder; `None` if the lock is free."""
        with open_butler(self.repo, db_auth=self.db_auth) as butler:
            try:
                doc = butler.collections.get_info(self.name).doc
            except MissingCollectionError:
                return None
        try:
            return LockHolder.model_validate_json(doc or "")
        except ValidationError:  # being taken right now (registered, holder not readable)
            return LockHolder(owner="?", host="?", pid=0, started="?", token="")

    def acquire(self, run_dir: str | os.PathLike[str] = "") -> str | None:
        """Take the lock; returns its token, or `None` if this process already holds it (``$MSNB_LOCK_TOKEN``).

        Raises
        ------
        LockedError
            Naming the holder (and saying so when its process is gone).
        """
        mine = os.environ.get(ENV_TOKEN)
        holder = LockHolder(
            owner=_who(),
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=proc_start_time(os.getpid()),
            started=datetime.now(UTC).isoformat(),
            run_dir=str(Path(run_dir).resolve()) if run_dir else "",
            token=uuid.uuid4().hex,
        )
        with open_butler(self.repo, writeable=True, db_auth=self.db_auth) as butler:
            if butler.collections.register(self.name, CollectionType.RUN, doc=holder.model_dump_json()):
                return holder.token
        current = self.holder()
        if current is not None and mine and current.token == mine:
            return None
        if current is None:  # released meanwhile: try once more
            return self.acquire(run_dir)
        hint = "; break it with `multisite-nb unlock`" if current.stale else "; wait for it, or ask them"
        raise LockedError(f"campaign {self.campaign.name} is locked by {current}{hint}")

    def release(self, token: str) -> None:
        """Give the lock back (only the holder's token releases it)."""
        current = self.holder()
        if current is None or current.token != token:
            return
        with open_butler(self.repo, writeable=True, db_auth=self.db_auth) as butler:
            butler.collections.x_remove(self.name)

    def break_lock(self, *, force: bool = False) -> LockHolder | None:
        """Remove a stale lock (or any, with ``force``); returns the holder removed.

        Raises
        ------
        LockedError
            If the holder may still be working (alive, or on another host) and not ``force``.
        """
        current = self.holder()
        if current is None:
            return None
        if not current.stale and not force:
            raise LockedError(
                f"campaign {self.campaign.name} is locked by {current}: not stale; "
                "--force breaks it anyway (only if you know that run is dead)"
            )
        with (
            open_butler(self.repo, writeable=True, db_auth=self.db_auth) as butler,
            contextlib.suppress(MissingCollectionError),
        ):
            butler.collections.x_remove(self.name)
        return current


@contextlib.contextmanager
def operator_lock(campaign: Campaign, run_dir: str | os.PathLike[str] = "") -> Iterator[str | None]:
    """Hold the campaign's lock for the block (re-entrant for a chain's own phases)."""
    lock = OperatorLock(campaign)
    token = lock.acquire(run_dir)
    try:
        yield token
    finally:
        if token is not None:
            lock.release(token)


@contextlib.contextmanager
def chain_lock(campaign: Campaign, run_dir: str | os.PathLike[str], *, resume: bool = False) -> Iterator[str | None]:
    """Hold the lock for a whole chain, its token handed to the phase kernels in ``$MSNB_LOCK_TOKEN``.

    Resuming a run whose own dead chain left the lock stale takes it over: resuming that run is
    the operator's request to go on with it.
    """
    lock = OperatorLock(campaign)
    try:
        token = lock.acquire(run_dir)
    except LockedError:
        holder = lock.holder()
        if not (resume and holder is not None and holder.stale and holder.run_dir == str(Path(run_dir).resolve())):
            raise
        lock.break_lock()
        token = lock.acquire(run_dir)
    previous = os.environ.get(ENV_TOKEN)
    if token is not None:
        os.environ[ENV_TOKEN] = token
    try:
        yield token
    finally:
        if token is not None:
            if previous is None:
                os.environ.pop(ENV_TOKEN, None)
            else:
                os.environ[ENV_TOKEN] = previous
            lock.release(token)
