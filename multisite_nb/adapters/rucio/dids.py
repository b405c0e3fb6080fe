"""Rucio's data identifiers: the scope, datasets and containers, their files and metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from multisite_nb.adapters.rucio.base import RucioBase
from multisite_nb.adapters.rucio.calls import DID_LIMIT, FileDid, chunked, transient_retry
from multisite_nb.domain.errors import RucioError

__all__ = ["Dids"]


class Dids(RucioBase):
    """DIDs of the campaign's scope: created idempotently (an existing one is not an error)."""

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
            transient_retry(partial(self.client.add_dataset, self.scope, name, meta=dict(meta or {})))
            return True
        except DataIdentifierAlreadyExists:
            return False

    def ensure_container(self, name: str) -> bool:
        """Create a container unless it exists. Returns True if it was created."""
        from rucio.common.exception import DataIdentifierAlreadyExists

        try:
            transient_retry(partial(self.client.add_container, self.scope, name))
            return True
        except DataIdentifierAlreadyExists:
            return False

    def did_type(self, name: str) -> str | None:
        """``DATASET``, ``CONTAINER`` or ``FILE``; None if there is no such DID."""
        from rucio.common.exception import DataIdentifierNotFound

        try:
            return str(self.client.get_did(self.scope, name).get("type", "")).upper()
        except DataIdentifierNotFound:
            return None

    def is_container(self, name: str) -> bool:
        return self.did_type(name) == "CONTAINER"

    def attach_datasets(self, container: str, names: Sequence[str]) -> int:
        """Attach datasets to a container; those already in it are skipped. Returns how many were new."""
        present = {d["name"] for d in self.client.list_content(self.scope, container)}
        todo = [n for n in names if n not in present]
        for part in chunked(todo):
            transient_retry(partial(self.client.attach_dids, self.scope, container, self._dids(part)))
        return len(todo)

    def contents(self, name: str) -> dict[str, tuple[int, str]]:
        """The files of a dataset or container (recursively): name -> (bytes, adler32); {} if it does not exist.

        One listing (tens of thousands of rows a second), instead of asking for each file's replicas.
        """
        from rucio.common.exception import DataIdentifierNotFound

        try:
            return {
                str(f["name"]): (int(f.get("bytes") or 0), str(f.get("adler32") or ""))
                for f in self.client.list_files(self.scope, name)
            }
        except DataIdentifierNotFound:
            return {}

    def set_metadata(self, files: Sequence[FileDid]) -> None:
        """Attach each file's DID metadata (``rubin_butler``, ``rubin_sidecar``) in bulk."""
        items = [{"scope": self.scope, "name": f.name, "meta": dict(f.meta)} for f in files if f.meta]
        for part in chunked(items):
            transient_retry(partial(self.client.set_dids_metadata_bulk, dids=list(part), recursive=False))

    def get_metadata_bulk(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Every metadata key of each file, by name (chunked to the server's DID limit)."""
        out: dict[str, dict[str, Any]] = {}
        for part in chunked(list(names), DID_LIMIT):
            for meta in self.client.get_metadata_bulk(self._dids(part), inherit=False, plugin="ALL"):
                out[str(meta["name"])] = dict(meta)
        return out

    def attach(self, dataset: str, names: Sequence[str]) -> int:
        """Attach files to a dataset; files already in it are skipped. Returns how many were new."""
        from rucio.common.exception import DuplicateContent, FileAlreadyExists

        present = {f["name"] for f in self.client.list_files(self.scope, dataset)}
        todo = [n for n in names if n not in present]
        for part in chunked(todo):
            try:
                transient_retry(partial(self.client.attach_dids, self.scope, dataset, self._dids(part)))
            except (DuplicateContent, FileAlreadyExists):  # attached meanwhile (another operator): check
                now = {f["name"] for f in self.client.list_files(self.scope, dataset)}
                if missing := [n for n in part if n not in now]:
                    raise RucioError(
                        f"{self.scope}:{dataset}: could not attach {len(missing)} files, first {missing[0]}"
                    ) from None
        return len(todo)

    def close_dataset(self, name: str) -> None:
        transient_retry(partial(self.client.close, self.scope, name))

    def get_metadata(self, name: str) -> dict[str, Any]:
        return dict(self.client.get_metadata(self.scope, name, plugin="ALL"))

    def list_files(self, dataset: str) -> list[dict[str, Any]]:
        return list(self.client.list_files(self.scope, dataset))

    def checksums(self, names: Sequence[str]) -> dict[str, str]:
        """The adler32 Rucio's catalogue holds for each named file it knows (chunked, bulk)."""
        out: dict[str, str] = {}
        for part in chunked(list(names), DID_LIMIT):
            for meta in self.client.get_metadata_bulk(self._dids(part), inherit=False, plugin="DID_COLUMN"):
                if meta.get("adler32"):
                    out[str(meta["name"])] = str(meta["adler32"])
        return out
