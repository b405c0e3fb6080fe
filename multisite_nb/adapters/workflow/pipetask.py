"""``pipetask run`` here, in this process's environment (the embedded world's mode).

A restart extends the existing output run and runs only the quanta without outputs
(``--extend-run --skip-existing --clobber-outputs``, and ``--skip-init-writes`` once the run
holds the step's task configs). A group is run without an output chain (``-o``): its inputs
grow as the other groups of its step succeed (the site's chain holds them), and pipetask refuses
an existing chain whose inputs changed; the group's RUN is all a retry extends.
"""

from __future__ import annotations

import re
from pathlib import Path

from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.workflow.base import Attempt, Executor, Launch, child_env, tool_path
from multisite_nb.domain.steps import StepRun
from multisite_nb.domain.wiring import load_pipeline_graph

__all__ = ["PipetaskExecutor"]

_SKIPPED = re.compile(r"Dropping task \S+ because no quanta remain \((\d+) previously succeeded and skipped\)")


class PipetaskExecutor(Executor):
    """``pipetask run`` with the step's collections, data query and a saved quantum graph."""

    name = "pipetask"
    mode = "pipetask"
    log_name = "pipetask.log"

    def run(self, attempt: Attempt) -> Launch:
        sr = attempt.step_run
        graph, summary = attempt.folder / "quantum_graph.qg", attempt.folder / "summary.json"
        cmd = [
            tool_path("pipetask"),
            "--long-log",
            "run",
            "-b",
            sr.repo,
            "-i",
            ",".join(sr.inputs),
            *(() if sr.group else ("-o", sr.output_chain)),
            "--output-run",
            sr.output_run,
            "-p",
            sr.pipeline,
            "-d",
            sr.data_query,
            "--register-dataset-types",
            "-j",
            str(attempt.jobs),
            "--save-qgraph",
            str(graph),
            "--summary",
            str(summary),
        ]
        if sr.data_id_table is not None:
            cmd += [
                "--data-id-table",
                str(atomic_write_text(attempt.folder / "data_ids.ecsv", sr.data_id_table.ecsv())),
            ]
        for c in attempt.config_overrides:
            cmd += ["-c", c]
        if attempt.extend:
            cmd += ["--extend-run", "--skip-existing", "--clobber-outputs"]
            if _has_init_outputs(sr):
                cmd.append("--skip-init-writes")
            attempt.record["half_written_reset"] = _reset_half_written(sr)
        attempt.record.update({"graph": str(graph), "command": cmd})
        attempt.save()
        rc, timed_out = attempt.run(cmd, env=child_env(db_auth=sr.db_auth), cwd=attempt.folder, timeout=attempt.timeout)
        done = _already_complete(attempt.log) if attempt.extend and rc != 0 and not timed_out else None
        return Launch(rc, timed_out, graph=graph, summary=summary, already_done=done)


def _has_init_outputs(sr: StepRun) -> bool:
    """Whether the output run already holds the step's task configs (written once per run)."""
    graph = load_pipeline_graph(sr.pipeline_path, resolve=False)
    names = [graph.tasks[label].init.config_output.dataset_type_name for label in graph.task_subsets[sr.subset]]
    with open_butler(sr.repo, db_auth=sr.db_auth) as butler:
        for name in names:
            try:
                if butler.query_datasets(name, collections=sr.output_run, explain=False, limit=1):
                    return True
            except (MissingDatasetTypeError, MissingCollectionError):  # not registered yet
                continue
    return False


def _reset_half_written(sr: StepRun) -> int:
    """Quanta a stopped run left half-written (metadata, no log) made runnable again; how many.

    ``--skip-existing`` takes a quantum's metadata for proof that it finished, but a process killed
    between writing a quantum's metadata and its log leaves that proof without the log: such a
    quantum would be skipped for ever and reported as failed. Its metadata is removed so that the
    restart runs it again (``--clobber-outputs`` replaces its other outputs).
    """
    graph = load_pipeline_graph(sr.pipeline_path, resolve=False)
    reset = 0
    with open_butler(sr.repo, writeable=True, db_auth=sr.db_auth) as butler:
        for label in graph.task_subsets[sr.subset]:
            node = graph.tasks[label]
            if node.metadata_output is None or node.log_output is None:
                continue
            try:
                meta = butler.query_datasets(
                    node.metadata_output.dataset_type_name, collections=sr.output_run, explain=False, limit=None
                )
                logs = butler.query_datasets(
                    node.log_output.dataset_type_name, collections=sr.output_run, explain=False, limit=None
                )
            except (MissingDatasetTypeError, MissingCollectionError):
                continue
            logged = {r.dataId for r in logs}
            half = [r for r in meta if r.dataId not in logged]
            if half:
                butler.pruneDatasets(half, disassociate=True, unstore=True, purge=True)
                reset += len(half)
    return reset


def _already_complete(log: Path) -> int | None:
    """Quanta skipped as done, if pipetask stopped only because nothing was left to run."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    if "QuantumGraph was empty" not in text and "contains no quanta" not in text:
        return None
    skipped = [int(n) for n in _SKIPPED.findall(text)]
    return sum(skipped) if skipped and all(n > 0 for n in skipped) else None
