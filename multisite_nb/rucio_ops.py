"""A thin, typed adapter over ``rucio-clients``: the only way the toolkit talks to Rucio.

It adds what every phase needs on top of the client: bulk calls chunked to sizes the
server accepts, idempotent creation (an existing DID, attachment or rule is not an
error), and rule state with the reason Rucio gives for STUCK rules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RucioOps", "RuleState", "FileDid", "chunked"]

# Rucio builds OR-chains per call; SQLite-backed servers cap expression depth at 1000.
CHUNK = 500
_last_config: str | None = None


def chunked(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """Successive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(frozen=True)
class FileDid:
    """A file to register: LFN (path relative to the RSE root), size, adler32, metadata."""

    name: str
    bytes: int
    adler32: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RuleState:
    """What a replication rule says about itself."""

    id: str
    did: str
    rse_expression: str
    state: str  # OK, REPLICATING, STUCK, SUSPENDED, ...
    locks_ok: int
    locks_replicating: int
    locks_stuck: int
    error: str | None = None
    comment: str | None = None

    @property
    def total(self) -> int:
        return self.locks_ok + self.locks_replicating + self.locks_stuck


class RucioOps:
    """Rucio access for one campaign.

    Parameters
    ----------
    env
        ``RUCIO_CONFIG`` (and optionally ``RUCIO_ACCOUNT``) from the site manifest. The
        credentials stay in that config file; nothing here prints them.
    scope
        The campaign's scope.
    """

    def __init__(self, env: Mapping[str, str], scope: str):
        global _last_config
        from rucio.common.config import clean_cached_config

        cfg = env.get("RUCIO_CONFIG")
        if cfg:
            os.environ["RUCIO_CONFIG"] = cfg
            if cfg != _last_config:
                clean_cached_config()  # another world's (or campaign's) config may be cached
                _last_config = cfg
        if env.get("RUCIO_ACCOUNT"):
            os.environ["RUCIO_ACCOUNT"] = env["RUCIO_ACCOUNT"]
        from rucio.client import Client

        self.client = Client()
        self.scope = scope
        self.account = self.client.account

    # -- DIDs -----------------------------------------------------------------------
    def ensure_scope(self) -> None:
        from rucio.common.exception import Duplicate

        if self.scope in set(self.client.list_scopes()):
            return
        try:
            self.client.add_scope(self.account, self.scope)
        except Duplicate:
            pass

    def ensure_dataset(self, name: str, meta: Mapping[str, Any] | None = None) -> bool:
        """Create a dataset unless it exists. Returns True if it was created."""
        from rucio.common.exception import DataIdentifierAlreadyExists

        try:
            self.client.add_dataset(self.scope, name, meta=dict(meta or {}))
            return True
        except DataIdentifierAlreadyExists:
            return False

    def add_replicas(self, rse: str, files: Sequence[FileDid]) -> int:
        """Register files as replicas on ``rse`` (bulk, chunked). Already registered ones are skipped."""
        have = self.existing_file_replicas(rse, [f.name for f in files])
        todo = [f for f in files if f.name not in have]
        for part in chunked(todo):
            self.client.add_replicas(
                rse=rse,
                files=[
                    {"scope": self.scope, "name": f.name, "bytes": f.bytes, "adler32": f.adler32}
                    for f in part
                ],
            )
        return len(todo)

    def existing_file_replicas(self, rse: str, names: Sequence[str]) -> set[str]:
        """Names (of ``names``) that have a replica (any state) on ``rse``.

        ``list_replicas`` skips unknown DIDs, and raises ``DataIdentifierNotFound`` only
        when none of a call's DIDs exists: then none of that chunk is registered.
        """
        from rucio.common.exception import DataIdentifierNotFound

        found: set[str] = set()
        for part in chunked(list(names), 1000):
            dids = [{"scope": self.scope, "name": n} for n in part]
            try:
                for rep in self.client.list_replicas(dids, all_states=True, rse_expression=rse, sort="random"):
                    if rse in (rep.get("states") or {}):
                        found.add(rep["name"])
            except DataIdentifierNotFound:
                continue
        return found

    def set_metadata(self, files: Sequence[FileDid]) -> None:
        """Attach each file's DID metadata (``rubin_butler``, ``rubin_sidecar``) in bulk."""
        items = [{"scope": self.scope, "name": f.name, "meta": dict(f.meta)} for f in files if f.meta]
        for part in chunked(items):
            self.client.set_dids_metadata_bulk(dids=list(part), recursive=False)

    def attach(self, dataset: str, names: Sequence[str]) -> int:
        """Attach files to a dataset; files already in it are skipped. Returns how many were new."""
        present = {f["name"] for f in self.client.list_files(self.scope, dataset)}
        todo = [n for n in names if n not in present]
        for part in chunked(todo):
            self.client.attach_dids(self.scope, dataset, [{"scope": self.scope, "name": n} for n in part])
        return len(todo)

    def close_dataset(self, name: str) -> None:
        self.client.close(self.scope, name)

    def get_metadata(self, name: str) -> dict[str, Any]:
        return dict(self.client.get_metadata(self.scope, name, plugin="ALL"))

    def list_files(self, dataset: str) -> list[dict[str, Any]]:
        return list(self.client.list_files(self.scope, dataset))

    # -- rules ----------------------------------------------------------------------
    def find_rule(self, dataset: str, rse: str) -> str | None:
        """The rule of this account for ``dataset`` on exactly ``rse``, if any."""
        for rule in self.client.list_did_rules(self.scope, dataset):
            if rule["rse_expression"] == rse and rule["account"] == self.account:
                return rule["id"]
        return None

    def ensure_rule(
        self,
        dataset: str,
        rse: str,
        *,
        lifetime_s: int | None,
        activity: str,
        comment: str,
    ) -> tuple[str, bool]:
        """A rule for ``dataset`` on ``rse``; created unless one exists. Returns (id, created)."""
        existing = self.find_rule(dataset, rse)
        if existing:
            return existing, False
        ids = self.client.add_replication_rule(
            dids=[{"scope": self.scope, "name": dataset}],
            copies=1,
            rse_expression=rse,
            lifetime=lifetime_s,
            activity=activity,
            comment=comment,
            grouping="DATASET",
            asynchronous=False,
        )
        return ids[0], True

    def rule_state(self, rule_id: str) -> RuleState:
        r = self.client.get_replication_rule(rule_id)
        state = RuleState(
            id=r["id"],
            did=f"{r['scope']}:{r['name']}",
            rse_expression=r["rse_expression"],
            state=str(r["state"]),
            locks_ok=int(r.get("locks_ok_cnt") or 0),
            locks_replicating=int(r.get("locks_replicating_cnt") or 0),
            locks_stuck=int(r.get("locks_stuck_cnt") or 0),
            error=r.get("error"),
            comment=r.get("comments"),
        )
        if state.state == "STUCK" and not state.error:
            state.error = self.stuck_reason(rule_id)
        return state

    def stuck_reason(self, rule_id: str) -> str:
        """Rucio's own account of why a rule is stuck (``examine_replication_rule``)."""
        try:
            exam = self.client.examine_replication_rule(rule_id)
        except Exception as exc:  # the reason is a report, never a new failure
            return f"(examine failed: {type(exc).__name__})"
        parts = []
        for t in exam.get("transfers", [])[:5]:
            last = t.get("last_error") or t.get("last_source") or ""
            parts.append(f"{t.get('name')}: {last}".strip())
        return "; ".join(parts) or str(exam.get("rule_error") or "stuck")

    def dataset_replica_counts(self, dataset: str) -> dict[str, dict[str, int]]:
        """Per RSE: files in the dataset (``length``) and how many are available there."""
        out: dict[str, dict[str, int]] = {}
        for rep in self.client.list_dataset_replicas(self.scope, dataset, deep=True):
            out[rep["rse"]] = {
                "length": int(rep.get("length") or 0),
                "available": int(rep.get("available_length") or 0),
            }
        return out

    def file_replica_states(self, names: Sequence[str], rse: str) -> dict[str, str]:
        """Per file name: its replica state on ``rse`` (``AVAILABLE``, ``COPYING``, ...), missing if none."""
        states: dict[str, str] = {}
        for part in chunked(list(names), 1000):
            dids = [{"scope": self.scope, "name": n} for n in part]
            for rep in self.client.list_replicas(dids, all_states=True, rse_expression=rse, sort="random"):
                st = rep.get("states", {}).get(rse)
                if st is not None:
                    states[rep["name"]] = str(st)
        return states
