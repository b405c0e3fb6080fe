"""The dashboard's transfer history: one JSON line per site and reading.

``<run_dir>/artifacts/dashboard/history.jsonl`` holds, per line, a :class:`HistoryRow`: the
reading's ``time``, the ``site``, its ``state``, its files at the site by lock state
(``ok`` / ``replicating`` / ``stuck``) and its rules by state (``rules_ok`` /
``rules_replicating`` / ``rules_stuck``). Viewers append whole lines in one write, so lines
from several viewers interleave but never mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypedDict, cast

from multisite_nb.domain.naming import dashboard_dir
from multisite_nb.views.status import CampaignStatus

__all__ = ["HistoryRow", "append_history", "history_file", "history_rows", "read_history"]

_TAIL_BYTES = 1 << 20
_COUNTS = ("ok", "replicating", "stuck", "rules_ok", "rules_replicating", "rules_stuck")


class HistoryRow(TypedDict):
    """One site at one reading."""

    time: str
    site: str
    state: str
    ok: int
    replicating: int
    stuck: int
    rules_ok: int
    rules_replicating: int
    rules_stuck: int


def history_file(run_dir: str | os.PathLike[str]) -> Path:
    """``<run_dir>/artifacts/dashboard/history.jsonl``."""
    return dashboard_dir(run_dir) / "history.jsonl"


def history_rows(status: CampaignStatus) -> list[HistoryRow]:
    """One history line per site for this reading."""
    rows = []
    for s in status.sites.values():
        t = s.transfers
        rows.append(
            HistoryRow(
                time=status.collected_at,
                site=s.site,
                state=s.state,
                ok=t.locks_ok if t else 0,
                replicating=t.locks_replicating if t else 0,
                stuck=t.locks_stuck if t else 0,
                rules_ok=t.ok if t else 0,
                rules_replicating=t.replicating if t else 0,
                rules_stuck=t.stuck if t else 0,
            )
        )
    return rows


def _row(line: str) -> HistoryRow | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("time"), str) or not isinstance(row.get("site"), str):
        return None
    row.setdefault("state", "")
    for key in _COUNTS:
        value = row.get(key, 0)
        row[key] = value if isinstance(value, int) else 0
    return cast(HistoryRow, row)


def read_history(path: str | os.PathLike[str], max_bytes: int = _TAIL_BYTES) -> list[HistoryRow]:
    """The last ``max_bytes`` of a history file as rows (bad lines skipped; missing file: [])."""
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line may be cut
    return [row for row in map(_row, lines) if row is not None]


def append_history(path: Path, rows: list[HistoryRow]) -> None:
    """Append ``rows`` to the history file in one write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
