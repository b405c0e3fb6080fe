"""The malformed parameter files of ``tests/data/bad``: each campaign file (``manifest_*.yaml`` are the
bad manifests some of them use) starts with ``# expect: <text the error must contain>`` and, when the
fault is in another file, ``# named file: <that file>``."""

from __future__ import annotations

from pathlib import Path

BAD = Path(__file__).parent / "data" / "bad"
CASES = sorted(p for p in BAD.glob("*.yaml") if not p.name.startswith("manifest_"))


def expectation(path: Path) -> tuple[str, Path]:
    """(the text the error must contain, the file it must name)."""
    head = path.read_bytes().split(b"\n", 2)
    needle = head[0].decode().removeprefix("# expect: ")
    named = path
    if len(head) > 1 and head[1].startswith(b"# named file: "):
        named = BAD / head[1].decode().removeprefix("# named file: ")
    return needle, named.resolve()
