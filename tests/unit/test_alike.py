"""Sites checked alike: each kind of difference is named with the site, the item and both values."""

from __future__ import annotations

import pytest

from multisite_nb.domain.alike import (
    ContentDigest,
    ContentDigester,
    Difference,
    ItemKind,
    SiteFingerprint,
    compare,
    config_digest,
    dataset_type_text,
    refusal,
)

CALEXP = dataset_type_text(["instrument", "visit", "detector"], "Exposure")
SITES = ("IN2P3", "RAL", "LANCS")


def content(*rows: tuple[str, str, str], dataset_type: str = "flat", max_keyed: int = 100) -> ContentDigest:
    """A content digest of (data ID, dataset ID, validity) rows."""
    d = ContentDigester(dataset_type, max_keyed=max_keyed)
    for data_id, dataset_id, validity in rows:
        d.add(data_id, dataset_id, validity)
    return d.result()


FLATS = (
    ("detector=0, physical_filter=HSC-R", "aaaaaaaa-0000", "[2020-01-01, 2020-02-01)"),
    ("detector=1, physical_filter=HSC-R", "bbbbbbbb-0000", "[2020-01-01, 2020-02-01)"),
)


def fingerprint(site: str, **changes: object) -> SiteFingerprint:
    """A site as the 3x3 world has it; ``changes`` replace fields."""
    base: dict[str, object] = {
        "site": site,
        "stage": "early",
        "task_configs": {"isr": config_digest("pkg.Isr", "config.a=1\n"), "calibrateImage": "c0ffee"},
        "software": {"python": "3.12.1", "lsst-daf-butler": "30.2026.4300", "multisite-nb": "0.1"},
        "collections": {"HSC/defaults": "CHAINED: HSC/raw/all, HSC/calib", "HSC/calib": "CALIBRATION"},
        "contents": {"HSC/calib": {"flat": content(*FLATS)}},
        "dataset_types": {"calexp": CALEXP, "flat": dataset_type_text(["instrument", "detector"], "Exposure")},
    }
    base.update(changes)
    return SiteFingerprint.model_validate(base)


def alike() -> list[SiteFingerprint]:
    return [fingerprint(s) for s in SITES]


def test_equal_sites_give_no_difference() -> None:
    assert compare(alike()) == []
    assert compare(alike(), reference="RAL") == []
    assert compare(alike()[:1]) == []


def test_a_task_config_that_differs_is_named() -> None:
    sites = alike()
    sites[1] = fingerprint("RAL", task_configs={**sites[1].task_configs, "isr": config_digest("pkg.Isr", "a=2\n")})
    (d,) = compare(sites)
    assert (d.site, d.kind, d.item, d.reference_site) == ("RAL", ItemKind.TASK_CONFIG, "isr", "IN2P3")
    assert d.value == config_digest("pkg.Isr", "a=2\n") and d.reference_value == sites[0].task_configs["isr"]
    assert d.message.startswith("site RAL: task config 'isr' is '") and d.message.endswith("' at IN2P3")


def test_a_software_version_that_differs_is_named() -> None:
    sites = alike()
    sites[2] = fingerprint("LANCS", software={**sites[2].software, "lsst-daf-butler": "29.0.0"})
    (d,) = compare(sites)
    assert d.kind is ItemKind.SOFTWARE and d.item == "lsst-daf-butler"
    assert d.message == "site LANCS: software version 'lsst-daf-butler' is '29.0.0' here but '30.2026.4300' at IN2P3"


def test_a_dataset_type_defined_otherwise_is_named() -> None:
    sites = alike()
    other = dataset_type_text(["instrument", "visit", "detector"], "ExposureF")
    sites[1] = fingerprint("RAL", dataset_types={**sites[1].dataset_types, "calexp": other})
    (d,) = compare(sites)
    assert d.message == (
        "site RAL: dataset type 'calexp' is 'instrument, visit, detector | ExposureF' here "
        "but 'instrument, visit, detector | Exposure' at IN2P3"
    )


def test_a_calibration_that_differs_is_found_by_its_data_id() -> None:
    sites = alike()
    changed = (FLATS[0], (FLATS[1][0], "cccccccc-0000", FLATS[1][2]))
    sites[1] = fingerprint("RAL", contents={"HSC/calib": {"flat": content(*changed)}})
    (d,) = compare(sites)
    assert d.kind is ItemKind.CONTENT and d.site == "RAL" and d.reference_site == "IN2P3"
    assert d.item == "HSC/calib: flat detector=1, physical_filter=HSC-R"
    assert d.value.startswith("dataset cccccccc") and d.reference_value.startswith("dataset bbbbbbbb")
    # the same calibration valid over another range is another calibration
    moved = (FLATS[0], (FLATS[1][0], FLATS[1][1], "[2020-01-01, 2020-03-01)"))
    sites[1] = fingerprint("RAL", contents={"HSC/calib": {"flat": content(*moved)}})
    (d,) = compare(sites)
    assert "2020-03-01" in d.value and "2020-02-01" in d.reference_value


def test_sites_holding_different_parts_of_the_sky_are_alike_where_they_overlap() -> None:
    """Reference shards: each site holds those its sky needs; the shared shards are the same datasets."""
    shards = {i: f"{i:08x}-0000" for i in range(10)}

    def refcat(*ids: int) -> dict[str, dict[str, ContentDigest]]:
        return {"refcats": {"ps1": content(*((f"htm7={i}", shards[i], "") for i in ids), dataset_type="ps1")}}

    sites = [
        fingerprint("IN2P3", contents=refcat(0, 1, 2, 3)),
        fingerprint("RAL", contents=refcat(3, 4, 5)),
        fingerprint("LANCS", contents=refcat(6, 7)),
    ]
    assert compare(sites) == []
    other = content(("htm7=3", "ffffffff-0000", ""), ("htm7=4", shards[4], ""), dataset_type="ps1")
    sites[1] = fingerprint("RAL", contents={"refcats": {"ps1": other}})
    (d,) = compare(sites)  # two sites, two values: the first site's stands
    assert (d.site, d.item, d.reference_site) == ("RAL", "refcats: ps1 htm7=3", "IN2P3")


def test_a_missing_item_on_one_site_is_named() -> None:
    sites = alike()
    software = {k: v for k, v in sites[1].software.items() if k != "multisite-nb"}
    sites[1] = fingerprint("RAL", software=software, contents={}, collections={"HSC/defaults": "CHAINED: HSC/raw/all"})
    found = {(d.kind, d.item): d for d in compare(sites)}
    assert set(found) == {
        (ItemKind.SOFTWARE, "multisite-nb"),
        (ItemKind.COLLECTION, "HSC/defaults"),
        (ItemKind.COLLECTION, "HSC/calib"),
        (ItemKind.CONTENT, "HSC/calib: flat"),
    }
    assert all(d.site == "RAL" and d.reference_site == "IN2P3" for d in found.values())
    assert found[(ItemKind.SOFTWARE, "multisite-nb")].message == (
        "site RAL: software version 'multisite-nb' is missing here but '0.1' at IN2P3"
    )
    flat = found[(ItemKind.CONTENT, "HSC/calib: flat")]
    assert flat.value == "missing" and flat.reference_value.startswith("2 datasets (digest ")
    # an item only one site has: that site is the odd one, named against the others
    sites = alike()
    sites[2] = fingerprint("LANCS", task_configs={**sites[2].task_configs, "extra": "beef"})
    (d,) = compare(sites)
    assert d.message == "site LANCS: task config 'extra' is 'beef' here but missing at IN2P3"


def test_the_odd_site_is_named_unless_a_reference_is_given() -> None:
    sites = alike()
    sites[0] = fingerprint("IN2P3", software={**sites[0].software, "python": "3.11.9"})
    (d,) = compare(sites)  # most sites have 3.12.1: IN2P3 is the odd one, named against RAL
    assert (d.site, d.value, d.reference_site, d.reference_value) == ("IN2P3", "3.11.9", "RAL", "3.12.1")
    ds = compare(sites, reference="IN2P3")
    assert [(d.site, d.reference_site, d.reference_value) for d in ds] == [
        ("RAL", "IN2P3", "3.11.9"),
        ("LANCS", "IN2P3", "3.11.9"),
    ]
    with pytest.raises(ValueError, match="reference site 'CERN'"):
        compare(sites, reference="CERN")
    with pytest.raises(ValueError, match="twice"):
        compare([sites[0], sites[0]])


def test_content_above_the_keyed_limit_is_compared_whole() -> None:
    rows = [(f"htm7={i}", f"{i:08x}-0000", "") for i in range(5)]
    whole = content(*rows, max_keyed=3)
    assert whole.keys is None and whole.count == 5
    assert content(*reversed(rows), max_keyed=3) == whole  # the digest does not depend on the order
    changed = content(*rows[:4], ("htm7=4", "ffffffff-0000", ""), max_keyed=3)
    sites = [fingerprint("IN2P3", contents={"r": {"t": whole}}), fingerprint("RAL", contents={"r": {"t": changed}})]
    (d,) = compare(sites)
    assert d.item == "r: t" and d.value.startswith("5 datasets (digest ") and d.value != d.reference_value


def test_the_refusal_names_the_first_differences_and_counts_the_rest() -> None:
    diffs = [
        Difference(
            site="RAL", kind=ItemKind.SOFTWARE, item=f"p{i}", reference_site="IN2P3", reference_value="1", value="2"
        )
        for i in range(7)
    ]
    text = refusal("early", diffs)
    assert text.startswith("the sites of stage 'early' differ, nothing submitted: site RAL: software version 'p0'")
    assert text.endswith("; and 2 more") and "'p4'" in text and "'p5'" not in text


def test_a_flowing_stage_is_compared_once_every_site_has_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate: sites arrive one by one (one never comes); the last compares; every arrived site is held."""
    import threading

    from multisite_nb.phases import alike as gate_module

    calls: list[list[str]] = []
    diff = Difference(
        site="RAL", kind=ItemKind.SOFTWARE, item="python", reference_site="IN2P3", reference_value="3.12", value="3.11"
    )

    def fake_check(campaign: object, stage: str, sites: list[str], **kw: object) -> list[Difference]:
        calls.append(list(sites))
        return [diff]

    monkeypatch.setattr(gate_module, "check_alike", fake_check)
    gate = gate_module.AlikeGate(object(), "early", list(SITES), "/nonexistent")  # type: ignore[arg-type]
    answers: dict[str, list[str]] = {}

    def arrive(site: str) -> None:
        answers[site] = gate.ready(site)

    threads = [threading.Thread(target=arrive, args=(s,)) for s in ("RAL", "IN2P3")]
    for t in threads:
        t.start()
    threads[0].join(0.3)
    assert not answers and not calls  # LANCS has not come yet: they wait
    gate.leave("LANCS")  # its common shipment failed
    for t in threads:
        t.join(5)
    assert calls == [["IN2P3", "RAL"]]  # compared once, in the campaign's order, without LANCS
    assert answers["RAL"] == answers["IN2P3"] == [refusal("early", [diff], shown=1)]
    assert gate.differences == [diff]
    # one site alone is compared with nobody; a stopped flow does not wait
    lone = gate_module.AlikeGate(object(), "early", ["RAL", "LANCS"], "/x")  # type: ignore[arg-type]
    lone.leave("LANCS")
    monkeypatch.setattr(gate_module, "check_alike", lambda *a, **k: [])
    assert lone.ready("RAL") == []
    stop = threading.Event()
    stop.set()
    stuck = gate_module.AlikeGate(object(), "early", list(SITES), "/x")  # type: ignore[arg-type]
    assert stuck.ready("RAL", stop) == ["the flow was stopped before the sites were compared"]
