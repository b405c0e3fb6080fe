"""How a step went: quanta counts and failures from the middleware's own provenance graph.

The counts come from `~lsst.pipe.base.quantum_provenance_graph.QuantumProvenanceGraph`
over the step's quantum graph and the datasets present in its output run. The cause of a
failed quantum is the exception line of its log dataset, else of the ``pipetask --summary``
file, else the provenance graph's own messages. When no graph was made at all, the cause
is the last exception-looking line of the attempt's log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler
from lsst.pipe.base.pipeline_graph import PipelineGraph
from lsst.pipe.base.quantum_provenance_graph import QuantumProvenanceGraph

from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.domain.records import QuantumFailure
from multisite_nb.domain.steps import StepRun
from multisite_nb.domain.wiring import load_pipeline_graph

__all__ = ["GraphStatus", "graph_status", "log_tail_cause", "summary_status"]

_MAX_CAUSE = 500


@dataclass
class GraphStatus:
    """Counts of a step's quanta (``pending``: blocked by a failure upstream, or not run yet)."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    by_task: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[QuantumFailure] = field(default_factory=list)


def _exception_line(messages: Sequence[str]) -> str:
    """The exception line of a failed quantum's ERROR log messages."""
    for msg in messages:
        m = re.search(r"failed\. Exception (.+)", msg, re.DOTALL)
        if m:
            return m.group(1).strip().splitlines()[0][:_MAX_CAUSE]
    if messages:
        return " | ".join(m.strip().splitlines()[0] for m in messages[:3])[:_MAX_CAUSE]
    return ""


def _failure_cause(butler: Butler, graph: PipelineGraph, label: str, data_id: Mapping[str, Any], run: str) -> str:
    """First error lines of the quantum's log dataset, or ``""`` if it has none."""
    node = graph.tasks[label]
    if node.log_output is None:
        return ""
    try:
        ref = butler.find_dataset(node.log_output.dataset_type_name, dict(data_id), collections=run)
        if ref is None:
            return ""
        records = butler.get(ref)
    except Exception:  # noqa: BLE001 - no readable log: the cause comes from elsewhere
        return ""
    return _exception_line([r.message for r in records if r.levelno >= 40])


def _summary_causes(summary: Path | None) -> dict[tuple[str, tuple[tuple[str, Any], ...]], str]:
    """(task, data ID) -> 'Class: message' from a ``pipetask run --summary`` file."""
    out: dict[tuple[str, tuple[tuple[str, Any], ...]], str] = {}
    if summary is None or not summary.is_file():
        return out
    try:
        report = json.loads(summary.read_text())
    except ValueError:
        return out
    for q in report.get("quantaReports", []):
        info = q.get("exceptionInfo")
        if q.get("status") == "failure" and info:
            key = (q.get("taskLabel"), tuple(sorted(q.get("dataId", {}).items())))
            out[key] = f"{info['className'].rsplit('.', 1)[-1]}: {info['message']}"[:_MAX_CAUSE]
    return out


def summary_status(summary: Path | None) -> GraphStatus | None:
    """Counts from a ``pipetask run --summary`` file when it says every quantum of the graph succeeded.

    The middleware's own account of a clean first attempt: every task of the graph has as many
    successful quantum reports as the graph has quanta for it. Anything else (a failure, a
    missing report, no file, a file that does not parse) returns None: the provenance graph
    is then read (:func:`graph_status`), which also sees what earlier attempts left.
    """
    if summary is None or not summary.is_file():
        return None
    try:
        report = json.loads(summary.read_text())
        expected = {label: int(t["numQuanta"]) for label, t in report["qgraphSummary"]["qgraphTaskSummaries"].items()}
        quanta = report["quantaReports"]
    except (ValueError, KeyError, TypeError):
        return None
    if report.get("status") != "success" or not expected:
        return None
    done: dict[str, int] = dict.fromkeys(expected, 0)
    for q in quanta:
        label = q.get("taskLabel")
        if q.get("status") != "success" or label not in done:
            return None
        done[label] += 1
    if done != expected:
        return None
    out = GraphStatus()
    for label, n in sorted(expected.items()):
        out.by_task[label] = {"total": n, "succeeded": n, "failed": 0, "pending": 0}
    out.total = out.succeeded = sum(expected.values())
    return out


def graph_status(
    step_run: StepRun, qgraph: Path, *, summary: Path | None = None, max_failures: int = 100
) -> GraphStatus:
    """Counts and failures of a step from its quantum graph and the datasets in its run.

    Parameters
    ----------
    step_run
        The step (its repo, pipeline and output run).
    qgraph
        The step's full quantum graph (that of its first attempt).
    summary
        A ``pipetask --summary`` file with more failure causes, if any.
    max_failures
        How many failed quanta to describe.
    """
    graph = load_pipeline_graph(step_run.pipeline_path, resolve=False)
    causes = _summary_causes(summary)
    out = GraphStatus()
    with open_butler(step_run.repo, db_auth=step_run.db_auth) as butler:
        qpg = QuantumProvenanceGraph(butler, [str(qgraph)], read_caveats=None, use_qbb=False)
        report = qpg.to_summary(do_store_logs=False)
        for label, ts in sorted(report.tasks.items()):
            row = {
                "total": ts.n_expected,
                "succeeded": ts.n_successful,
                "failed": ts.n_failed + ts.n_wonky,
                "pending": ts.n_blocked + ts.n_unknown,
            }
            out.by_task[label] = row
            out.total += row["total"]
            out.succeeded += row["succeeded"]
            out.failed += row["failed"]
            out.pending += row["pending"]
            for q in [*ts.failed_quanta, *ts.wonky_quanta]:
                if len(out.failures) >= max_failures:
                    break
                data_id = {k: q.data_id[k] for k in sorted(q.data_id)}
                cause = _failure_cause(butler, graph, label, data_id, step_run.output_run)
                cause = cause or causes.get((label, tuple(sorted(data_id.items()))), "")
                cause = cause or "; ".join(q.messages)[:_MAX_CAUSE] or "no error message recorded"
                out.failures.append(QuantumFailure(task=label, data_id=data_id, cause=cause))
    return out


def log_tail_cause(log: Path, timed_out: bool, timeout: float | None) -> str:
    """Why no quantum graph was made: the last exception-looking line of the log."""
    if timed_out:
        return f"killed after {timeout} s before a quantum graph was made"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Failure)\b.*:", line.strip()):
            return line.strip()[:_MAX_CAUSE]
    for line in reversed(lines):
        if "ERROR" in line:
            return line.strip()[:_MAX_CAUSE]
    return "no quantum graph was made; see the log"
