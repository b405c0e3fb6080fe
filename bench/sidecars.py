"""Benchmark: building the Rucio sidecars (expanded DatasetRefs) of N datasets.

Phase 2 registers every file with its ``rubin_sidecar``: the serialized DatasetRef with
its dimension records. This compares the toolkit's lookup (one registry query per dataset
type and RUN collection, :func:`multisite_nb.phases.transfer.shipping.sidecar_refs`) with the baseline of
one ``Butler.get_dataset`` per file, on a fresh SQLite Butler holding N datasets (registry
entries only: no file is read). Prints; asserts nothing.

    .venv/bin/python bench/sidecars.py [N ...]     (default: 1000 10000)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path


def run(n: int) -> dict[str, float]:
    from lsst.daf.butler import Butler, DatasetType

    from multisite_nb.domain.plan import PlannedFile
    from multisite_nb.phases.transfer.register import sidecar_refs

    tmp = Path(tempfile.mkdtemp(prefix="msnb-bench-sidecars-"))
    t: dict[str, float] = {}
    try:
        Butler.makeRepo(str(tmp))
        with Butler.from_config(str(tmp), writeable=True) as butler:
            butler.registry.insertDimensionData("instrument", {"name": "Bench", "detector_max": n})
            butler.registry.insertDimensionData(
                "detector", *({"instrument": "Bench", "id": i, "full_name": f"d{i}"} for i in range(n))
            )
            dt = DatasetType("bench", {"instrument", "detector"}, "StructuredDataDict", universe=butler.dimensions)
            butler.registry.registerDatasetType(dt)
            butler.collections.register("bench/run")
            refs = butler.registry.insertDatasets(
                dt, [{"instrument": "Bench", "detector": i} for i in range(n)], run="bench/run"
            )
            files = [
                PlannedFile(
                    id=str(r.id),
                    dataset_type="bench",
                    run="bench/run",
                    data_id=dict(r.dataId.mapping),
                    lfn=f"bench/{r.id}",
                    size=0,
                    adler32="00000001",
                    sites=["X"],
                )
                for r in refs
            ]

            t0 = time.monotonic()
            per_file = {f.id: butler.get_dataset(f.id, dimension_records=True) for f in files}
            t["per file (baseline)"] = time.monotonic() - t0
            t0 = time.monotonic()
            bulk = sidecar_refs(butler, files)
            t["bulk (toolkit)"] = time.monotonic() - t0
            same = all(bulk[k].to_json() == v.to_json() for k, v in per_file.items())
            t["identical"] = float(same and len(bulk) == n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return t


def main(argv: list[str]) -> None:
    for n in [int(a) for a in argv] or [1000, 10000]:
        t = run(n)
        base, ours = t["per file (baseline)"], t["bulk (toolkit)"]
        print(f"== {n} datasets: sidecars identical to the per-file lookup: {bool(t['identical'])}")
        print(f"   {'what':28s} {'seconds':>9s} {'datasets/s':>11s}")
        print(f"   {'per file (baseline)':28s} {base:9.2f} {n / base:11.0f}")
        print(f"   {'bulk (toolkit)':28s} {ours:9.2f} {n / ours:11.0f}   ratio {base / ours:.1f}x faster")


if __name__ == "__main__":
    main(sys.argv[1:])
