"""QA at scale: the reference covers a sample of sky units; completeness is checked for every unit.

Fast tests: the campaign's ``qa`` key (errors naming the file and the key) and the sample's
deterministic choice, boundary units among it. The world's part (a one-site campaign over two
tracts, one unit sampled: the reference covers tract 0 only, a missing product of the unsampled
tract is named) runs in ``test_tampered_campaign.py``, on the one campaign that file runs; a
clean sampled campaign passing QA is the groups campaign's (``test_groups_e2e.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import campaign_variant

from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign
from multisite_nb.phases.qa.sample import choose_sample

NAME = "qasample"


def _write(folder: Path, name: str, **changes: Any) -> Path:
    return campaign_variant(folder, name, changes=changes)


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        ({"sample_units_per_site": -1}, "key 'qa.sample_units_per_site': expected a number of units per site"),
        ({"sample_units_per_site": "most"}, "key 'qa.sample_units_per_site': expected a number of units per site"),
        ({"sample_units_per_site": True}, "key 'qa.sample_units_per_site': expected a number of units per site"),
        ({"sample_units_per_site": 0}, "key 'qa': the reference would cover no sky unit"),
        ({"sample": [{"tract": 7, "patch": 3}]}, "qa.sample[0]: tract 7 patch 3 is not a sky unit of any site"),
        ({"sample": [{"tract": 0, "patch": 3}, {"tract": 0, "patch": 3}]}, "sample: tract 0 patch 3 is given twice"),
        ({"sample_size": 2}, "key 'qa.sample_size': unknown key"),
    ],
)
def test_bad_qa_settings_name_the_file_and_the_key(tmp_path: Path, qa: dict[str, Any], message: str) -> None:
    path = _write(tmp_path, "bad", qa=qa)
    with pytest.raises(ConfigError) as err:
        load_campaign(path, env={})
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_the_sample_is_deterministic_and_takes_boundary_units(tmp_path: Path) -> None:
    units = [{"tract": t, "patch": p} for t in range(4) for p in range(3)]  # 12 units at one site
    sites = {"IN2P3": {"sky_units": units}, "RAL": {"tracts": ["10-14"]}}
    path = _write(tmp_path, "pick", sites=sites)
    campaign = load_campaign(path, env={})
    assert campaign.config.qa.sample_units_per_site == 3  # the default: a few per site

    plain = choose_sample(campaign)
    assert plain == choose_sample(campaign)  # deterministic
    assert [str(u) for u in plain["IN2P3"]] == ["tract 0 patch 0", "tract 1 patch 1", "tract 2 patch 2"]
    assert [u.tract for u in plain["RAL"]] == [10, 11, 13]

    edge = {"IN2P3": {(3, 1), (3, 2)}, "RAL": {(14, None)}}
    picked = choose_sample(campaign, edge)
    keys = {s: {u.key for u in us} for s, us in picked.items()}
    assert len(keys["IN2P3"]) == 3 and len(keys["IN2P3"] & edge["IN2P3"]) == 2  # half, rounded up
    assert len(keys["RAL"]) == 3 and (14, None) in keys["RAL"]  # the only boundary unit

    more = _write(tmp_path, "more", sites=sites, qa={"sample_units_per_site": 1, "sample": [{"tract": 12}]})
    chosen = choose_sample(load_campaign(more, env={}))
    assert [u.key for u in chosen["RAL"]] == [(10, None), (12, None)]  # the explicit unit on top
    everything = _write(tmp_path, "all", sites=sites, qa={"sample_units_per_site": "all"})
    assert len(choose_sample(load_campaign(everything, env={}))["IN2P3"]) == 12
