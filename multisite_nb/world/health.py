"""A world's health check, cheap enough to run every few seconds: ``python -m multisite_nb.world.health DIR``.

Exit 0 when every process the world runs is alive (by its PID record) and Rucio answers ``/ping``
(and, on a PostgreSQL world, the database takes connections); 1 when one is down, naming it. It
reads only the world folder: no campaign, no pipeline, no Butler (those imports take seconds).
``multisite-nb world up --dir DIR`` brings what is down back (the manifest's ``supervision.heal``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from multisite_nb.world.postgres import PostgresServer
from multisite_nb.world.rucio_server import RucioServer

__all__ = ["down_services", "main"]


def down_services(root: Path) -> list[str]:
    """What is down in the world at ``root`` (empty: every service is up)."""
    root = Path(root).resolve()
    state = root / "world.json"
    if not state.is_file():
        return [f"{root}: not a world (no world.json)"]
    down = []
    rucio = RucioServer(root / "rucio", {}, [])
    alive = rucio.pids()
    down += [f"rucio {name}" for name in ("gunicorn", "site_services") if name not in alive]
    if not down and not rucio.is_up():
        down.append("rucio /ping")
    if json.loads(state.read_text()).get("db") == "postgresql" and not PostgresServer(root / "postgres").is_up():
        down.append("postgresql")
    return down


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m multisite_nb.world.health WORLD_DIR", file=sys.stderr)
        return 2
    down = down_services(Path(args[0]))
    print(f"down: {', '.join(down)}" if down else "services up")
    return 1 if down else 0


if __name__ == "__main__":
    raise SystemExit(main())
