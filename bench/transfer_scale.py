"""Benchmark: moving N files between two sites through the embedded Rucio, the toolkit's way.

Registers N small files at USDF_DISK with the toolkit's Rucio adapter (bulk add_replicas,
metadata, attach), adds one rule to IN2P3_DISK and waits until the conveyor has copied and
checked every file. Prints each stage's time and the files/s beside the baseline: the
first multisite rehearsal moved ~1,500 files to USDF in ~30 minutes (FIELD_NOTES §1).
Prints; asserts nothing.

    .venv/bin/python bench/transfer_scale.py [N ...]     (default: 500 2000)
"""

from __future__ import annotations

import sys
import tempfile
import time
import zlib
from pathlib import Path

REHEARSAL_FILES_PER_S = 1500 / (30 * 60)


def run(n: int) -> dict[str, float]:
    from multisite_nb.adapters.rucio.ops import FileDid, RucioClientConfig, RucioOps
    from multisite_nb.world.rucio_server import RucioServer

    tmp = Path(tempfile.mkdtemp(prefix="msnb-bench-transfer-"))
    rses = {"USDF_DISK": tmp / "rse" / "USDF_DISK", "IN2P3_DISK": tmp / "rse" / "IN2P3_DISK"}
    for p in rses.values():
        p.mkdir(parents=True)
    server = RucioServer(tmp / "rucio", rses, ["bench"])
    t: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        server.up()
        t["server up"] = time.monotonic() - t0
        ops = RucioOps(RucioClientConfig.from_file(server.client_config), "bench")
        files = []
        for i in range(n):
            name = f"bench/run/raw/{i // 100:03d}/file_{i:06d}.dat"
            data = (f"{i}:" * 200).encode()
            path = rses["USDF_DISK"] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files.append(
                FileDid(
                    name,
                    len(data),
                    f"{zlib.adler32(data) & 0xFFFFFFFF:08x}",
                    {"rubin_butler": "data_product", "rubin_sidecar": "{}"},
                )
            )
        t0 = time.monotonic()
        ops.add_replicas("USDF_DISK", files)
        t["register (add_replicas)"] = time.monotonic() - t0
        t0 = time.monotonic()
        ops.set_metadata(files)
        t["metadata"] = time.monotonic() - t0
        t0 = time.monotonic()
        ops.ensure_dataset("bench.ds")
        ops.attach("bench.ds", [f.name for f in files])
        t["attach"] = time.monotonic() - t0
        t0 = time.monotonic()
        rule, _ = ops.ensure_rule(
            "bench.ds", "IN2P3_DISK", lifetime_s=None, activity="User Subscriptions", comment="benchmark"
        )
        t["rule creation"] = time.monotonic() - t0
        t0 = time.monotonic()
        while (st := ops.rule(rule)).state not in ("OK", "STUCK"):
            time.sleep(0.5)
            if time.monotonic() - t0 > 1800:
                break
        t["transfer to OK"] = time.monotonic() - t0
        t["state"] = st.state  # type: ignore[assignment]
        missing = sum(1 for f in files if not (rses["IN2P3_DISK"] / f.name).exists())
        t["missing at destination"] = missing
    finally:
        server.down()
    return t


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [500, 2000]
    for n in sizes:
        t = run(n)
        moving = sum(
            v
            for k, v in t.items()
            if k in ("register (add_replicas)", "metadata", "attach", "rule creation", "transfer to OK")
        )
        rate = n / moving if moving else float("nan")
        print(f"== {n} files: rule {t['state']}, {int(t['missing at destination'])} missing at the destination")
        for k, v in t.items():
            if k not in ("state", "missing at destination"):
                print(f"   {k:26s} {v:8.2f} s")
        print(
            f"   {'register → OK, files/s':26s} {rate:8.1f}   baseline (rehearsal) {REHEARSAL_FILES_PER_S:.2f}/s"
            f"   ratio {rate / REHEARSAL_FILES_PER_S:.0f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
