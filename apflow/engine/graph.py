"""The quantum graph: a workflow expanded over the data ids of a repository.

A *quantum* is one task invocation on one data id of its stage's dimensions. Expansion walks the
stages in dependency order, keeping for every dataset type the data ids that are *available*: those
already in the repository (selected by ``--where``) plus those that earlier stages will write. A
stage's quanta are the natural join of its required inputs' available data ids, each projected
onto the stage's dimensions; a gathered input then contributes every available data id that
projects onto the quantum's.

Resume lives here too: a quantum whose outputs all exist is marked ``skip`` (unless ``redo``) and
is never sent to the cluster, and a quantum depends only on producers that will actually run.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import normalize_data_id
from .where import Where
from .workflow import Stage, Workflow

__all__ = ["IdKey", "InputRef", "Quantum", "QuantumGraph", "id_key", "quantum_key"]

#: A data id as a hashable, sorted tuple of (key, value) pairs.
IdKey = tuple[tuple[str, Any], ...]


def id_key(data_id: Mapping[str, Any]) -> IdKey:
    """Hashable form of a data id (validated, keys sorted)."""
    return tuple(normalize_data_id(data_id).items())


def _project(key: IdKey, dims: frozenset[str]) -> IdKey:
    return tuple(kv for kv in key if kv[0] in dims)


def _projector(ids: Iterable[IdKey], dims: frozenset[str]) -> Callable[[IdKey], IdKey]:
    """A fast projection for ids that share one key layout (those of one dataset type).

    Graph building projects every data id of the survey several times (189 CCDs x 1,000 visits),
    so the positions are worked out once from a sample instead of per id.
    """
    sample = next(iter(ids), None)
    if sample is None:
        return lambda key: _project(key, dims)
    positions = [i for i, (k, _) in enumerate(sample) if k in dims]
    if len(positions) == len(sample):
        return lambda key: key
    if not positions:
        return lambda key: ()
    if len(positions) == 1:
        (only,) = positions
        return lambda key: (key[only],)
    return operator.itemgetter(*positions)


def quantum_key(stage: str, data_id: IdKey) -> str:
    """Deterministic Dask key of a quantum, e.g. ``calibrate-visit=12-detector=4``.

    Keys follow the stage's dimension order rather than alphabetical order so they read naturally.
    """
    return "-".join([stage, *(f"{k}={v}" for k, v in data_id)])


@dataclass(slots=True)
class InputRef:
    """The data ids one quantum reads for one input of its stage."""

    name: str
    dataset_type: str
    gathered: bool
    optional: bool
    min_inputs: int | None
    ids: list[IdKey]


@dataclass(slots=True)
class Quantum:
    """One task invocation: a stage on one data id.

    Attributes
    ----------
    key : str
        Deterministic Dask key (see :func:`quantum_key`).
    stage : str
    depth : int
        Index of the stage in dependency order; deeper quanta are submitted first so that
        gathers finish (and free their inputs' bookkeeping) early.
    data_id : IdKey
    inputs : list of InputRef
    skip : bool
        All outputs already exist and ``redo`` was not asked: not run.
    upstream : set of str
        Keys of the quanta (that will run) whose outputs this one reads.
    downstream : list of str
        Keys of the quanta that read this one's outputs.
    """

    key: str
    stage: str
    depth: int
    data_id: IdKey
    inputs: list[InputRef]
    skip: bool = False
    upstream: set[str] = field(default_factory=set)
    downstream: list[str] = field(default_factory=list)


@dataclass
class QuantumGraph:
    """All quanta of a workflow over a repository, in dependency order.

    Build with :meth:`build`.
    """

    workflow: Workflow
    quanta: dict[str, Quantum]

    def by_stage(self) -> dict[str, list[Quantum]]:
        """Stage name -> its quanta, every stage present (possibly with none)."""
        out: dict[str, list[Quantum]] = {s.name: [] for s in self.workflow.stages}
        for quantum in self.quanta.values():
            out[quantum.stage].append(quantum)
        return out

    def __len__(self) -> int:
        return len(self.quanta)

    @classmethod
    def build(
        cls,
        workflow: Workflow,
        list_data_ids: Callable[[str], Iterable[Mapping[str, Any]]],
        dimensions_of: Callable[[str], tuple[str, ...]],
        where: Where | None = None,
        redo: bool = False,
    ) -> QuantumGraph:
        """Expand ``workflow`` over the datasets that exist.

        Parameters
        ----------
        workflow : Workflow
        list_data_ids : callable
            Dataset type -> data ids that exist (``repo.data_ids``).
        dimensions_of : callable
            Dataset type -> dimensions.
        where : Where, optional
            Selection of data ids; applied to existing inputs and to every quantum.
        redo : bool
            Recompute quanta whose outputs exist.
        """
        existing: dict[str, set[IdKey]] = {}

        def existing_ids(dataset_type: str) -> set[IdKey]:
            if dataset_type not in existing:
                # the repository returns validated data ids: only make them hashable here
                existing[dataset_type] = {
                    tuple(sorted(d.items())) for d in list_data_ids(dataset_type)
                }
            return existing[dataset_type]

        selected: dict[str, set[IdKey]] = {}

        def available(dataset_type: str) -> set[IdKey]:
            if dataset_type not in selected:
                ids = existing_ids(dataset_type)
                selected[dataset_type] = (
                    {i for i in ids if where(dict(i))} if where is not None else set(ids)
                )
            return selected[dataset_type]

        quanta: dict[str, Quantum] = {}
        producer: dict[tuple[str, IdKey], str] = {}
        for depth, stage in enumerate(workflow.stages):
            stage_dims = frozenset(stage.dimensions)
            order = {d: n for n, d in enumerate(stage.dimensions)}
            gather_indexes = _gather_indexes(stage, stage_dims, available, dimensions_of)
            input_dims = {i.name: frozenset(dimensions_of(i.dataset_type)) for i in stage.inputs}
            # dimensions each gathered input shares with the stage: its index key (computed
            # once per stage, not per quantum)
            shared = {name: dims & stage_dims for name, dims in input_dims.items()}
            for data_id in _stage_data_ids(stage, stage_dims, available, dimensions_of, where):
                refs = _input_refs(stage, data_id, available, input_dims, shared, gather_indexes)
                skip = not redo and all(data_id in existing_ids(dt) for _, dt in stage.outputs)
                ordered = tuple(sorted(data_id, key=lambda kv: order[kv[0]]))
                quantum = Quantum(
                    quantum_key(stage.name, ordered), stage.name, depth, data_id, refs, skip
                )
                quanta[quantum.key] = quantum
                for _, dt in stage.outputs:
                    available(dt).add(data_id)
                    if not skip:
                        producer[(dt, data_id)] = quantum.key
                if skip:
                    continue
                for ref in refs:
                    for i in ref.ids:
                        upstream = producer.get((ref.dataset_type, i))
                        if upstream is not None:
                            quantum.upstream.add(upstream)
                for upstream in quantum.upstream:
                    quanta[upstream].downstream.append(quantum.key)
        return cls(workflow, quanta)


def _stage_data_ids(
    stage: Stage,
    stage_dims: frozenset[str],
    available: Callable[[str], set[IdKey]],
    dimensions_of: Callable[[str], tuple[str, ...]],
    where: Where | None,
) -> list[IdKey]:
    relations = []
    for spec in stage.inputs:
        if spec.optional:
            continue
        dims = frozenset(dimensions_of(spec.dataset_type)) & stage_dims
        ids = available(spec.dataset_type)
        project = _projector(ids, dims)
        relations.append((dims, {project(i) for i in ids}))
    ids = _natural_join(relations)
    if where is not None:
        ids = {i for i in ids if where(dict(i))}
    # in the stage's own dimension order: [visit, detector] runs visit by visit, so a visit's
    # gather can start while later visits are still being processed
    positions = {k: n for n, k in enumerate(stage.dimensions)}
    return sorted(ids, key=lambda i: _sort_key(tuple(sorted(i, key=lambda kv: positions[kv[0]]))))


def _gather_indexes(
    stage: Stage,
    stage_dims: frozenset[str],
    available: Callable[[str], set[IdKey]],
    dimensions_of: Callable[[str], tuple[str, ...]],
) -> dict[str, dict[IdKey, list[IdKey]]]:
    # one pass per gathered input instead of one scan per quantum (189 CCDs x 1,000 visits)
    # keyed by the dimensions the input shares with the stage (all of the stage's for a plain
    # gather, none for a broadcast such as every template patch to every CCD)
    indexes = {}
    for spec in stage.inputs:
        in_dims = frozenset(dimensions_of(spec.dataset_type))
        if in_dims <= stage_dims:
            continue
        index: dict[IdKey, list[IdKey]] = defaultdict(list)
        ids = available(spec.dataset_type)
        project = _projector(ids, in_dims & stage_dims)
        for i in sorted(ids, key=_sort_key):
            index[project(i)].append(i)
        indexes[spec.name] = index
    return indexes


def _input_refs(
    stage: Stage,
    data_id: IdKey,
    available: Callable[[str], set[IdKey]],
    input_dims: dict[str, frozenset[str]],
    shared: dict[str, frozenset[str]],
    gather_indexes: dict[str, dict[IdKey, list[IdKey]]],
) -> list[InputRef]:
    refs = []
    for spec in stage.inputs:
        if spec.name in gather_indexes:
            common = shared[spec.name]
            key = data_id if len(common) == len(data_id) else _project(data_id, common)
            ids = list(gather_indexes[spec.name].get(key, ()))
            gathered = True
        else:
            in_dims = input_dims[spec.name]
            wanted = data_id if len(in_dims) == len(data_id) else _project(data_id, in_dims)
            present = wanted in available(spec.dataset_type)
            ids = [wanted] if present or not spec.optional else []
            gathered = False
        refs.append(
            InputRef(spec.name, spec.dataset_type, gathered, spec.optional, spec.min_inputs, ids)
        )
    return refs


def _natural_join(relations: list[tuple[frozenset[str], set[IdKey]]]) -> set[IdKey]:
    if not relations:
        return set()
    # widest relation first keeps the intermediate result small
    relations = sorted(relations, key=lambda r: (-len(r[0]), len(r[1])))
    keys, rows = relations[0]
    for other_keys, other_rows in relations[1:]:
        common = keys & other_keys
        index: dict[IdKey, list[IdKey]] = defaultdict(list)
        for row in other_rows:
            index[_project(row, common)].append(row)
        joined = set()
        for row in rows:
            for match in index.get(_project(row, common), ()):
                joined.add(tuple(sorted({**dict(row), **dict(match)}.items())))
        keys, rows = keys | other_keys, joined
    return rows


def _sort_key(data_id: IdKey) -> tuple:
    # ints before names for the same key, so mixed types never compare directly
    return tuple((k, isinstance(v, str), v) for k, v in data_id)
