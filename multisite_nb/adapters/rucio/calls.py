"""How the toolkit's Rucio calls are sent: chunked to the server's limits, retried when the database
refuses a write for a moment, and the file DIDs they register."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHUNK", "DID_LIMIT", "FileDid", "chunked", "transient_retry"]


#: Rows per write call: Rucio builds OR-chains per call and SQLite caps expression depth at 1000.
CHUNK = 500


#: DIDs per read call: the server refuses more than 1,000 in one bulk request.
DID_LIMIT = 1000


def chunked[T](items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """Successive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def transient_retry[T](call: Callable[[], T], tries: int = 7, first_wait_s: float = 1.0) -> T:
    """``call()``, again after 1, 2, 4, … 32 s when the server reports a transient database error.

    On PostgreSQL Rucio takes row locks, some with NOWAIT: a write meeting rows a daemon holds
    (the judge-injector filling a large rule) fails with ``DatabaseException`` ("could not obtain
    lock on row"; seen on the 20k world), and two transactions locking the same replicas in another
    order lose one to the database's deadlock check (a rule at the source RSE while a daemon, the
    judge-evaluator or the conveyor, works on the same replicas for another site; which one was not
    confirmed: seen once in CI, without the server's log). Rucio rolls the whole request back,
    so every write wrapped here is safe to send again. lsst-rucio-register retries the same way.
    """
    from rucio.common.exception import DatabaseException

    waited = 0.0
    for attempt in range(tries):
        try:
            return call()
        except DatabaseException as exc:
            if attempt == tries - 1:
                exc.add_note(f"the server refused it {tries} times over {waited:.0f} s (a lock, or not transient)")
                raise
            time.sleep(first_wait_s * 2**attempt)
            waited += first_wait_s * 2**attempt
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FileDid:
    """A file to register: LFN (path relative to the RSE root), size, adler32, metadata."""

    name: str
    bytes: int
    adler32: str
    meta: Mapping[str, Any] = field(default_factory=dict)
