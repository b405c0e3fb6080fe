"""A Rucio transfertool that really copies files between posix RSEs on one machine.

FTS cannot run on this machine, and Rucio's ``mock`` transfertool copies nothing while
marking every transfer done. This one plays FTS's part for ``file://`` RSEs, inside the
conveyor daemons of ``site_services.py``:

* ``submit`` copies each file of the job (source PFN -> destination PFN): it creates the
  destination's parent directories, streams the source into a hidden temporary file next to
  the destination while computing adler32, checks size and adler32 against the catalogue
  (the request's ``bytes``/``adler32``), and renames the temporary file into place. A missing
  source or a size or checksum mismatch fails that file with an FTS-like reason. An existing
  destination with the right size and adler32 is kept; one that differs (e.g. a replica
  declared bad) is replaced only after the new copy checked out, as FTS overwrites on disk
  RSEs — unless the destination RSE has the attribute ``overwrite = False``. The outcome of
  every file is written to a job file ``<job_dir>/<job id>.json``.
* ``bulk_query`` reads the job files back as status reports, so the poller moves requests to
  DONE or FAILED with ``err_msg`` (``RequestErrMsg.TRANSFER_FAILED:<reason>``) exactly as with
  FTS; the finisher then retries, and after Rucio's retries are exhausted the lock and the
  rule go STUCK with that error.

Register it with :func:`register`; select it with ``[conveyor] transfertool = posix`` and
``scheme = file``. The job directory comes from ``[posix_transfertool] job_dir``.
Imports only Rucio and the standard library.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from rucio.common.config import config_get
from rucio.core.request import get_transfer_error
from rucio.db.sqla.constants import RequestState
from rucio.transfertool.transfertool import TransferStatusReport, Transfertool, TransferToolBuilder

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from rucio.core.request import DirectTransfer

NAME = "posix"
EXTERNAL_HOST = "posix://localhost"
JOB_SIZE = 100
BLOCK = 4 * 1024 * 1024


def job_dir() -> Path:
    """The directory holding one JSON file per submitted job."""
    path = Path(
        config_get("posix_transfertool", "job_dir", raise_exception=False, default="/tmp/rucio-posix-transfertool")
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def url_to_path(url: str) -> str:
    """Local path of a ``file://host/abs/path`` PFN."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"not a file URL: {url}")
    return os.path.normpath(unquote(parsed.path))


def _same_checksum(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and int(a, 16) == int(b, 16)


def _file_adler32(path: str) -> tuple[int, str]:
    value, size = 1, 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            value = zlib.adler32(block, value)
            size += len(block)
    return size, "%08x" % (value & 0xFFFFFFFF)


def copy_file(src: str, dst: str, size: int | None, adler32: str | None, overwrite: bool = False) -> str | None:
    """Copy ``src`` to ``dst`` checking size and adler32; return None or the failure reason.

    Parameters
    ----------
    src, dst : str
        Local paths.
    size, adler32 : int or None, str or None
        The catalogue's values; a None is not checked.
    overwrite : bool
        Replace an existing destination that differs (FTS's ``overwrite``).

    Returns
    -------
    str or None
        None on success, else an FTS-like reason naming what failed.
    """
    if not os.path.isfile(src):
        return f"SOURCE [2] No such file or directory: {src}"
    if os.path.exists(dst):
        try:
            dst_size, dst_adler = _file_adler32(dst)
        except OSError as exc:
            return f"DESTINATION [{exc.errno}] cannot read existing file: {exc}"
        if (size is None or dst_size == size) and (adler32 is None or _same_checksum(dst_adler, adler32)):
            return None  # already there with the right content (FTS: recoverable overwrite error)
        if not overwrite:
            return (
                f"DESTINATION [17] Destination file exists and overwrite is not enabled "
                f"(existing size {dst_size}, adler32 {dst_adler}): {dst}"
            )
    parent = os.path.dirname(dst)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.part-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(parent, exist_ok=True)
        value, copied = 1, 0
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(BLOCK):
                value = zlib.adler32(block, value)
                copied += len(block)
                fout.write(block)
        got = "%08x" % (value & 0xFFFFFFFF)
        if size is not None and copied != size:
            os.unlink(tmp)
            return f"SOURCE SIZE MISMATCH source file size {copied} != catalogue size {size}: {src}"
        if adler32 is not None and not _same_checksum(got, adler32):
            os.unlink(tmp)
            return f"SOURCE CHECKSUM MISMATCH Source and catalogue ADLER32 do not match ({got} != {adler32}): {src}"
        os.replace(tmp, dst)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return f"TRANSFER [{exc.errno}] {exc.strerror or exc}: {src} -> {dst}"
    return None


def _overwrite(transfer: DirectTransfer) -> bool:
    """FTS's rule for disk RSEs: overwrite unless the destination RSE says ``overwrite = False``.

    (The copy is checked against the catalogue before it replaces anything.)
    """
    if transfer.rws.attributes.get("overwrite"):
        return True
    return str(transfer.dst.rse.attributes.get("overwrite", True)).lower() not in ("false", "0", "no")


class PosixTransferStatusReport(TransferStatusReport):
    """The outcome of one file of a posix job, as the poller expects it."""

    supported_db_fields = ["state", "external_id", "started_at", "transferred_at", "source_rse_id", "err_msg"]

    def __init__(
        self, request_id: str, external_id: str, record: dict[str, Any], request: dict[str, Any] | None = None
    ):
        super().__init__(request_id, request=request)
        self.record = record
        self._external_id = external_id
        self.external_id = None
        self.started_at = None
        self.transferred_at = None
        self.source_rse_id = None
        self.err_msg = None

    def __str__(self) -> str:
        return f"posix job {self._external_id} request {self.request_id}: {self.record.get('state')}"

    def initialize(self, session: Any, logger: Any = logging.log) -> None:
        """Compute the new request state (DONE or FAILED) from the job record."""
        new_state = RequestState.DONE if self.record["state"] == "DONE" else RequestState.FAILED
        request = self.request(session)
        if not request:
            logger(logging.WARNING, "%s: no request with this id; skipping", self.request_id)
            return
        if request["external_id"] != self._external_id or request["state"] == new_state:
            return
        self.state = new_state
        self.external_id = self._external_id
        self.started_at = datetime.datetime.utcfromtimestamp(self.record["started"])
        self.transferred_at = datetime.datetime.utcfromtimestamp(self.record["finished"])
        self.source_rse_id = self.record.get("src_rse_id")
        if new_state == RequestState.FAILED:
            self.err_msg = get_transfer_error(new_state, self.record.get("reason"))

    def get_monitor_msg_fields(self, session: Any, logger: Any = logging.log) -> dict[str, Any]:
        """Fields for the hermes message of this state change."""
        self.ensure_initialized(session, logger)
        return {
            "reason": self.record.get("reason"),
            "src-rse": self.record.get("src_rse"),
            "src-url": self.record.get("src_url"),
            "dst-rse": self.record.get("dst_rse"),
            "dst-url": self.record.get("dst_url"),
            "started_at": self.started_at,
            "transferred_at": self.transferred_at,
            "protocol": "file",
        }


class PosixTransfertool(Transfertool):
    """Copies ``file://`` replicas between RSEs on this machine (see module docstring)."""

    external_name = NAME
    required_rse_attrs = ()
    supported_schemes = {"file"}

    def __init__(self, external_host: str = EXTERNAL_HOST, logger: Any = logging.log, **_kwargs: Any):
        super().__init__(external_host, logger)

    @classmethod
    def submission_builder_for_path(
        cls, transfer_path: list[DirectTransfer], logger: Any = logging.log
    ) -> tuple[list[DirectTransfer], TransferToolBuilder | None]:
        """Accept the first hop when both its ends use the ``file`` scheme."""
        hop = transfer_path[0]
        if hop.src.scheme != "file" or hop.dst.scheme != "file":
            return [], None
        return [hop], TransferToolBuilder(cls, external_host=EXTERNAL_HOST)

    def group_into_submit_jobs(self, transfer_paths: Iterable[list[DirectTransfer]]) -> list[dict[str, Any]]:
        """Jobs of at most ``JOB_SIZE`` files."""
        hops = [hop for path in transfer_paths for hop in path]
        return [{"transfers": hops[i : i + JOB_SIZE], "job_params": {}} for i in range(0, len(hops), JOB_SIZE)]

    def submit(
        self, transfers: Iterable[DirectTransfer], job_params: dict[str, str], timeout: int | None = None
    ) -> str:
        """Copy every file of the job now; record the outcomes; return the job id."""
        job_id = uuid.uuid4().hex
        records: dict[str, dict[str, Any]] = {}
        for transfer in transfers:
            rws = transfer.rws
            src = transfer.src
            src_url = transfer.source_url(src)
            dst_url = transfer.dest_url
            started = time.time()
            try:
                reason = copy_file(
                    url_to_path(src_url),
                    url_to_path(dst_url),
                    rws.byte_count,
                    rws.adler32,
                    overwrite=_overwrite(transfer),
                )
            except Exception as exc:  # noqa: BLE001 - any error is a failed transfer, never a crash
                reason = f"TRANSFER {type(exc).__name__}: {exc}"
            records[rws.request_id] = {
                "state": "DONE" if reason is None else "FAILED",
                "reason": reason,
                "started": started,
                "finished": time.time(),
                "src_url": src_url,
                "dst_url": dst_url,
                "src_rse": src.rse.name,
                "src_rse_id": src.rse.id,
                "dst_rse": transfer.dst.rse.name,
                "scope": rws.scope.external,
                "name": rws.name,
                "bytes": rws.byte_count,
            }
            if reason is None:
                self.logger(
                    logging.INFO,
                    "copied %s:%s %s -> %s",
                    rws.scope.external,
                    rws.name,
                    src.rse.name,
                    transfer.dst.rse.name,
                )
            else:
                self.logger(
                    logging.WARNING,
                    "failed %s:%s %s -> %s: %s",
                    rws.scope.external,
                    rws.name,
                    src.rse.name,
                    transfer.dst.rse.name,
                    reason,
                )
        path = job_dir() / f"{job_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"job_id": job_id, "submitted": time.time(), "files": records}))
        os.replace(tmp, path)
        return job_id

    def bulk_query(
        self, requests_by_eid: Mapping[str, Mapping[str, Any]], timeout: int | None = None
    ) -> dict[str, Any]:
        """Status reports of the given jobs; None for a job whose file is gone (lost)."""
        response: dict[str, Any] = {}
        for job_id, requests in requests_by_eid.items():
            try:
                job = json.loads((job_dir() / f"{job_id}.json").read_text())
            except FileNotFoundError:
                response[job_id] = None
                continue
            except (OSError, ValueError) as exc:
                response[job_id] = exc
                continue
            files = job["files"]
            response[job_id] = {
                request_id: PosixTransferStatusReport(request_id, job_id, files[request_id], request=request)
                for request_id, request in requests.items()
                if request_id in files
            }
        return response

    def cancel(self, transfer_ids: Sequence[str], timeout: int | None = None) -> bool:
        """Nothing to cancel: copies finish during submission."""
        return True

    def update_priority(self, transfer_id: str, priority: int, timeout: int | None = None) -> bool:
        """Priorities do not apply."""
        return True


def prune_jobs(max_age_seconds: float = 6 * 3600) -> int:
    """Delete job files older than ``max_age_seconds``; return how many were deleted."""
    cutoff = time.time() - max_age_seconds
    removed = 0
    for path in job_dir().glob("*.json"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed


def register() -> None:
    """Make ``posix`` a transfertool the conveyor daemons can use."""
    from rucio.core import transfer as transfer_core

    transfer_core.TRANSFERTOOL_CLASSES_BY_NAME[NAME] = PosixTransfertool
