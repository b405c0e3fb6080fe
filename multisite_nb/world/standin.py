"""A stand-in PipelineTask for DRP-shaped pipelines, its connections declared in config.

The real Rubin science tasks are not on PyPI.  `StandInTask` takes their place: a pipeline
YAML gives each task label its quantum dimensions and its connections (dataset type name,
dimensions, multiple, calibration, ...), with the real labels, dataset type names and
dimensions, so quantum graphs have the real shape.

Outputs are deterministic in the *data*, never in UUIDs, run names or which repo/site ran
them: each output is a dict with the output's data ID, the quantum's data ID, the count of
inputs, and a ``value`` = digest of (task label, output dataset type, output data ID, every
input's dataset type + data ID + value, sorted).  A multisite run and a single-site
reference therefore agree on every quantum whose inputs agree.

A quantum may write outputs with more dimensions than its own (e.g. the global FGCM step with
quantum dimensions {instrument} writing ``fgcmPhotoCalibCatalog`` per visit): declare the
output ``multiple: true`` and one dataset is written per output ref the graph assigned.

Failure injection: ``fail_condition`` (a Butler expression on the quantum data ID, e.g.
``-c isr:fail_condition="exposure=1003 AND detector=1"`` on the ``pipetask`` command line)
makes matching quanta raise `StandInFailure` (``pipetask --mock-failure`` only acts together
with ``--mock``, which would rename every dataset type). ``$MSNB_STANDIN_FAIL_ONCE`` names a file:
while it exists, the first quantum to claim it (an atomic rename) raises once — a transient
failure injected from outside a running campaign (``multisite_nb.world.chaos``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from lsst.daf.butler import DataCoordinate, DatasetRef, DeferredDatasetHandle
from lsst.pex.config import Config, ConfigDictField, Field, ListField
from lsst.pex.config.configDictField import ConfigDict
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
)
from lsst.pipe.base import connectionTypes as cT
from lsst.utils.doImport import doImportType
from lsst.utils.iteration import ensure_iterable

from multisite_nb.world.synthetic import stable_value

__all__ = [
    "ConnectionSpec",
    "SpecDictField",
    "StandInConfig",
    "StandInConnections",
    "StandInFailure",
    "StandInTask",
    "data_id_dict",
]


class StandInFailure(RuntimeError):
    """Raised by a quantum that matches ``fail_condition`` (an injected failure)."""


class ConnectionSpec(Config):
    """One connection of a stand-in task, as written in the pipeline YAML."""

    name = Field[str](doc="Dataset type name as seen by the Butler.", dtype=str)
    dimensions = ListField[str](doc="Dimensions of the dataset type.", dtype=str, default=[])
    storage_class = Field[str](doc="Butler storage class.", dtype=str, default="StructuredDataDict")
    multiple = Field[bool](doc="Several datasets per quantum (a list).", dtype=bool, default=False)
    calibration = Field[bool](
        doc="A calibration dataset type (looked up by validity range).", dtype=bool, default=False
    )
    deferred = Field[bool](doc="Load lazily (inputs only; the stand-in reads it anyway).", dtype=bool, default=False)
    minimum = Field[int](doc="Least number of datasets a quantum needs (regular inputs only).", dtype=int, default=1)

    def to_connection(self, kind: type[cT.BaseConnection]) -> cT.BaseConnection:
        """Build the connection object of type ``kind`` (Input, PrerequisiteInput or Output)."""
        common: dict[str, Any] = {
            "name": self.name,
            "storageClass": self.storage_class,
            "multiple": self.multiple,
            "dimensions": frozenset(self.dimensions),
            "isCalibration": self.calibration,
        }
        if kind is cT.Input:
            return cT.Input(deferLoad=self.deferred, minimum=self.minimum, **common)
        if kind is cT.PrerequisiteInput:
            return cT.PrerequisiteInput(deferLoad=self.deferred, **common)
        if kind is cT.Output:
            return cT.Output(**common)
        raise TypeError(f"unsupported connection type {kind!r}")


class _SpecDict(ConfigDict):
    """A ConfigDict that also takes plain dicts (as a pipeline YAML gives them)."""

    def __setitem__(self, k: str, x: Any, at: Any = None, label: str = "setitem", setHistory: bool = True) -> None:
        if isinstance(x, dict):
            x = self._field.itemtype(**x)
        super().__setitem__(k, x, at=at, label=label, setHistory=setHistory)  # type: ignore[call-arg]


class SpecDictField(ConfigDictField):
    """A `ConfigDictField` of `ConnectionSpec` whose items may be given as dicts."""

    DictClass = _SpecDict


class StandInConnections(PipelineTaskConnections, dimensions=()):
    """Connections built from the config: quantum dimensions and every connection.

    Parameters
    ----------
    config : `StandInConfig`
        The task's config.
    """

    def __init__(self, *, config: StandInConfig) -> None:
        self.dimensions.update(config.dimensions)
        kinds: list[tuple[Mapping[str, ConnectionSpec], type[cT.BaseConnection]]] = [
            (config.inputs, cT.Input),
            (config.prerequisites, cT.PrerequisiteInput),
            (config.outputs, cT.Output),
        ]
        seen: set[str] = set()
        for specs, kind in kinds:
            for label, spec in specs.items():
                if label in seen:
                    raise ValueError(f"connection {label!r} is declared twice")
                seen.add(label)
                setattr(self, label, spec.to_connection(kind))


class StandInConfig(PipelineTaskConfig, pipelineConnections=StandInConnections):
    """Config of `StandInTask`: the task's shape, and optional failure injection."""

    dimensions = ListField[str](doc="Quantum dimensions.", dtype=str, default=[])
    inputs = SpecDictField(doc="Regular inputs, by connection name.", keytype=str, itemtype=ConnectionSpec, default={})
    prerequisites = SpecDictField(
        doc="Prerequisite inputs, by connection name.", keytype=str, itemtype=ConnectionSpec, default={}
    )
    outputs = SpecDictField(doc="Outputs, by connection name.", keytype=str, itemtype=ConnectionSpec, default={})
    fail_condition = Field[str](
        doc="Butler expression on the quantum data ID (e.g. 'visit = 1003'); matching quanta raise.",
        dtype=str,
        default="",
    )
    fail_exception = Field[str](
        doc="Exception class raised on a match (e.g. 'lsst.pipe.base.NoWorkFound' for no-work).",
        dtype=str,
        default="multisite_nb.world.standin.StandInFailure",
    )
    sleep = Field[float](doc="Seconds to sleep in each quantum (to make runs observable).", dtype=float, default=0.0)

    def validate(self) -> None:
        super().validate()
        if not self.outputs:
            raise ValueError("a stand-in task needs at least one output")
        quantum = set(self.dimensions)
        for label, spec in self.outputs.items():
            if not spec.multiple and not set(spec.dimensions) <= quantum:
                raise ValueError(
                    f"output {label!r} ({spec.name}) has dimensions {sorted(spec.dimensions)} beyond the "
                    f"quantum's {sorted(quantum)}: declare it 'multiple: true'"
                )


def data_id_dict(data_id: DataCoordinate) -> dict[str, Any]:
    """The required values of a data ID as a plain dict (sorted keys)."""
    return {name: data_id[name] for name in sorted(data_id.dimensions.required)}


def _value_of(obj: Any) -> Any:
    """The ``value`` of an input object, or a digest of it when it has none."""
    if isinstance(obj, Mapping) and "value" in obj:
        return obj["value"]
    if isinstance(obj, Mapping):
        return stable_value(dict(obj))
    return stable_value(repr(obj))


#: The environment variable naming the fail-once file (see the module's docstring).
FAIL_ONCE_VARIABLE = "MSNB_STANDIN_FAIL_ONCE"


def _claim_fail_once() -> bool:
    """True for the one quantum that renames the fail-once file away (none when it is absent)."""
    path = os.environ.get(FAIL_ONCE_VARIABLE)
    if not path or not os.path.exists(path):
        return False
    try:
        os.rename(path, f"{path}.claimed-{os.getpid()}")
    except OSError:
        return False  # another quantum claimed it first
    return True


class StandInTask(PipelineTask):
    """A PipelineTask that reads its inputs and writes deterministic digests of them."""

    ConfigClass: ClassVar[type[PipelineTaskConfig]] = StandInConfig
    _DefaultName: ClassVar[str] = "standIn"
    config: StandInConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fail_match = None
        if self.config.fail_condition:
            from lsst.pipe.base.tests.mocks import DataIdMatch

            self._fail_match = DataIdMatch(self.config.fail_condition)

    def runQuantum(
        self,
        butlerQC: QuantumContext,
        inputRefs: InputQuantizedConnection,
        outputRefs: OutputQuantizedConnection,
    ) -> None:
        quantum_id = butlerQC.quantum.dataId
        assert quantum_id is not None
        if self.config.sleep:
            time.sleep(self.config.sleep)
        if _claim_fail_once():
            raise StandInFailure(f"injected failure, once: task={self.getName()} dataId={data_id_dict(quantum_id)}")
        if self._fail_match is not None and self._fail_match.match(quantum_id):
            exc_type = doImportType(self.config.fail_exception)
            raise exc_type(f"injected failure: task={self.getName()} dataId={data_id_dict(quantum_id)}")
        inputs = self.read_inputs(butlerQC, inputRefs)
        for _, refs in outputRefs:
            for ref in ensure_iterable(refs):
                butlerQC.put(self.make_output(ref, quantum_id, inputs), ref)

    def read_inputs(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection) -> list[list[Any]]:
        """Every input as [dataset type, data ID, value], sorted by dataset type then data ID."""
        rows: list[list[Any]] = []
        for _, refs in inputRefs:
            ref: DatasetRef
            for ref in ensure_iterable(refs):
                obj = butlerQC.get(ref)
                if isinstance(obj, DeferredDatasetHandle):
                    obj = obj.get()
                rows.append([ref.datasetType.name, data_id_dict(ref.dataId), _value_of(obj)])
        rows.sort(key=lambda r: (r[0], sorted(r[1].items(), key=lambda kv: kv[0])))
        return rows

    def make_output(self, ref: DatasetRef, quantum_id: DataCoordinate, inputs: list[list[Any]]) -> dict[str, Any]:
        """The output for ``ref``: a pure function of the task label, the data IDs and the inputs."""
        data_id = data_id_dict(ref.dataId)
        counts: dict[str, int] = {}
        for name, _, _ in inputs:
            counts[name] = counts.get(name, 0) + 1
        return {
            "task": self.getName(),
            "dataset_type": ref.datasetType.name,
            "data_id": data_id,
            "quantum_data_id": data_id_dict(quantum_id),
            "n_inputs": len(inputs),
            "inputs_by_type": dict(sorted(counts.items())),
            "value": stable_value([self.getName(), ref.datasetType.name, data_id, inputs]),
        }
