"""The run page ``<run_dir>/index.html`` and the executed notebooks rendered as HTML.

One page per run: the open alerts (what needs a person) on top, then the campaign, who ran it and
when, the outcome, one row per phase (status, duration, gate reason, links to the executed
notebook rendered as HTML, the raw notebook, the result JSON and the artifacts), the parameters
used (secret-looking keys redacted) and any secret-scan findings. Every link is relative and
points to a file inside the run folder, so the folder can be copied, zipped or served as is. The
markup is in ``templates/index.html.j2`` and ``templates/notebook.html.j2``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup

from multisite_nb.adapters.alerts import load_alerts
from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.results import load_results, load_run_record, run_state
from multisite_nb.domain.redaction import redact_parameters
from multisite_nb.domain.results import PhaseResult, PhaseRun, PhaseStatus, RunRecord
from multisite_nb.domain.summaries import StepsSummary
from multisite_nb.phases.placement.forecast import forecast_against_measured
from multisite_nb.views.html import render

__all__ = ["render_index", "render_notebook_html"]

_SUMMARY_CHARS = 300
_FINDINGS_SHOWN = 100


@dataclass(frozen=True)
class Link:
    """One entry of a link list: a file of the run folder (``href`` None: it is missing) or a note."""

    label: str
    href: str | None = None
    note: bool = False


@dataclass
class PhaseRow:
    """One line of the phases table."""

    phase: str
    status: str
    earlier: bool
    duration: float | None
    reason: str
    summary: str = ""
    groups: str = ""  # a phase that ran steps: its groups by state, per site
    links: list[Link] = field(default_factory=list)
    artifacts: list[Link] = field(default_factory=list)


def _link(run_dir: Path, rel: str, label: str | None = None) -> Link:
    """A link to ``rel`` if that file exists in the run folder, else the label marked missing."""
    target = (run_dir / rel).resolve()
    inside = target == run_dir or run_dir in target.parents
    href = quote(rel.replace(os.sep, "/"), safe="/._-~") if inside and target.is_file() else None
    return Link(label if label is not None else rel, href)


def render_notebook_html(ipynb: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Render an executed notebook to a small standalone HTML page.

    nbconvert's ``basic`` template without input/output prompts, inside the run page's
    stylesheet, with the Pygments style for code and a link back to ``index.html`` beside
    the notebook; no external scripts.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    src, dst = Path(ipynb), Path(target)
    nb = nbformat.read(src, as_version=4)
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    page = render(
        "notebook.html.j2",
        name=src.name,
        back=os.path.relpath(src.parent / "index.html", dst.parent).replace(os.sep, "/"),
        pygments_css=Markup(HtmlFormatter(style="default").get_style_defs(".highlight")),
        body=Markup(body),
    )  # nbconvert's own HTML of the notebook
    atomic_write_text(dst, page)
    return dst


def _flagged_files(record: RunRecord | None) -> set[str]:
    """Run-relative paths named in the record's secret findings (``path:line: kind``)."""
    out = set()
    for entry in record.secret_findings if record else []:
        m = re.match(r"^(.*):\d+: ", entry)
        if m:
            out.add(m.group(1))
    return out


def _notebook_link(run_dir: Path, notebook: str, withhold: bool = False) -> Link:
    """Render ``notebook`` (relative) into ``html/`` unless up to date; a link to it, or a note why not.

    With ``withhold`` (the notebook was flagged by the secret scan) no HTML is written and
    an existing one is removed, so the leak is not copied.
    """
    src = run_dir / notebook
    if not src.is_file():
        return Link("notebook missing", note=True)
    rel = f"html/{Path(notebook).stem}.html"
    dst = run_dir / rel
    if withhold:
        dst.unlink(missing_ok=True)
        return Link("HTML withheld: possible credential leak", note=True)
    try:
        if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
            render_notebook_html(src, dst)
    except Exception as exc:  # a damaged notebook must not hide the rest of the run
        return Link(f"HTML rendering failed ({type(exc).__name__})", note=True)
    return _link(run_dir, rel, "notebook")


def _parameters(params: object) -> list[tuple[str, str]]:
    shown = redact_parameters(params)
    if not isinstance(shown, dict):
        return []
    return [(str(k), v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in shown.items()]


def _phase_rows(run_dir: Path, record: RunRecord | None, results: dict[str, PhaseResult]) -> list[PhaseRow]:
    flagged = _flagged_files(record)
    entries: list[PhaseRun] = list(record.phases) if record else []
    known = {e.phase for e in entries}
    for name, found in results.items():  # results recorded outside the chain (e.g. by hand)
        if name not in known:
            nb = next((p.name for p in sorted(run_dir.glob(f"*_{name}.ipynb"))), None)
            entries.append(PhaseRun(phase=name, notebook=nb, status=PhaseStatus(found.status), reason=found.reason))
    rows = []
    for e in entries:
        res = results.get(e.phase)
        links = []
        if e.notebook:
            links += [
                _notebook_link(run_dir, e.notebook, withhold=e.notebook in flagged),
                _link(run_dir, e.notebook, ".ipynb"),
            ]
        if res is not None:
            links.append(_link(run_dir, f"results/{e.phase}.json", "result"))
        summary = res.summary.model_dump_json(exclude_defaults=True) if res else ""
        summary = "" if summary == "{}" else summary
        if len(summary) > _SUMMARY_CHARS:
            summary = summary[: _SUMMARY_CHARS - 1] + "…"
        rows.append(
            PhaseRow(
                phase=e.phase,
                status=e.status,
                earlier=e.status == "pass" and e.resumed,
                duration=e.duration_s if e.duration_s is not None else (res.duration_s if res else None),
                reason=e.reason or (res.reason if res else ""),
                summary=summary,
                groups=res.summary.groups_line() if res and isinstance(res.summary, StepsSummary) else "",
                links=links,
                artifacts=[_link(run_dir, a) for a in res.artifacts] if res else [],
            )
        )
    return rows


def render_index(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``<run_dir>/index.html`` from ``run.json`` and ``results/``.

    Executed notebooks are rendered to ``html/NN_<phase>.html`` (only when the notebook is
    newer than its HTML; never for a notebook the secret scan flagged in ``run.json``).
    Links are relative and only made for files that exist in the run folder.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    run_dir = Path(run_dir).resolve()
    record = load_run_record(run_dir)
    results = load_results(run_dir, strict=False)
    findings = record.secret_findings if record else []
    alerts = load_alerts(run_dir)
    page = render(
        "index.html.j2",
        title=f"{record.campaign} / {record.run_id}" if record else run_dir.name,
        record=record,
        state=run_state(record) if record else "",
        run_name=run_dir.name,
        files=[_link(run_dir, r) for r in ("run.json", "logs/chain.log") if (run_dir / r).is_file()],
        phases=_phase_rows(run_dir, record, results),
        findings=findings[:_FINDINGS_SHOWN],
        more_findings=len(findings) - _FINDINGS_SHOWN,
        parameters=_parameters(record.parameters if record else {}),
        forecast=forecast_against_measured(run_dir),
        alerts=[a for a in alerts if a.open],
        resolved_alerts=sum(not a.open for a in alerts),
    )
    target = run_dir / "index.html"
    atomic_write_text(target, page)
    return target
