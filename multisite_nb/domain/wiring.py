"""What crosses which site boundary, derived from the pipeline graph and the stage plan.

No step or dataset type name is written here: a stage plan lists pipeline subsets, the
pipeline graph says which task produces and which consumes each dataset type, and the
crossings follow:

* an overall input (produced by no task) consumed at the sites must be *placed* there;
* a dataset produced at the sites and consumed by a central stage is *gathered* to the
  central site before that stage;
* a dataset produced centrally and consumed by a later site stage is *redistributed*
  to each site (only the data IDs that site knows);
* what the site stages produce and nobody consumes is the default *validation set*
  brought home at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lsst.daf.butler import DimensionUniverse, Registry
from lsst.pipe.base import Pipeline
from lsst.pipe.base.pipeline_graph import PipelineGraph

from multisite_nb.domain.config import Campaign, Stage
from multisite_nb.domain.errors import ConfigError, Problem, one_line
from multisite_nb.domain.yamlfile import read_yaml

__all__ = ["Crossing", "Wiring", "campaign_wiring", "derive_wiring", "load_pipeline_graph", "pipeline_problems"]


def load_pipeline_graph(path: str | Path, registry: Registry | None = None, *, resolve: bool = True) -> PipelineGraph:
    """Load a pipeline YAML as a ``PipelineGraph``: the one reader of the campaign's pipeline.

    Resolved against ``registry`` if given (dataset types as the repository knows them), else
    against the default dimension universe (from the connections alone); ``resolve=False``: as
    declared (its task subsets and raw dimensions; resolving it is a pre-flight's job).
    """
    graph = Pipeline.from_uri(str(path)).to_graph(registry=registry)
    if registry is None and resolve:
        graph.resolve(dimensions=DimensionUniverse())
    return graph


@dataclass(frozen=True)
class Crossing:
    """One dataset type crossing a site boundary."""

    dataset_type: str
    kind: Literal["place", "gather", "redistribute", "final"]
    stage: str  # the stage the crossing serves (consumer stage; for "final": producer stage)
    producer: str | None  # task label, None for overall inputs
    consumers: tuple[str, ...]
    dimensions: tuple[str, ...] = ()

    def as_row(self) -> dict[str, Any]:
        return {
            "dataset type": self.dataset_type,
            "crossing": self.kind,
            "stage": self.stage,
            "produced by": self.producer or "(input)",
            "consumed by": ", ".join(self.consumers) or "-",
            "dimensions": ", ".join(self.dimensions),
        }


@dataclass
class Wiring:
    """Everything derived from the pipeline + stage plan."""

    stages: list[Stage]
    stage_of_task: dict[str, str]
    tasks_of_step: dict[str, list[str]]
    crossings: list[Crossing] = field(default_factory=list)

    def of_kind(self, kind: str, stage: str | None = None) -> list[Crossing]:
        return [c for c in self.crossings if c.kind == kind and (stage is None or c.stage == stage)]

    @property
    def placed(self) -> list[str]:
        return sorted({c.dataset_type for c in self.of_kind("place")})

    def gathered_before(self, stage: str) -> list[str]:
        return sorted({c.dataset_type for c in self.of_kind("gather", stage)})

    def redistributed_after(self, stage: str) -> list[str]:
        """Dataset types produced by central ``stage`` and needed at the sites later."""
        return sorted({c.dataset_type for c in self.of_kind("redistribute") if self._producer_stage(c) == stage})

    @property
    def final_products(self) -> list[str]:
        return sorted({c.dataset_type for c in self.of_kind("final")})

    def _producer_stage(self, c: Crossing) -> str | None:
        return self.stage_of_task.get(c.producer) if c.producer else None

    def table(self) -> list[dict[str, Any]]:
        return [c.as_row() for c in self.crossings]


def derive_wiring(graph: PipelineGraph, stages: Sequence[Stage]) -> Wiring:
    """Derive the crossings of a stage plan over a pipeline graph.

    Parameters
    ----------
    graph
        A ``lsst.pipe.base.pipeline_graph.PipelineGraph`` (resolved or not).
    stages
        The campaign's stage plan, in execution order.

    Raises
    ------
    ConfigError
        If a stage names a step the pipeline does not define, a task belongs to no stage,
        or a task consumes a dataset produced by a later stage.
    """
    subsets = graph.task_subsets
    tasks_of_step: dict[str, list[str]] = {}
    stage_of_task: dict[str, str] = {}
    order = {s.name: i for i, s in enumerate(stages)}
    where = {s.name: s.where for s in stages}
    for stage in stages:
        for step in stage.steps:
            if step not in subsets:
                raise ConfigError(
                    f"stage {stage.name!r}: step {step!r} is not a subset of the pipeline "
                    f"(it has: {', '.join(sorted(subsets))})"
                )
            labels = sorted(subsets[step])
            tasks_of_step[step] = labels
            for label in labels:
                stage_of_task.setdefault(label, stage.name)
    missing = sorted(set(graph.tasks) - set(stage_of_task))
    if missing:
        raise ConfigError(f"tasks in no stage of the plan: {', '.join(missing)}")

    crossings: list[Crossing] = []
    for name, node in graph.dataset_types.items():
        producer = graph.producer_of(name)
        plabel = producer.label if producer is not None else None
        if plabel is not None and not hasattr(producer, "task_class_name"):
            continue  # init-outputs (schemas, configs) travel with nothing
        if plabel is not None and name not in graph.outputs_of(plabel, include_automatic_connections=False):
            continue  # metadata, logs: not products
        consumers = [c.label for c in graph.consumers_of(name) if hasattr(c, "task_class_name")]
        dims = tuple(sorted(node.dimensions.names)) if node is not None and graph.is_fully_resolved else ()
        pstage = stage_of_task.get(plabel) if plabel else None
        by_stage: dict[str, list[str]] = {}
        for c in consumers:
            by_stage.setdefault(stage_of_task[c], []).append(c)
        for cstage, labels in sorted(by_stage.items(), key=lambda kv: order[kv[0]]):
            if pstage is not None and order[cstage] < order[pstage]:
                raise ConfigError(f"{name}: consumed in stage {cstage!r} before it is produced in {pstage!r}")
            kind: str | None = None
            if pstage is None:
                kind = "place" if where[cstage] == "sites" else None
            elif where[pstage] == "sites" and where[cstage] == "central":
                kind = "gather"
            elif where[pstage] == "central" and where[cstage] == "sites":
                kind = "redistribute"
            if kind:
                crossings.append(Crossing(name, kind, cstage, plabel, tuple(sorted(labels)), dims))  # type: ignore[arg-type]
        if pstage is not None and where[pstage] == "sites" and not consumers:
            crossings.append(Crossing(name, "final", pstage, plabel, (), dims))
    kind_order = {"place": 0, "gather": 1, "redistribute": 2, "final": 3}
    crossings.sort(key=lambda c: (order[c.stage], kind_order[c.kind], c.dataset_type))
    return Wiring(list(stages), stage_of_task, tasks_of_step, crossings)


def _step_order_problems(campaign_file: Path, graph: PipelineGraph, stages: Sequence[Stage]) -> list[Problem]:
    """A step listed before a step whose products it needs (within a stage or across stages)."""
    subsets = graph.task_subsets
    position: dict[str, tuple[int, str, str]] = {}  # task -> (order, step, key) of the first step holding it
    order = 0
    problems = []
    for i, stage in enumerate(stages):
        for j, step in enumerate(stage.steps):
            key = f"stages.{i}.steps.{j}"
            if step not in subsets:
                problems.append(
                    Problem(
                        campaign_file,
                        "not a subset of the pipeline",
                        key=key,
                        value=step,
                        fix=f"choose from {', '.join(sorted(subsets))}",
                    )
                )
                continue
            for label in sorted(subsets[step]):
                position.setdefault(label, (order, step, key))
            order += 1
    if problems:
        return problems
    reported: set[tuple[str, str]] = set()
    for label, (at, step, key) in sorted(position.items(), key=lambda kv: (kv[1][0], kv[0])):
        for name in sorted(graph.inputs_of(label)):
            producer = graph.producer_of(name)
            if producer is None or producer.label not in position:
                continue
            p_at, p_step, _ = position[producer.label]
            if p_at > at and (step, p_step) not in reported:
                reported.add((step, p_step))
                problems.append(
                    Problem(
                        campaign_file,
                        f"step {step!r} needs {name!r}, which step {p_step!r} makes, listed after it",
                        key=key,
                        fix=f"list {p_step!r} before {step!r}",
                    )
                )
    return problems


def pipeline_problems(campaign_file: Path, pipeline: Path, stages: Sequence[Stage]) -> list[Problem]:
    """The campaign's pipeline checked as a pipeline, and its stage plan against the pipeline's graph.

    The file must load as an LSST pipeline (its loader's error is reported against the campaign's
    ``pipeline`` key), each stage's steps must be subsets of it, listed in an order its graph
    allows, and every task must belong to a stage.
    """
    if not pipeline.is_file():
        return [Problem(campaign_file, "no such pipeline file", key="pipeline", value=str(pipeline))]
    try:
        read_yaml(pipeline)
        graph = load_pipeline_graph(pipeline)
    except ConfigError as exc:
        return [Problem(campaign_file, f"the pipeline cannot be read: {exc}", key="pipeline")]
    except Exception as exc:  # the LSST loader raises many kinds; each is a file the operator named
        why = one_line(exc)
        return [Problem(campaign_file, f"{pipeline} is not a pipeline the LSST loader reads: {why}", key="pipeline")]
    problems = _step_order_problems(campaign_file, graph, stages)
    if not problems:
        try:
            derive_wiring(graph, stages)
        except ConfigError as exc:
            problems.append(Problem(campaign_file, str(exc), key="stages"))
    return problems


def campaign_wiring(campaign: Campaign) -> Wiring:
    """The wiring of a campaign: its stage plan over its pipeline."""
    return derive_wiring(load_pipeline_graph(campaign.pipeline_path), campaign.config.stages)
