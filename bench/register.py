"""Benchmark: registering Butler datasets as Rucio replicas, Rubin's way and the toolkit's.

Both paths start from the same N expanded DatasetRefs of files at an RSE and end with every file
registered on the RSE, carrying ``rubin_butler`` / ``rubin_sidecar`` metadata, attached to a
dataset — on a fresh real Rucio server (the world's, on SQLite) and a fresh SQLite Butler whose
datastore root is the RSE's root:

* **rucio-register**: ``lsst.rucio.register``'s ``RucioInterface.register_as_replicas`` (one
  ``getURI`` and one checksum read per file, one ``add_replicas`` call for all files with the
  metadata inline, then ``add_files_to_datasets``; its backoff on transient errors);
* **toolkit**: what ``transfer.register_shipment`` does (``get_many_uris``, adler32 per file,
  ``RubinMeta`` metadata, the existence check, ``add_replicas`` / ``set_dids_metadata_bulk`` /
  ``attach_dids`` in chunks of 500).

Prints files/s of each and their ratio; asserts nothing.

    .venv/bin/python bench/register.py [N ...]      (default: 500 2000 5000)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _butler(repo: Path, root: Path, n: int) -> list[Any]:
    from lsst.daf.butler import Butler, Config, DatasetType

    Butler.makeRepo(str(repo), config=Config({"datastore": {"root": str(root)}}), forceConfigRoot=False)
    with Butler.from_config(str(repo), writeable=True, run="bench/run") as butler:
        butler.registry.insertDimensionData("instrument", {"name": "Bench", "detector_max": n})
        butler.registry.insertDimensionData(
            "detector", *({"instrument": "Bench", "id": i, "full_name": f"d{i}"} for i in range(n))
        )
        dt = DatasetType("bench", {"instrument", "detector"}, "StructuredDataDict", universe=butler.dimensions)
        butler.registry.registerDatasetType(dt)
        for i in range(n):
            butler.put({"i": i, "pad": "x" * 2000}, dt, instrument="Bench", detector=i)
        return list(butler.query_datasets(dt, collections="bench/run", with_dimension_records=True, limit=None))


def _rubin_way(butler: Any, refs: list[Any], root: Path, scope: str, dataset: str) -> float:
    from lsst.rucio.register.data_type import DataType
    from lsst.rucio.register.rucio_interface import RucioInterface
    from rucio.client import Client

    # the PFN base the RSE itself gives (a deterministic RSE refuses any other PFN)
    dtn_url = Client().lfns2pfns("USDF_DISK", [f"{scope}:x"])[f"{scope}:x"].removesuffix("x")
    ri = RucioInterface(butler, "USDF_DISK", scope, str(root) + "/", dtn_url, DataType.DATA_PRODUCT)
    t0 = time.monotonic()
    ri.register_as_replicas(dataset, refs)
    return time.monotonic() - t0


def _toolkit_way(butler: Any, refs: list[Any], root: Path, ops: Any, dataset: str) -> float:
    from lsst.rucio.register.data_type import DataType
    from lsst.rucio.register.rubin_meta import RubinMeta

    from multisite_nb.adapters.files import adler32_of
    from multisite_nb.adapters.rucio.ops import FileDid

    t0 = time.monotonic()
    uris = butler.get_many_uris(refs)
    dids = []
    for ref in refs:
        path = Path(uris[ref].primaryURI.ospath)
        meta = RubinMeta(rubin_butler=DataType.DATA_PRODUCT, rubin_sidecar=ref.to_json())
        dids.append(FileDid(str(path.relative_to(root)), path.stat().st_size, adler32_of(path), meta.model_dump()))
    ops.add_replicas("USDF_DISK", dids)
    ops.set_metadata(dids)
    ops.ensure_dataset(dataset)
    ops.attach(dataset, [d.name for d in dids])
    return time.monotonic() - t0


def _check(ops: Any, dataset: str, n: int) -> str:
    files = ops.list_files(dataset)
    meta = ops.get_metadata_bulk([f["name"] for f in files[:5]])
    kinds = {m.get("rubin_butler") for m in meta.values()}
    sidecars = all(m.get("rubin_sidecar") for m in meta.values())
    return f"{len(files)}/{n} attached, rubin_butler {sorted(map(str, kinds))}, sidecars {'yes' if sidecars else 'NO'}"


def run(n: int) -> dict[str, Any]:
    from lsst.daf.butler import Butler

    from multisite_nb.adapters.rucio.ops import RucioClientConfig, RucioOps
    from multisite_nb.world.rucio_server import RucioServer

    tmp = Path(tempfile.mkdtemp(prefix="msnb-bench-register-"))
    root = tmp / "rse" / "USDF_DISK"
    server = RucioServer(tmp / "rucio", {"USDF_DISK": root}, ["ri", "tk"])
    out: dict[str, Any] = {"n": n}
    try:
        refs = _butler(tmp / "repo", root, n)
        server.up()
        os.environ["RUCIO_CONFIG"] = str(server.client_config)  # RucioInterface's clients read it
        with Butler.from_config(str(tmp / "repo")) as butler:
            try:
                out["rucio-register s"] = _rubin_way(butler, refs, root, "ri", "bench_ri")
                out["rucio-register check"] = _check(
                    RucioOps(RucioClientConfig.from_file(server.client_config), "ri"), "bench_ri", n
                )
            except Exception as exc:  # a finding, not a crash: say what it was
                out["rucio-register s"] = None
                out["rucio-register check"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            ops = RucioOps(RucioClientConfig.from_file(server.client_config), "tk", quiet=True)
            out["toolkit s"] = _toolkit_way(butler, refs, root, ops, "bench_tk")
            out["toolkit check"] = _check(ops, "bench_tk", n)
    finally:
        server.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [500, 2000, 5000]
    print(f"{'files':>6} | {'rucio-register':>16} | {'toolkit':>16} | ratio (toolkit / rucio-register)")
    for n in sizes:
        r = run(n)
        ri, tk = r["rucio-register s"], r["toolkit s"]
        ri_rate = f"{n / ri:8.0f} files/s" if ri else "   failed"
        ratio = f"{ri / tk:5.2f}x" if ri else "-"
        print(f"{n:6d} | {ri_rate:>16} | {n / tk:8.0f} files/s | {ratio}")
        print(f"       rucio-register: {r['rucio-register check']}")
        print(f"       toolkit:        {r['toolkit check']}")


if __name__ == "__main__":
    main(sys.argv[1:])
