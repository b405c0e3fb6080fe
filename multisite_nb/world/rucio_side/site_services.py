"""The embedded world's Rucio daemons, run in one process in a loop.

Run with the Rucio server venv, ``RUCIO_CONFIG`` pointing at the world's server config and
the directory of this file on ``PYTHONPATH``::

    .venv-rucio/bin/python site_services.py --log ROOT/logs/site_services.log

Each cycle runs Rucio's own daemon steps (the functions their ``--run-once`` loops call),
only where the database says there is work:

* judge-injector (asynchronous rules), judge-evaluator (DIDs attached to datasets that already
  have rules get locks and transfer requests);
* conveyor-submitter with the ``posix`` transfertool (``posix_transfertool.py``: the copy
  happens at submission), conveyor-poller (job outcome -> request DONE/FAILED), and
  conveyor-finisher (replicas AVAILABLE, locks and rules OK; failures retried, then STUCK);
* abacus account, rse and collection-replica (usage counters, ``list_dataset_replicas``);
* necromancer (replicas declared bad: the rules' locks get new transfers from a good copy, or
  the replica is marked lost when there is none);
* every ``--slow-period`` seconds: judge-repairer, judge-cleaner, and pruning of old
  transfertool job files and undelivered hermes messages (no broker here).

A cycle that found no work sleeps ``--idle-sleep`` seconds. SIGTERM/SIGINT stop the loop at
the end of the current step. Imports only Rucio and the standard library.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import world_policy  # (must come before rucio.core: caps chunks, registers lfn2pfn)

world_policy.patch_core()

import posix_transfertool  # noqa: E402

posix_transfertool.register()

from rucio.common.config import config_get_bool, config_get_int, config_get_list  # noqa: E402
from rucio.core import request as request_core  # noqa: E402
from rucio.core.monitor import MetricManager  # noqa: E402
from rucio.core.topology import ExpiringObjectCache, Topology  # noqa: E402
from rucio.daemons.abacus import account as abacus_account  # noqa: E402
from rucio.daemons.abacus import collection_replica as abacus_collection_replica  # noqa: E402
from rucio.daemons.abacus import rse as abacus_rse  # noqa: E402
from rucio.daemons.badreplicas import necromancer  # noqa: E402
from rucio.daemons.common import HeartbeatHandler  # noqa: E402
from rucio.daemons.conveyor import finisher, poller, submitter  # noqa: E402
from rucio.daemons.judge import cleaner, evaluator, injector, repairer  # noqa: E402
from rucio.db.sqla import models  # noqa: E402
from rucio.db.sqla.constants import ReplicaState, RequestState, RequestType, RuleState  # noqa: E402
from rucio.db.sqla.session import get_session  # noqa: E402
from sqlalchemy import delete, exists, select  # noqa: E402

LOG = logging.getLogger("site_services")
STOP = threading.Event()
# All daemon modules share their own GRACEFUL_STOP/graceful_stop events; set them on stop.
_DAEMON_STOP_EVENTS = [
    submitter.GRACEFUL_STOP,
    poller.GRACEFUL_STOP,
    finisher.GRACEFUL_STOP,
    evaluator.graceful_stop,
    repairer.graceful_stop,
    injector.graceful_stop,
    cleaner.graceful_stop,
    abacus_account.graceful_stop,
    abacus_rse.graceful_stop,
    abacus_collection_replica.graceful_stop,
    necromancer.graceful_stop,
]

FINISHER_STATES = [
    RequestState.DONE,
    RequestState.FAILED,
    RequestState.LOST,
    RequestState.SUBMISSION_FAILED,
    RequestState.NO_SOURCES,
    RequestState.ONLY_TAPE_SOURCES,
    RequestState.MISMATCH_SCHEME,
]
TRANSFER_TYPES = [RequestType.TRANSFER, RequestType.STAGEIN, RequestType.STAGEOUT]


def _stop(signum: int, frame: Any) -> None:
    STOP.set()
    for event in _DAEMON_STOP_EVENTS:
        event.set()


_PROBE: tuple[list[str], Any] | None = None


def probe() -> dict[str, bool]:
    """Which daemon queues hold work, in one cheap read (the statement is built once)."""
    global _PROBE
    if _PROBE is None:
        req = models.Request
        queries = {
            "inject": exists().where(models.ReplicationRule.state == RuleState.INJECT),
            "evaluate": exists().where(models.UpdatedDID.id.isnot(None)),
            "submit": exists().where(req.state == RequestState.QUEUED, req.request_type.in_(TRANSFER_TYPES)),
            "poll": exists().where(req.state == RequestState.SUBMITTED, req.request_type.in_(TRANSFER_TYPES)),
            "finish": exists().where(req.state.in_(FINISHER_STATES), req.request_type.in_(TRANSFER_TYPES)),
            "abacus_account": exists().where(models.UpdatedAccountCounter.id.isnot(None)),
            "abacus_rse": exists().where(models.UpdatedRSECounter.id.isnot(None)),
            "abacus_collection": exists().where(models.UpdatedCollectionReplica.id.isnot(None)),
            "necromancer": exists().where(models.RSEFileAssociation.state == ReplicaState.BAD),
        }
        _PROBE = (list(queries), select(*queries.values()))
    names, stmt = _PROBE
    with get_session()() as session:
        row = session.execute(stmt).one()
    return dict(zip(names, (bool(v) for v in row), strict=True))


class SiteServices:
    """Rucio's daemons for one world, stepped by :meth:`cycle`."""

    def __init__(self, *, bulk: int = 1000, slow_period: float = 30.0) -> None:
        # bulk: requests per submitter / poller / finisher pass. On the 20k world each pass costs about
        # 15-20 ms per request whether it takes 200 or 1,000 (Rucio's own per-request work in the
        # submitter, poller and finisher, on one SQLite writer): ~60 files/s. SQLite's ANALYZE did not
        # change that (tried: it made the judge-injector's dataset query minutes long).
        self.bulk = bulk
        self.slow_period = slow_period
        self.last_slow = 0.0
        self.topology = ExpiringObjectCache(ttl=30, new_obj_fnc=lambda: Topology())
        self.stats = request_core.TransferStatsManager()
        self.metrics = MetricManager(module="site_services")
        self.paused: dict[str, dict] = {"evaluator": {}, "repairer": {}, "injector": {}, "cleaner": {}}
        self.heartbeats: dict[str, HeartbeatHandler] = {}
        self.transfertools = [posix_transfertool.NAME]
        schemes = set(config_get_list("conveyor", "scheme", raise_exception=False) or ["file"])
        self.schemes = list(schemes & posix_transfertool.PosixTransfertool.supported_schemes)
        self.suspicious_patterns: list = []
        self.retry_protocol_mismatches = config_get_bool("conveyor", "retry_protocol_mismatches", default=False)
        self.repairer_delta = config_get_int("repairer", "updated_at_delta", default=1800)

    # -- heartbeats ---------------------------------------------------------------------
    def heartbeat(self, name: str) -> HeartbeatHandler:
        """The (entered) heartbeat handler of daemon ``name``, kept for the process lifetime."""
        handler = self.heartbeats.get(name)
        if handler is None:
            handler = HeartbeatHandler(executable=name, renewal_interval=60)
            handler.__enter__()
            self.heartbeats[name] = handler
        return handler

    def close(self) -> None:
        """Remove this process's heartbeats."""
        for handler in self.heartbeats.values():
            try:
                handler.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                LOG.exception("heartbeat cleanup failed")
        self.heartbeats.clear()

    # -- daemon steps ------------------------------------------------------------------
    def _fetching(self, hb: HeartbeatHandler) -> dict[str, Any]:
        """What every conveyor daemon's request fetch is given here: any activity, this world's topology."""
        return {
            "activity": None,
            "cached_topology": self.topology,
            "set_last_processed_by": False,
            "heartbeat_handler": hb,
        }

    def submit(self) -> int:
        """conveyor-submitter: queued requests -> posix jobs (files are copied here)."""
        hb = self.heartbeat("conveyor-submitter")
        _, batch = submitter._fetch_requests(
            partition_hash_var=None,
            bulk=self.bulk,
            rse_ids=None,
            request_type=[RequestType.TRANSFER],
            ignore_availability=False,
            filter_transfertool=None,
            metrics=self.metrics,
            **self._fetching(hb),
        )
        if batch[1]:
            submitter._handle_requests(
                batch,
                transfertools=self.transfertools,
                schemes=self.schemes,
                failover_schemes=[],
                max_sources=4,
                timeout=None,
                transfertool_kwargs={},
                metrics=self.metrics,
                logger=hb.logger,
            )
        return len(batch[1])

    def poll(self) -> int:
        """conveyor-poller: job outcomes -> requests DONE / FAILED."""
        hb = self.heartbeat("conveyor-poller")
        _, transfers = poller._fetch_requests(
            db_bulk=self.bulk,
            older_than=0,
            activity_shares=None,
            transfertool=posix_transfertool.NAME,
            filter_transfertool=None,
            **self._fetching(hb),
        )
        if transfers:
            poller._handle_requests(
                transfers,
                fts_bulk=self.bulk,
                multi_vo=False,
                timeout=None,
                transfertool=posix_transfertool.NAME,
                transfer_stats_manager=self.stats,
                oidc_support=False,
                logger=hb.logger,
            )
        return len(transfers)

    def finish(self) -> int:
        """conveyor-finisher: terminal requests -> replicas, locks, rules (retry or STUCK)."""
        hb = self.heartbeat("conveyor-finisher")
        _, batch = finisher._fetch_requests(db_bulk=self.bulk, **self._fetching(hb))
        if batch[0]:
            finisher._handle_requests(
                batch,
                bulk=self.bulk,
                suspicious_patterns=self.suspicious_patterns,
                retry_protocol_mismatches=self.retry_protocol_mismatches,
                logger=hb.logger,
            )
        return len(batch[0])

    def _step(self, name: str, func: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            result = func()
        except Exception:  # noqa: BLE001 - a failing step must not stop the site
            LOG.exception("%s failed", name)
            return None
        elapsed = time.monotonic() - start
        if elapsed > 1.0:
            LOG.info("%s took %.2f s", name, elapsed)
        return result

    def cycle(self) -> bool:
        """Run every daemon step that has work; return True if anything was processed."""
        work = self._step("probe", probe) or {}
        did = False
        steps: list[tuple[str, Callable[[], Any]]] = [
            (
                "inject",
                lambda: injector.run_once(
                    paused_rules=self.paused["injector"], heartbeat_handler=self.heartbeat("judge-injector")
                ),
            ),
            (
                "evaluate",
                lambda: evaluator.run_once(
                    paused_dids=self.paused["evaluator"],
                    did_limit=100,
                    heartbeat_handler=self.heartbeat("judge-evaluator"),
                ),
            ),
            ("submit", self.submit),
            ("poll", self.poll),
            ("finish", self.finish),
            ("abacus_account", lambda: abacus_account.run_once(heartbeat_handler=self.heartbeat("abacus-account"))),
            ("abacus_rse", lambda: abacus_rse.run_once(heartbeat_handler=self.heartbeat("abacus-rse"))),
            (
                "abacus_collection",
                lambda: abacus_collection_replica.run_once(
                    heartbeat_handler=self.heartbeat("abacus-collection-replica"), limit=1000
                ),
            ),
            (
                "necromancer",
                lambda: necromancer.run_once(heartbeat_handler=self.heartbeat("necromancer"), bulk=self.bulk),
            ),
        ]
        counts: dict[str, int] = {}
        for name, func in steps:
            if STOP.is_set():
                break
            # The conveyor steps feed each other within one cycle: poll after a submission,
            # finish after a poll. Progress (for the sleep decision) is a polled or finished
            # request or any judge/abacus work; queued requests that cannot be submitted
            # (e.g. no source yet) are not progress.
            wanted = (
                work.get(name)
                or (name == "poll" and counts.get("submit", 0) > 0)
                or (name == "finish" and counts.get("poll", 0) > 0)
            )
            if not wanted:
                continue
            result = self._step(name, func)
            is_count = name in ("submit", "poll", "finish") and isinstance(result, int)
            counts[name] = result if is_count else 1
            if name != "submit" and counts[name]:
                did = True
        now = time.monotonic()
        if now - self.last_slow >= self.slow_period and not STOP.is_set():
            self.last_slow = now
            self._step(
                "repair",
                lambda: repairer.run_once(
                    paused_rules=self.paused["repairer"],
                    delta=self.repairer_delta,
                    heartbeat_handler=self.heartbeat("judge-repairer"),
                ),
            )
            self._step(
                "clean",
                lambda: cleaner.run_once(
                    paused_rules=self.paused["cleaner"], heartbeat_handler=self.heartbeat("judge-cleaner")
                ),
            )
            self._step("prune", self.prune)
        return did

    @staticmethod
    def prune() -> None:
        """Drop transfertool job files older than 6 h and messages older than 1 h."""
        posix_transfertool.prune_jobs()
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # Rucio stores naive UTC
        cutoff = now - datetime.timedelta(hours=1)
        with get_session()() as session, session.begin():
            session.execute(delete(models.Message).where(models.Message.created_at < cutoff))


def _setup_logging(path: str | None, level: str) -> None:
    handler: logging.Handler
    if path:
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=2)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for noisy in (
        "conveyor-poller",
        "conveyor-finisher",
        "conveyor-submitter",
        "judge-evaluator",
        "abacus-account",
        "abacus-rse",
        "abacus-collection-replica",
        "judge-repairer",
        "judge-cleaner",
        "judge-injector",
        "rucio.core.topology",
    ):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run cycles until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="log file (rotated at 5 MB, 2 kept); default stderr")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--idle-sleep", type=float, default=0.5, help="seconds to sleep after an idle cycle")
    parser.add_argument("--busy-sleep", type=float, default=0.05, help="seconds to sleep after a busy cycle")
    parser.add_argument("--slow-period", type=float, default=30.0, help="repairer/cleaner/prune period (s)")
    parser.add_argument("--once", action="store_true", help="run one cycle and exit")
    parser.add_argument(
        "--ready-file", help="file written once imports are done and the database answers (start-up handshake)"
    )
    args = parser.parse_args(argv)

    _setup_logging(args.log, args.log_level)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    services = SiteServices(slow_period=args.slow_period)
    LOG.info("site services started (pid %d)", os.getpid())
    try:
        with services.stats:
            probe()  # the database answers
            if args.ready_file:
                with open(args.ready_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            while not STOP.is_set():
                busy = services.cycle()
                if args.once:
                    break
                STOP.wait(args.busy_sleep if busy else args.idle_sleep)
    finally:
        services.close()
        LOG.info("site services stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
