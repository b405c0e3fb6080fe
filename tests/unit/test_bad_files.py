"""Malformed parameter and manifest files are refused with one clear error naming the file and the key.

(That they touch nothing when run against a world: ``tests/test_bad_input.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_files import CASES, expectation

from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_file_is_refused_naming_file_and_key(path: Path) -> None:
    needle, named = expectation(path)
    with pytest.raises(ConfigError) as info:
        load_campaign(path, env={"MSNB_WORLD": "/nonexistent/world"})
    message = str(info.value)
    assert message.startswith(f"{named}:"), message
    assert needle in message, message
    assert "Traceback" not in message
