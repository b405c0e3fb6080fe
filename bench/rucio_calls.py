"""Benchmark: what Rucio's server spends per file on the calls registration makes.

On a fresh world Rucio server (SQLite, one gunicorn worker, no conveyor), N new file DIDs are
registered at an RSE and attached to a dataset three ways, each in chunks of 1,000 (the server's
limit per call):

* **plain**: ``add_replicas`` without metadata, then ``attach_dids``;
* **Rubin metadata**: ``add_replicas`` with ``rubin_butler`` and a ``rubin_sidecar`` of the size of
  an expanded LSSTCam raw's (~1.6 kB) inline, as ``lsst-rucio-register`` and the toolkit do, then
  ``attach_dids``;
* **metadata after**: ``add_replicas`` without metadata, then the same metadata by one
  ``set_dids_metadata_bulk`` call, then ``attach_dids``;
* **one call**: ``attach_dids`` with ``rse`` (replicas registered and attached in one request,
  Tier-0's way), metadata inline.

Prints ms per file of each call and files/s of each way, with the ratio to the plain way. The
per-file metadata is stored by Rucio's JSON metadata plugin, a few statements per DID; the
figures show the ceiling it sets on registration against this server. Checks that every file was
attached; asserts no timing.

    .venv/bin/python bench/rucio_calls.py [N ...]      (default: 2000 5000)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RSE = "USDF_DISK"
SCOPE = "bench"
CHUNK = 1000
SIDECAR = json.dumps({"id": str(uuid.uuid4()), "datasetType": {"name": "raw"}, "pad": "x" * 1500})


def _files(way: str, n: int, meta: bool) -> list[dict[str, Any]]:
    out = []
    folder = way.replace(" ", "_")
    for i in range(n):
        f: dict[str, Any] = {
            "scope": SCOPE,
            "name": f"{folder}/f{i:07d}.fits",
            "bytes": 1000 + i,
            "adler32": "0badf00d",
        }
        if meta:
            f["meta"] = {"rubin_butler": 1, "rubin_sidecar": SIDECAR}
        out.append(f)
    return out


def _way(client: Any, way: str, n: int) -> dict[str, float]:
    """Register and attach ``n`` new files ``way``'s way; returns seconds per call kind."""
    dataset = "bench_" + way.replace(" ", "_")
    client.add_dataset(SCOPE, dataset)
    files = _files(way, n, meta=way != "plain")
    spent = {"add_replicas": 0.0, "attach": 0.0}
    for start in range(0, n, CHUNK):
        chunk = files[start : start + CHUNK]
        t0 = time.monotonic()
        if way == "one call":
            client.attach_dids(SCOPE, dataset, chunk, rse=RSE)
            spent["attach"] += time.monotonic() - t0
            continue
        if way == "metadata after":  # the replicas bare, then their metadata in one bulk call
            client.add_replicas(rse=RSE, files=[{k: v for k, v in f.items() if k != "meta"} for f in chunk])
            client.set_dids_metadata_bulk([{"scope": SCOPE, "name": f["name"], "meta": f["meta"]} for f in chunk])
        else:
            client.add_replicas(rse=RSE, files=chunk)
        t1 = time.monotonic()
        client.attach_dids(SCOPE, dataset, [{"scope": SCOPE, "name": f["name"]} for f in chunk])
        spent["add_replicas"] += t1 - t0
        spent["attach"] += time.monotonic() - t1
    assert sum(1 for _ in client.list_files(SCOPE, dataset)) == n, way  # all there
    return spent


def run(n: int) -> dict[str, dict[str, float]]:
    from multisite_nb.adapters.rucio.ops import RucioClientConfig, RucioOps
    from multisite_nb.world.rucio_server import RucioServer

    tmp = Path(tempfile.mkdtemp(prefix="msnb-bench-rucio-calls-"))
    server = RucioServer(tmp / "rucio", {RSE: tmp / "rse" / RSE}, [SCOPE])
    try:
        server.up()
        client = RucioOps(RucioClientConfig.from_file(server.client_config), SCOPE, quiet=True).client
        return {way: _way(client, way, n) for way in ("plain", "Rubin metadata", "metadata after", "one call")}
    finally:
        server.down()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [2000, 5000]
    for n in sizes:
        result = run(n)
        plain = sum(result["plain"].values())
        print(f"{n} files, chunks of {CHUNK}:")
        for way, spent in result.items():
            total = sum(spent.values())
            calls = ", ".join(f"{k} {1000 * v / n:.2f} ms/file" for k, v in spent.items() if v)
            print(f"  {way:15s} {n / total:7.0f} files/s  ({calls})  x{plain / total:.2f} the plain way")


if __name__ == "__main__":
    main(sys.argv[1:])
