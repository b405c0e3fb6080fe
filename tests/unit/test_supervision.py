"""What the supervisor makes of a stopped chain (multisite_nb.domain.supervision.diagnose).

Each case is a phase result as the phases record it (their typed summaries); the diagnosis decides
between retrying, repairing first, asking a person, and the verdict.
"""

from __future__ import annotations

import pytest

from multisite_nb.domain.alerts import AlertKind
from multisite_nb.domain.records import GroupCounts, HeldGroup, StepRecord, StepState
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import (
    FlowSummary,
    PhaseSummary,
    PlacementSummary,
    RepairAction,
    RepairSummary,
    StepsSummary,
    VerifySummary,
)
from multisite_nb.domain.supervision import Remedy, SupervisionRecord, diagnose, diagnose_stop

SITES = ("USDF", "IN2P3", "RAL", "LANCS")


def _result(phase: str, reason: str, summary: PhaseSummary | None = None) -> PhaseResult:
    return PhaseResult(phase=phase, passed=False, reason=reason, summary=summary or PhaseSummary())


def test_a_phase_that_raised_is_transient_and_names_its_site() -> None:
    found = diagnose(
        _result("transfer", "raised", PhaseSummary(error="RucioError: RAL_DISK: connection refused")), "", sites=SITES
    )
    assert found.remedy is Remedy.RETRY
    assert found.site == "RAL" and found.phase == "transfer"


def test_a_chain_that_left_no_result_is_retried() -> None:
    found = diagnose(None, "02_flow recorded no result (the kernel died)", sites=SITES)
    assert found.remedy is Remedy.RETRY


@pytest.mark.parametrize(
    "summary",
    [
        VerifySummary(problems=3),
        FlowSummary(gates={"transfer": True, "verify": False}),
    ],
)
def test_a_verification_that_found_problems_is_repaired_first(summary: PhaseSummary) -> None:
    found = diagnose(_result(summary.__class__.__name__.lower(), "3 problems at IN2P3", summary), "", sites=SITES)
    assert found.remedy is Remedy.REPAIR
    assert found.site == "IN2P3"


def test_a_file_repair_cannot_mend_asks_a_person_with_what_to_restore() -> None:
    summary = RepairSummary(
        actions=[
            RepairAction(site="RAL", what="raw/a.fits", action="declared bad"),
            RepairAction(site="LANCS", what="raw/b.fits", action="cannot repair", detail="restore it at USDF"),
        ],
        remaining=1,
    )
    found = diagnose(_result("repair", "1 problem remains", summary), "", sites=SITES)
    assert found.remedy is Remedy.PERSON
    assert AlertKind(found.kind) is AlertKind.NO_GOOD_COPY
    assert (found.site, found.subject) == ("LANCS", "raw/b.fits")
    assert "restore it at USDF" in found.action


def test_a_held_group_asks_a_person_naming_site_step_and_group() -> None:
    record = StepRecord(
        site="RAL",
        step="step1",
        state=StepState.HELD,
        groups=GroupCounts(total=3, done=2, held=1, held_groups=[HeldGroup(group="g002", attempts=3, cause="boom")]),
    )
    summary = StepsSummary(stage="early", steps={"RAL": {"step1": record}})
    found = diagnose(_result("submit_early", "1 group(s) held after their retries", summary), "", sites=SITES)
    assert found.remedy is Remedy.PERSON and AlertKind(found.kind) is AlertKind.GROUP_HELD
    assert found.site == "RAL" and found.subject == "step1 g002"
    assert "--resume" in found.action


def test_a_collision_at_placement_asks_a_person() -> None:
    summary = PlacementSummary(collisions=["collection u/other/run exists"])
    found = diagnose(_result("placement", "1 collision", summary), "", sites=SITES)
    assert found.remedy is Remedy.PERSON and AlertKind(found.kind) is AlertKind.PLACEMENT_COLLISION


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("OSError: [Errno 28] No space left on device: '/data/rse/LANCS_DISK/raw/x'", AlertKind.DISK_FULL),
        ("CannotAuthenticate: Cannot authenticate with given credentials", AlertKind.CREDENTIAL_REFUSED),
    ],
)
def test_a_full_disk_or_a_refused_credential_asks_a_person(error: str, kind: AlertKind) -> None:
    found = diagnose(_result("flow", "raised", PhaseSummary(error=error)), "", sites=SITES)
    assert found.remedy is Remedy.PERSON and AlertKind(found.kind) is kind
    if kind is AlertKind.DISK_FULL:
        assert found.site == "LANCS"


def test_a_qa_that_differs_from_the_reference_is_the_verdict() -> None:
    found = diagnose(_result("qa", "2 products differ from the reference"), "", sites=SITES)
    assert found.remedy is Remedy.VERDICT


def test_a_qa_phase_that_raised_is_retried_not_a_verdict() -> None:
    found = diagnose(_result("qa", "raised", PhaseSummary(error="ButlerError: database is locked")), "", sites=SITES)
    assert found.remedy is Remedy.RETRY


def test_the_record_keeps_its_last_rounds_only() -> None:
    now = utcnow()
    record = SupervisionRecord(campaign="c", started=now, updated=now)
    for i in range(250):
        record.note(now, "waited", str(i))
    assert len(record.rounds) == 200 and record.rounds[-1].note == "249"
    again = SupervisionRecord.model_validate_json(record.model_dump_json())
    assert again.rounds[0].note == "50"


def test_a_refused_placement_and_a_credential_leak_ask_a_person_not_a_retry() -> None:
    refused = diagnose(
        _result("placement", "cannot be made consistent", PlacementSummary(refused=["tract 3 at RAL and LANCS"])),
        "",
        sites=SITES,
    )
    assert refused.remedy is Remedy.PERSON and "tract 3" in refused.cause
    leak = diagnose(None, "possible credential leak in logs/chain.log", sites=SITES)
    assert leak.remedy is Remedy.PERSON and leak.subject == "secret scan"


def test_sites_that_differ_ask_a_person() -> None:
    from multisite_nb.domain.alike import Difference, refusal

    why = refusal(
        "early",
        [
            Difference(
                site="RAL",
                kind="software version",
                item="lsst-daf-butler",
                reference_site="IN2P3",
                reference_value="29.0",
                value="28.2",
            )
        ],
    )
    found = diagnose(_result("submit_early", why), why, sites=SITES)
    assert found.remedy is Remedy.PERSON and found.subject == "sites differ" and found.site == "RAL"


def test_a_collision_check_that_could_not_reach_rucio_is_retried() -> None:
    summary = PlacementSummary(
        collisions=["Rucio: cannot check the campaign's rules: ServerConnectionException: Cannot connect"]
    )
    found = diagnose(_result("placement", "1 collision(s) before anything moved", summary), "", sites=SITES)
    assert found.remedy is Remedy.RETRY


def test_a_flow_that_held_a_group_asks_a_person_through_its_submit_gate() -> None:
    record = StepRecord(
        site="RAL",
        step="step1",
        state=StepState.HELD,
        groups=GroupCounts(total=3, done=2, held=1, held_groups=[HeldGroup(group="g0002", attempts=4, cause="x")]),
    )
    flow = _result("flow", "submit_early: 1 group(s) held", FlowSummary(gates={"verify": True, "submit_early": False}))
    gate = _result("submit_early", "1 group(s) held", StepsSummary(stage="early", steps={"RAL": {"step1": record}}))
    assert diagnose(flow, flow.reason, sites=SITES).remedy is Remedy.RETRY  # the flow's own summary does not say
    found = diagnose_stop([flow, gate], flow.reason, sites=SITES)
    assert found.remedy is Remedy.PERSON and found.subject == "step1 g0002"


def test_a_repair_goes_before_a_person_when_a_flow_says_both() -> None:
    record = StepRecord(site="RAL", step="step1", state=StepState.HELD, groups=GroupCounts(total=1, held=1))
    flow = _result("flow", "verify failed", FlowSummary(gates={"verify": False, "submit_early": False}))
    verify = _result("verify", "1 problem at RAL", VerifySummary(problems=1))
    gate = _result("submit_early", "held", StepsSummary(stage="early", steps={"RAL": {"step1": record}}))
    assert diagnose_stop([flow, verify, gate], flow.reason, sites=SITES).remedy is Remedy.REPAIR


def test_a_flow_stopped_by_rucio_being_down_is_retried_not_repaired() -> None:
    # what the chaos test met: Rucio killed while the flow shipped; verify then found nothing in place
    down = "RAL: groups.placement.RAL.common: pin at the source: ServerConnectionException: Cannot connect"
    flow = _result(
        "flow", f"transfer: {down}; verify: not verified", FlowSummary(gates={"transfer": False, "verify": False})
    )
    transfer = _result("transfer", down)
    verify = _result(
        "verify", "not verified (not in place): RAL: groups.placement.RAL.common", VerifySummary(problems=3)
    )
    found = diagnose_stop([flow, transfer, verify], flow.reason, sites=SITES)
    assert (found.remedy, found.kind, found.site) == (Remedy.RETRY, "unreachable", "RAL")
    # the same verification without the outage is a repair
    assert diagnose_stop([verify], verify.reason, sites=SITES).remedy is Remedy.REPAIR
    # a step that timed out is not an outage
    slow = _result("verify", "rule 1234 not OK: timed out after 600 s; STUCK", VerifySummary(problems=1))
    assert diagnose_stop([slow], slow.reason, sites=SITES).remedy is Remedy.REPAIR
