"""The run's index page: ``<run_dir>/index.html``.

One plain page per run: campaign, who ran it and when, the outcome, one row
per phase (status, duration, gate reason, links to the executed notebook
rendered as HTML, the raw notebook, the result JSON and the artifacts), the
parameters used (secret-looking keys redacted) and any secret-scan findings.
Every link is relative and points to a file inside the run folder, so the
folder can be copied, zipped or served as is.
"""

from __future__ import annotations

import html
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from multisite_nb.results import (
    PhaseResult,
    PhaseRun,
    RunRecord,
    atomic_write_text,
    load_results,
    load_run_record,
)
from multisite_nb.secrets import redact_parameters

__all__ = ["render_index", "render_notebook_html"]

_PAGE_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:72em;
 padding:0 1em;color:#1f2328}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;padding:.35em .6em;
 border-bottom:1px solid #d0d7de}th{background:#f6f8fa}
code,pre{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
.meta td:first-child{width:9em;color:#57606a}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600;font-size:.9em}
.pass{background:#dafbe1;color:#116329}.fail,.failed,.interrupted{background:#ffebe9;color:#a40e26}
.notrun{background:#f6f8fa;color:#57606a}.running{background:#fff8c5;color:#7d4e00}
.passed{background:#dafbe1;color:#116329}
tr.fail td,tr.failed td{background:#fff5f5}
.small{color:#57606a;font-size:.9em}ul.art{margin:0;padding-left:1.1em}
"""

_NB_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1em auto;max-width:72em;
 padding:0 1em;color:#1f2328}
.jp-Cell{margin:.6em 0}.jp-InputArea-editor,.highlight{background:#f6f8fa;border-radius:4px}
pre{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;margin:0;padding:.5em .7em;
 white-space:pre-wrap;word-break:break-word}
.jp-OutputArea-output pre{background:none;padding:.2em .7em}
.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"] pre{background:#fff5f5}
table.dataframe{border-collapse:collapse;font-size:12.5px;margin:.3em .7em}
table.dataframe th,table.dataframe td{border:1px solid #d0d7de;padding:.15em .5em;text-align:right}
img{max-width:100%}.nav{margin-bottom:1em}
"""


def _fmt_time(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _href(rel: str) -> str:
    return html.escape(quote(rel, safe="/._-~"), quote=True)


def _link(run_dir: Path, rel: str, text: str | None = None) -> str:
    """An ``<a>`` to ``rel`` if that file exists in the run folder, else plain text."""
    label = html.escape(text if text is not None else rel)
    target = (run_dir / rel).resolve()
    inside = target == run_dir or run_dir in target.parents
    if inside and target.is_file():
        return f'<a href="{_href(rel)}">{label}</a>'
    return f'{label} <span class="small">(missing)</span>'


def render_notebook_html(ipynb: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Render an executed notebook to a small standalone HTML page.

    Uses nbconvert's ``basic`` template without input/output prompts, plus a
    little inline CSS and the Pygments style for code; no external scripts.
    A link back to ``../index.html`` is added at the top.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    src, dst = Path(ipynb), Path(target)
    nb = nbformat.read(src, as_version=4)
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    pygments_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    back = os.path.relpath(src.parent / "index.html", dst.parent).replace(os.sep, "/")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(src.name)}</title><style>{_NB_CSS}{pygments_css}</style></head><body>\n"
        f'<div class="nav"><a href="{_href(back)}">← run index</a> · <code>{html.escape(src.name)}</code></div>\n'
        f"{body}\n</body></html>\n"
    )
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


def _notebook_html(run_dir: Path, notebook: str, withhold: bool = False) -> tuple[str | None, str]:
    """Render ``notebook`` (relative) into ``html/`` unless up to date; return (rel html, note).

    With ``withhold`` (the notebook was flagged by the secret scan) no HTML is
    written and an existing one is removed, so the leak is not copied.
    """
    src = run_dir / notebook
    if not src.is_file():
        return None, "notebook missing"
    rel = f"html/{Path(notebook).stem}.html"
    dst = run_dir / rel
    if withhold:
        dst.unlink(missing_ok=True)
        return None, "HTML withheld: possible credential leak"
    try:
        if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
            render_notebook_html(src, dst)
    except Exception as exc:  # a damaged notebook must not hide the rest of the run
        return None, f"HTML rendering failed ({type(exc).__name__})"
    return rel, ""


def _status_badge(status: str) -> str:
    cls = status.replace(" ", "")
    return f'<span class="badge {cls}">{html.escape(status)}</span>'


def _param_rows(params: Any) -> str:
    shown = redact_parameters(params)
    rows = ['<tr><td><code>run_dir</code></td><td class="small">this run folder</td></tr>']
    if not isinstance(shown, dict):
        return rows[0]
    for key, value in shown.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append(f"<tr><td><code>{html.escape(str(key))}</code></td><td><code>{html.escape(text)}</code></td></tr>")
    return "\n".join(rows)


def _phase_rows(run_dir: Path, record: RunRecord | None, results: dict[str, PhaseResult]) -> str:
    flagged = _flagged_files(record)
    entries: list[PhaseRun] = list(record.phases) if record else []
    known = {e.phase for e in entries}
    for name, res in results.items():  # results recorded outside the chain (e.g. by hand)
        if name not in known:
            nb = next((p.name for p in sorted(run_dir.glob(f"*_{name}.ipynb"))), None)
            entries.append(PhaseRun(phase=name, notebook=nb, status=res.status, reason=res.reason))
    rows = []
    for e in entries:
        res = results.get(e.phase)
        status = e.status
        if status == "pass" and e.resumed:
            note = ' <span class="small">(earlier run)</span>'
        else:
            note = ""
        duration = e.duration_s if e.duration_s is not None else (res.duration_s if res else None)
        links = []
        if e.notebook:
            rel_html, problem = _notebook_html(run_dir, e.notebook, withhold=e.notebook in flagged)
            if rel_html:
                links.append(_link(run_dir, rel_html, "notebook"))
            elif problem:
                links.append(f'<span class="small">{html.escape(problem)}</span>')
            links.append(_link(run_dir, e.notebook, ".ipynb"))
        if res is not None:
            links.append(_link(run_dir, f"results/{e.phase}.json", "result"))
        arts = ""
        if res and res.artifacts:
            items = "".join(f"<li>{_link(run_dir, a)}</li>" for a in res.artifacts)
            arts = f'<ul class="art">{items}</ul>'
        summary = ""
        if res and res.summary:
            text = json.dumps(res.summary, default=str)
            if len(text) > 300:
                text = text[:299] + "…"
            summary = (f'<details class="small"><summary>figures</summary><code>{html.escape(text)}</code>'
                       "</details>")
        reason = e.reason or (res.reason if res else "")
        rows.append(
            f'<tr class="{status.replace(" ", "")}"><td><b>{html.escape(e.phase)}</b></td>'
            f"<td>{_status_badge(status)}{note}</td><td>{_fmt_duration(duration)}</td>"
            f"<td>{html.escape(reason)}{summary}</td><td>{' · '.join(links) or '—'}</td><td>{arts or '—'}</td></tr>"
        )
    return "\n".join(rows) or '<tr><td colspan="6" class="small">no phases</td></tr>'


def render_index(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``<run_dir>/index.html`` from ``run.json`` and ``results/``.

    Executed notebooks are rendered to ``html/NN_<phase>.html`` (only when the
    notebook is newer than its HTML; never for a notebook the secret scan
    flagged in ``run.json``).  Links are relative and only emitted for
    files that exist in the run folder.

    Parameters
    ----------
    run_dir : path
        The run folder.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    run_dir = Path(run_dir).resolve()
    record = load_run_record(run_dir)
    results = load_results(run_dir, strict=False)
    title = f"{record.campaign} / {record.run_id}" if record else run_dir.name
    if record:
        outcome = record.outcome
        meta = [
            ("campaign", html.escape(record.campaign)),
            ("run", f"<code>{html.escape(record.run_id)}</code>"),
            ("outcome", f"{_status_badge(outcome)} {html.escape(record.reason)}"),
            ("who", f"{html.escape(record.who)} on {html.escape(record.host)}"),
            ("started", _fmt_time(record.started)),
            ("finished", _fmt_time(record.finished)),
            ("phases", html.escape(" → ".join(record.phases_requested))),
        ]
        if record.resumed_at:
            meta.append(("resumed", ", ".join(_fmt_time(t) for t in record.resumed_at)))
    else:
        meta = [("run", f"<code>{html.escape(run_dir.name)}</code>"), ("outcome", "no run.json")]
    files = [_link(run_dir, r) for r in ("run.json", "logs/chain.log") if (run_dir / r).is_file()]
    if files:
        meta.append(("files", " · ".join(files)))
    meta_rows = "\n".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta)

    findings = ""
    if record and record.secret_findings:
        items = "".join(f"<li><code>{html.escape(f)}</code></li>" for f in record.secret_findings[:100])
        more = len(record.secret_findings) - 100
        extra = f"<li>… {more} more</li>" if more > 0 else ""
        findings = (
            '<h2>Secret scan</h2><p class="badge fail">possible credential leak — do not share this '
            f"run folder until it is cleaned and the credentials are rotated</p><ul>{items}{extra}</ul>"
        )

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_PAGE_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<table class="meta">
{meta_rows}
</table>
<h2>Phases</h2>
<table>
<tr><th>phase</th><th>status</th><th>duration</th><th>gate</th><th>notebook</th><th>artifacts</th></tr>
{_phase_rows(run_dir, record, results)}
</table>
{findings}
<h2>Parameters</h2>
<table>
{_param_rows(record.parameters if record else {})}
</table>
</body></html>
"""
    target = run_dir / "index.html"
    atomic_write_text(target, page)
    return target
