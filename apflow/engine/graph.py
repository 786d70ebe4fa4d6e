"""The quantum graph: a workflow expanded over the data ids of a repository.

A *quantum* is one task invocation on one data id of its stage's dimensions. Expansion walks the
stages in dependency order, keeping for every dataset type the data ids that are *available*: those
already in the repository (selected by ``--where``) plus those that earlier stages will write. A
stage's quanta are the natural join of its required inputs' available data ids, each projected
onto the stage's dimensions; a gathered input then contributes every available data id that
projects onto the quantum's.

A *spatial* gathered input (``{dataset: template, spatial: true}``) is a spatial join on top:
of those data ids, a quantum gets only the ones whose sky region comes within the input's
``margin_arcsec`` of the quantum's own region, so a CCD reads the few template patches under it
rather than every patch of the repository, and the graph's edges grow with CCDs rather than
CCDs x patches. Regions are footprints of stored exposures (WCS and bounding box, read from the
headers without pixels, once per dataset per plan; :mod:`apflow.io.regions`,
:mod:`apflow.core.region`):

- a candidate's region is its own; it must exist when the run is planned;
- a quantum's region is that of its first exposure input with the stage's dimensions (then
  any other exposure input that is not gathered), e.g. ``calexp`` for difference imaging. When
  that dataset does not exist yet because an earlier stage of the same run writes it
  (``nightly``: calibrate writes the calexp), the region is the producing quantum's, found the
  same way (its ``post_isr``). The uncalibrated WCS can be off by the pointing error, which is
  what the margin's default of 60" allows for (plus the subtraction kernel and warping
  footprint). Chosen over the camera geometry and the visit's boresight because it needs no
  camera model, works for ingested data, and is exactly the calexp's footprint whenever the
  calexp exists;
- when the input has a ``band`` dimension that the stage lacks, a candidate of another band
  than the quantum's exposure (its visit info) is left out too. Without a known band, every
  band within the margin is kept (the difference-imaging task also keeps only its band).

Dimensions a visit implies (its ``band`` and ``physical_filter``, :mod:`apflow.engine.implied`)
join like stored ones where a stage or a one-to-one input names them: the values are read from
the visit info of the repository's exposures, once per visit per plan, and only then.

Resume lives here too: a quantum whose outputs all exist, or were recorded as deliberately not
produced by the run that made the others (``Repository.mark_not_produced``), is marked ``skip``
(unless ``redo``) and is never sent to the cluster, and a quantum depends only on producers that
will actually run. A not-produced output is absent for its readers, as it was in that run.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import normalize_data_id
from ..core.dataid import IMPLIED_KEYS
from ..core.region import SkyPolygon, SkyPolygonSet
from ..errors import DatasetError, WorkflowError
from .implied import Implied, with_implied
from .where import Where
from .workflow import InputSpec, Stage, Workflow

__all__ = [
    "IdKey",
    "InputRef",
    "Quantum",
    "QuantumGraph",
    "RegionSource",
    "id_key",
    "quantum_key",
]

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


class _Region(Protocol):
    polygon: SkyPolygon
    band: str | None


class RegionSource(Protocol):
    """Where planning finds the sky regions of stored datasets (:class:`apflow.io.RegionReader`)."""

    def can_read(self, dataset_type: str) -> bool:
        """Whether datasets of this type have a sky region (are exposures)."""
        ...

    def read(self, dataset_type: str, data_ids: Sequence[Mapping[str, Any]]) -> Sequence[_Region]:
        """Regions (``.polygon``, ``.band``) of existing datasets, in order."""
        ...


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
        regions: RegionSource | None = None,
        list_not_produced: Callable[[str], Iterable[Mapping[str, Any]]] | None = None,
        visit_records: Callable[[Iterable[Any]], Mapping[Any, Mapping[str, str]]] | None = None,
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
        regions : RegionSource, optional
            Sky regions of stored datasets; needed when a stage has a spatial input.
        list_not_produced : callable, optional
            Dataset type -> data ids that a completed quantum chose not to produce
            (``repo.not_produced_ids``): such an output counts as done for resume, and as
            absent for the stages that read it.
        visit_records : callable, optional
            Visits -> their ``band`` and ``physical_filter``
            (:class:`~apflow.engine.implied.VisitRecords`); needed when a stage uses a
            dimension implied by ``visit`` that its data ids lack (:mod:`apflow.engine.implied`).

        Raises
        ------
        WorkflowError
            When a spatial input cannot be joined: no region source, candidates that are not
            exposures or do not exist before the run, or a quantum with no exposure to place it;
            or when a visit's implied band / physical filter is needed but unknown.
        DatasetError
            When a dataset needed for a spatial input has no WCS (the message names it).
        """
        existing: dict[str, set[IdKey]] = {}

        def existing_ids(dataset_type: str) -> set[IdKey]:
            if dataset_type not in existing:
                # the repository returns validated data ids: only make them hashable here
                existing[dataset_type] = {
                    tuple(sorted(d.items())) for d in list_data_ids(dataset_type)
                }
            return existing[dataset_type]

        not_produced: dict[str, set[IdKey]] = {}

        def not_produced_ids(dataset_type: str) -> set[IdKey]:
            if dataset_type not in not_produced:
                listed = list_not_produced(dataset_type) if list_not_produced else ()
                not_produced[dataset_type] = {tuple(sorted(d.items())) for d in listed}
            return not_produced[dataset_type]

        def settled(dataset_type: str, data_id: IdKey) -> bool:
            return data_id in existing_ids(dataset_type) or data_id in not_produced_ids(
                dataset_type
            )

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
        joins = _SpatialJoins(workflow, regions, existing_ids, dimensions_of, producer, quanta)
        implied = Implied(visit_records, workflow.name)
        for depth, stage in enumerate(workflow.stages):
            stage_dims = frozenset(stage.dimensions)
            order = {d: n for n, d in enumerate(stage.dimensions)}
            gather_indexes = _gather_indexes(stage, stage_dims, available, dimensions_of, implied)
            input_dims = {i.name: frozenset(dimensions_of(i.dataset_type)) for i in stage.inputs}
            # dimensions each gathered input shares with the stage: its index key (computed
            # once per stage, not per quantum); a visit's implied filter counts as shared
            shared = {name: with_implied(dims) & stage_dims for name, dims in input_dims.items()}
            stage_ids = _stage_data_ids(stage, stage_dims, available, dimensions_of, where, implied)
            spatial = [s for s in stage.inputs if s.spatial and s.name in gather_indexes]
            quantum_regions = joins.quantum_regions(stage, stage_ids) if spatial else {}
            for data_id in stage_ids:
                refs = _input_refs(
                    stage, data_id, available, input_dims, shared, gather_indexes, implied
                )
                for spec in spatial:
                    ref = next(r for r in refs if r.name == spec.name)
                    group = _project(data_id, shared[spec.name])
                    ref.ids = joins.near(
                        stage, spec, group, gather_indexes[spec.name], quantum_regions[data_id]
                    )
                skip = not redo and all(settled(dt, data_id) for _, dt in stage.outputs)
                ordered = tuple(sorted(data_id, key=lambda kv: order[kv[0]]))
                quantum = Quantum(
                    quantum_key(stage.name, ordered), stage.name, depth, data_id, refs, skip
                )
                quanta[quantum.key] = quantum
                for _, dt in stage.outputs:
                    if skip and data_id not in existing_ids(dt):
                        continue  # done without producing it: readers go without, as in that run
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
    implied: Implied,
) -> list[IdKey]:
    required = [s for s in stage.inputs if not s.optional]
    in_dims = {s.name: frozenset(dimensions_of(s.dataset_type)) for s in required}
    # implied dimensions (a visit's filter) join the inputs only where the stage or a one-to-one
    # input names them: a [visit, detector] stage reading a [detector, physical_filter] input
    # joins on the visit's filter; other stages never read a header for it
    lookup_dims = with_implied(stage_dims)
    named = stage_dims.union(*(d for d in in_dims.values() if d <= lookup_dims))
    join_dims = stage_dims | (lookup_dims & named & IMPLIED_KEYS)
    if where is not None:  # --where on a visit's filter selects every stage's visits
        join_dims |= lookup_dims & where.keys & IMPLIED_KEYS
    relations = []
    for spec in required:
        dims = with_implied(in_dims[spec.name]) & join_dims
        ids: Iterable[IdKey] = available(spec.dataset_type)
        extra = dims - in_dims[spec.name]
        if extra:
            where_text = f"stage {stage.name!r} input {spec.name!r}"
            ids = implied.augment(sorted(ids, key=_sort_key), extra, where_text)
        project = _projector(ids, dims)
        relations.append((dims, {project(i) for i in ids}))
    ids = _natural_join(relations)
    if where is not None:  # before projecting: --where can select on a visit's implied filter
        ids = {i for i in ids if where(dict(i))}
    if join_dims != stage_dims:
        ids = {_project(i, stage_dims) for i in ids}
    # in the stage's own dimension order: [visit, detector] runs visit by visit, so a visit's
    # gather can start while later visits are still being processed
    positions = {k: n for n, k in enumerate(stage.dimensions)}
    return sorted(ids, key=lambda i: _sort_key(tuple(sorted(i, key=lambda kv: positions[kv[0]]))))


def _gather_indexes(
    stage: Stage,
    stage_dims: frozenset[str],
    available: Callable[[str], set[IdKey]],
    dimensions_of: Callable[[str], tuple[str, ...]],
    implied: Implied,
) -> dict[str, dict[IdKey, list[IdKey]]]:
    # one pass per gathered input instead of one scan per quantum (189 CCDs x 1,000 visits)
    # keyed by the dimensions the input shares with the stage (all of the stage's for a plain
    # gather, none for a broadcast such as every template patch to every CCD; a visit's
    # implied filter for a per-filter stage gathering visits)
    indexes = {}
    for spec in stage.inputs:
        in_dims = frozenset(dimensions_of(spec.dataset_type))
        if in_dims <= with_implied(stage_dims):
            continue
        index: dict[IdKey, list[IdKey]] = defaultdict(list)
        ids = sorted(available(spec.dataset_type), key=_sort_key)
        key_dims = with_implied(in_dims) & stage_dims
        extra = key_dims - in_dims
        keyed = (
            implied.augment(ids, extra, f"stage {stage.name!r} input {spec.name!r}")
            if extra
            else ids
        )
        project = _projector(keyed, key_dims)
        for i, key in zip(ids, keyed, strict=True):
            index[project(key)].append(i)
        indexes[spec.name] = index
    return indexes


def _input_refs(
    stage: Stage,
    data_id: IdKey,
    available: Callable[[str], set[IdKey]],
    input_dims: dict[str, frozenset[str]],
    shared: dict[str, frozenset[str]],
    gather_indexes: dict[str, dict[IdKey, list[IdKey]]],
    implied: Implied,
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
            extra = in_dims - {k for k, _ in data_id}
            if extra:  # looked up through the visit's implied filter
                where_text = f"stage {stage.name!r} input {spec.name!r}"
                try:
                    wanted = _project(implied.augment([data_id], extra, where_text)[0], in_dims)
                except WorkflowError:
                    if not spec.optional:
                        raise
                    # an optional input of a visit whose filter is not recorded: absent
                    refs.append(
                        InputRef(spec.name, spec.dataset_type, False, True, spec.min_inputs, [])
                    )
                    continue
            elif len(in_dims) == len(data_id):
                wanted = data_id
            else:
                wanted = _project(data_id, in_dims)
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


class _SpatialJoins:
    """Sky regions of quanta and candidates for the spatial inputs of one graph build.

    Every header is read once per build (the region source caches), in batches: all quanta of a
    stage at once, all candidates of a gathered group at once.
    """

    def __init__(
        self,
        workflow: Workflow,
        regions: RegionSource | None,
        existing_ids: Callable[[str], set[IdKey]],
        dimensions_of: Callable[[str], tuple[str, ...]],
        producer: Mapping[tuple[str, IdKey], str],
        quanta: Mapping[str, Quantum],
    ):
        self.workflow = workflow
        self.regions = regions
        self.existing_ids = existing_ids
        self.dimensions_of = dimensions_of
        self.producer = producer
        self.quanta = quanta
        self.stages = {s.name: s for s in workflow.stages}
        self._readable: dict[str, bool] = {}
        self._sets: dict[tuple[str, str, IdKey], tuple[list[IdKey], SkyPolygonSet]] = {}

    def _source(self, stage: Stage) -> RegionSource:
        if self.regions is None:
            names = [s.name for s in stage.inputs if s.spatial]
            raise WorkflowError(
                f"workflow {self.workflow.name!r}, stage {stage.name!r}: spatial input(s) "
                f"{names} need the sky regions of stored datasets (plan() with a repository)"
            )
        return self.regions

    def _can_read(self, source: RegionSource, dataset_type: str) -> bool:
        if dataset_type not in self._readable:
            self._readable[dataset_type] = bool(source.can_read(dataset_type))
        return self._readable[dataset_type]

    def quantum_regions(self, stage: Stage, data_ids: list[IdKey]) -> dict[IdKey, _Region]:
        """The sky region of each quantum of ``stage`` (see the module docstring)."""
        source = self._source(stage)
        leaves: dict[IdKey, tuple[str, IdKey]] = {}
        for data_id in data_ids:
            leaf = self._leaf(source, stage, data_id)
            if leaf is None:
                candidates = [s.dataset_type for s in self._placing_inputs(source, stage)]
                raise WorkflowError(
                    f"workflow {self.workflow.name!r}, stage {stage.name!r} "
                    f"[{_format(data_id)}]: cannot place the quantum on the sky for its spatial "
                    f"input(s): none of its exposure inputs ({', '.join(candidates) or 'none'}) "
                    "exists, nor is written in this run from one that does"
                )
            leaves[data_id] = leaf
        by_type: dict[str, list[IdKey]] = defaultdict(list)
        for dataset_type, leaf_id in leaves.values():
            by_type[dataset_type].append(leaf_id)
        found: dict[tuple[str, IdKey], _Region] = {}
        for dataset_type, ids in by_type.items():
            unique = list(dict.fromkeys(ids))
            read = self._read(source, stage, None, dataset_type, unique)
            found.update(((dataset_type, i), r) for i, r in zip(unique, read, strict=True))
        return {data_id: found[leaf] for data_id, leaf in leaves.items()}

    def near(
        self,
        stage: Stage,
        spec: InputSpec,
        group: IdKey,
        index: Mapping[IdKey, list[IdKey]],
        region: _Region,
    ) -> list[IdKey]:
        """The candidates of ``group`` within the input's margin of ``region`` (and band)."""
        cache_key = (stage.name, spec.name, group)
        if cache_key not in self._sets:
            ids = list(index.get(group, ()))
            source = self._source(stage)
            if not self._can_read(source, spec.dataset_type):
                raise WorkflowError(
                    f"workflow {self.workflow.name!r}, stage {stage.name!r}: spatial input "
                    f"{spec.name!r} ({spec.dataset_type}) is not stored as exposures, so its "
                    "datasets have no sky region"
                )
            existing = self.existing_ids(spec.dataset_type)
            for i in ids:
                if i not in existing:
                    raise WorkflowError(
                        f"workflow {self.workflow.name!r}, stage {stage.name!r}: spatial input "
                        f"{spec.name!r}: {spec.dataset_type} [{_format(i)}] does not exist yet "
                        "(it is written in this run); a spatial input must exist before the run"
                    )
            read = self._read(source, stage, spec.name, spec.dataset_type, ids)
            self._sets[cache_key] = (ids, SkyPolygonSet([r.polygon for r in read]))
        ids, polygons = self._sets[cache_key]
        margin = math.radians(spec.margin_arcsec / 3600.0)
        chosen = [ids[k] for k in polygons.near(region.polygon, margin)]
        band_filter = region.band is not None and "band" not in stage.dimensions
        if band_filter and "band" in self.dimensions_of(spec.dataset_type):
            chosen = [i for i in chosen if dict(i).get("band") == region.band]
        return chosen

    def _read(
        self,
        source: RegionSource,
        stage: Stage,
        input_name: str | None,
        dataset_type: str,
        ids: list[IdKey],
    ) -> Sequence[_Region]:
        try:
            return source.read(dataset_type, [dict(i) for i in ids])
        except DatasetError as exc:
            role = f"input {input_name!r}" if input_name else "placing the quanta"
            raise DatasetError(
                exc.dataset_type,
                exc.data_id,
                f"{exc.reason} (needed for {role} of stage {stage.name!r})",
            ) from exc

    def _placing_inputs(self, source: RegionSource, stage: Stage) -> list[InputSpec]:
        """Inputs that can place a quantum: exposures, not gathered, own dimensions first."""
        stage_dims = set(stage.dimensions)
        usable = []
        for spec in stage.inputs:
            dims = set(self.dimensions_of(spec.dataset_type))
            if spec.spatial or not dims <= stage_dims:
                continue
            if self._can_read(source, spec.dataset_type):
                usable.append((dims != stage_dims, spec))
        return [spec for _, spec in sorted(usable, key=lambda item: item[0])]

    def _leaf(self, source: RegionSource, stage: Stage, data_id: IdKey) -> tuple[str, IdKey] | None:
        """The stored dataset whose region is the quantum's, following producers upstream."""
        for spec in self._placing_inputs(source, stage):
            wanted = _project(data_id, frozenset(self.dimensions_of(spec.dataset_type)))
            if wanted in self.existing_ids(spec.dataset_type):
                return spec.dataset_type, wanted
            upstream = self.producer.get((spec.dataset_type, wanted))
            if upstream is not None:
                quantum = self.quanta[upstream]
                leaf = self._leaf(source, self.stages[quantum.stage], quantum.data_id)
                if leaf is not None:
                    return leaf
        return None


def _format(data_id: IdKey) -> str:
    return ", ".join(f"{k}={v}" for k, v in data_id) or "{}"
