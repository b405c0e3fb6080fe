"""Placement's worker processes, started when first needed (spawned: each opens its own Butler)."""

from __future__ import annotations

from typing import Any


class Workers:
    """Worker processes for placement, started when first needed (spawned: each opens its own Butler)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: Any = None

    def pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.n, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self, *, stop: bool = False) -> None:
        """Shut the workers down; ``stop``: without letting running jobs finish (after an error)."""
        if self._pool is None:
            return
        if stop:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()  # a job already running would read its whole range first
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


def default_workers() -> int:
    """The CPUs this process may use, at most 4."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)
