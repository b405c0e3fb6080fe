"""Local files: state files that a reader never sees half of, and files' checksums as Rucio writes them.

Every state file of the toolkit (results, run records, plans, step attempts, the world's
state) is written through :func:`atomic_write_text` or :func:`atomic_write_json`: a
temporary file in the same folder, flushed to disk, then renamed over the target. A crash
leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multisite_nb.domain.errors import StorageError

__all__ = [
    "adler32_many",
    "adler32_of",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    Parameters
    ----------
    path
        The target; its folder is created if needed.
    data
        The whole content.
    mode
        Permission bits of the new file; default ``0o666`` minus the umask (the team can read a
        run folder). Use ``0o600`` for a file holding a credential: it never exists with
        wider permissions, not even for a moment.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, mode: int | None = None, indent: int = 2) -> Path:
    """:func:`atomic_write_text` of ``data`` as JSON (sorted keys are the caller's choice)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n", mode=mode)


def check_writable(folder: str | os.PathLike[str], *, need_bytes: int = 64 * 1024**2) -> None:
    """Fail before anything acts if ``folder`` cannot take a state file, or its disk is (nearly) full.

    Parameters
    ----------
    folder
        Created if missing (with its parents).
    need_bytes
        Free space required on its file system.

    Raises
    ------
    StorageError
        Naming the folder and what is wrong (read-only, full).
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".msnb-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write here ({exc.strerror}); choose a writable folder") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise StorageError(
            f"{path}: only {free // 1024**2} MB free on its disk, {need_bytes // 1024**2} MB needed; "
            "free some space or choose another folder"
        )


def adler32_of(path: Path, blocksize: int = 1 << 20) -> str:
    """Adler-32 of a file as Rucio writes it (8 hex digits)."""
    value = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(blocksize):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def adler32_many(paths: Sequence[Path], workers: int = 4) -> list[str]:
    """:func:`adler32_of` of many files, read in parallel threads (zlib and reads let go of the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(adler32_of, paths))
