"""Workflow definitions: named stages read from ``workflows/*.yaml`` and validated on load.

A workflow file looks like::

    name: example
    dataset_types:                 # new intermediate types (the repository knows the rest)
      image_stats: {dimensions: [visit, detector], storage: json}
    stages:
      image_stats:
        task: apflow.tasks.examples:ImageStatsTask
        dimensions: [visit, detector]          # one quantum per (visit, detector)
        inputs: {exposure: post_isr}           # run() keyword -> dataset type
        outputs: {stats: image_stats}          # result attribute -> dataset type
        config: {n_sigma: 3.0}
      visit_stats:
        task: apflow.tasks.examples:VisitStatsTask
        dimensions: [visit]                    # inputs with more dimensions are gathered
        inputs:
          detector_stats: {dataset: image_stats, min_inputs: 1}   # or allow_partial: true
        outputs: {stats: visit_stats}
      associate:
        ...
        dimensions: [visit, detector]
        ordered_by: visit      # every quantum of visit v finishes before any of the next visit

``include: [calibrate, alert_production]`` starts a workflow with the stages and dataset types of
other workflows (by name or path); ``nightly`` is built that way. ``overrides:`` then changes an
included stage without copying it, so that each stage keeps one definition::

    include: [sky_correct, calibrate, alert_production]
    overrides:
      calibrate:                                  # a stage of an included workflow
        inputs:
          exposures: post_isr_skycorr             # replace an input (same forms as in a stage)
          sky_frame: null                         # null drops an input
        config: {background: {bin_size: 64}}     # merged into the stage's config mapping

Only ``inputs`` and ``config`` can be overridden, and only inputs the stage already has (a typo
must not add an input that the task then ignores); an unknown stage or input is an error, as is
overriding a stage the file defines itself (edit it there). The result is validated like any
stage.

An input whose dimensions are a subset of the stage's is passed as one object (one-to-one, or a
broadcast such as a per-visit level to every CCD of the visit). An input with dimensions the stage
does not have is a gather and arrives as a list ordered by data id: every available data id that
agrees with the quantum on the dimensions they share (all CCDs of the visit for a per-visit stage;
all template patches for a per-CCD stage, since there is no shared dimension). A gathered input
of exposures can be ``spatial``: ``template: {dataset: template, spatial: true}`` gives each
quantum only the patches whose sky region comes within ``margin_arcsec`` (default 60) of the
quantum's own exposure, and of its band (see :mod:`apflow.engine.graph`).

A visit implies its ``band`` and ``physical_filter`` (:mod:`apflow.engine.implied`): a stage
over ``[visit, detector]`` reads an input over ``[detector, physical_filter]`` one to one (the
sky frame of the visit's filter), and a stage over ``[detector, physical_filter]`` gathers an
input over ``[visit, detector]`` by the visits' filter (one sky frame per filter).

``ordered_by`` makes a stage run its quanta in the order of one dimension's values, one value at a
time (a barrier between values, not a data dependency: a failed quantum of visit 3 does not block
visit 4). Alert production uses it so that association sees visits in time order on any cluster:
visit ids increase with observation time (as Rubin's do), so ordering by ``visit`` is time order.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UnknownDatasetTypeError, WorkflowError
from ..tasks.base import Task, TaskConfig
from .implied import with_implied

__all__ = [
    "CONTEXT_PARAMETERS",
    "DEFAULT_SPATIAL_MARGIN_ARCSEC",
    "DatasetTypeSpec",
    "InputSpec",
    "Stage",
    "Workflow",
    "load_workflow",
    "workflows_dir",
]

#: run() parameters that the engine fills from the quantum rather than from the repository.
CONTEXT_PARAMETERS = frozenset({"data_id", "camera", "detector", "input_data_ids", "repo_url"})
_TOP_LEVEL_KEYS = {"name", "description", "dataset_types", "stages", "include", "overrides"}
_STAGE_KEYS = {"task", "dimensions", "inputs", "outputs", "config", "description", "ordered_by"}
#: What ``overrides:`` may change in an included stage.
_OVERRIDE_KEYS = {"inputs", "config"}
_INPUT_KEYS = {"dataset", "optional", "min_inputs", "allow_partial", "spatial", "margin_arcsec"}
#: Default sky margin of a spatial input: pointing errors of an uncalibrated WCS up to ~30",
#: the difference-imaging kernel and warping footprint (~5" at 0.2"/px), and room to spare.
DEFAULT_SPATIAL_MARGIN_ARCSEC = 60.0


@dataclass(frozen=True)
class DatasetTypeSpec:
    """A dataset type a workflow declares: its dimensions and storage kind."""

    name: str
    dimensions: tuple[str, ...]
    storage: str


@dataclass(frozen=True)
class InputSpec:
    """One input of a stage.

    Attributes
    ----------
    name : str
        Keyword of the task's ``run``.
    dataset_type : str
    optional : bool
        A missing dataset is passed as ``None`` (or left out of a gathered list).
    min_inputs : int or None
        For a gathered input: run with at least this many of the expected datasets when some of
        their producers failed. ``None`` requires all of them (the default).
    spatial : bool
        For a gathered input of exposures: give each quantum only the datasets whose sky
        region comes within ``margin_arcsec`` of the quantum's own (and, when the input has a
        ``band`` dimension the stage lacks, only those of the quantum's band). See
        :mod:`apflow.engine.graph`.
    margin_arcsec : float
        Sky margin of a spatial input, arcseconds.
    """

    name: str
    dataset_type: str
    optional: bool = False
    min_inputs: int | None = None
    spatial: bool = False
    margin_arcsec: float = DEFAULT_SPATIAL_MARGIN_ARCSEC


@dataclass(frozen=True)
class Stage:
    """One step of a workflow: a task run once per quantum (data id over ``dimensions``)."""

    name: str
    task: str
    task_class: type[Task]
    dimensions: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[tuple[str, str], ...]
    config: TaskConfig
    context: frozenset[str] = frozenset()
    ordered_by: str | None = None

    def input(self, name: str) -> InputSpec:
        """The input called ``name``."""
        return next(i for i in self.inputs if i.name == name)


@dataclass(frozen=True)
class Workflow:
    """A validated workflow: stages in dependency order plus the dataset types it declares.

    Use :func:`load_workflow` to read one; :meth:`with_config` applies overrides.
    """

    name: str
    stages: tuple[Stage, ...]
    dataset_types: Mapping[str, DatasetTypeSpec] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; raises :class:`ConfigError` listing the stages otherwise."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"workflow {self.name!r} has no stage {name!r}; "
            f"stages: {', '.join(s.name for s in self.stages)}"
        )

    def producers(self) -> dict[str, str]:
        """Dataset type -> name of the stage that writes it."""
        return {dt: stage.name for stage in self.stages for _, dt in stage.outputs}

    def dependencies(self) -> dict[str, set[str]]:
        """Stage name -> names of the stages whose outputs it reads."""
        producers = self.producers()
        return {
            stage.name: {
                producers[i.dataset_type] for i in stage.inputs if i.dataset_type in producers
            }
            for stage in self.stages
        }

    def input_dataset_types(self) -> list[str]:
        """Dataset types the workflow reads but does not write (they must be in the repository)."""
        produced = set(self.producers())
        seen = [i.dataset_type for s in self.stages for i in s.inputs]
        return sorted({dt for dt in seen if dt not in produced})

    def with_config(self, overrides: Mapping[str, Any] | Iterable[str] | None) -> Workflow:
        """Copy with config overrides applied.

        Parameters
        ----------
        overrides : mapping or iterable of str or None
            ``{"stage.field": value}`` or ``["stage.field=value", ...]``; string values are converted
            to the field's type.

        Raises
        ------
        ConfigError
            On a malformed override, an unknown stage or field, or a value that does not convert.
        """
        per_stage: dict[str, dict[str, Any]] = {}
        for dotted, value in _override_items(overrides):
            stage_name, _, field_name = dotted.partition(".")
            if not stage_name or not field_name:
                raise ConfigError(f"config override {dotted!r} must look like 'stage.field'")
            self.stage(stage_name)
            per_stage.setdefault(stage_name, {})[field_name] = value
        stages = []
        for stage in self.stages:
            if stage.name in per_stage:
                try:
                    config = stage.config.updated(**per_stage[stage.name])
                except ConfigError as exc:
                    raise ConfigError(f"stage {stage.name!r}: {exc}") from None
                stage = dataclasses.replace(stage, config=config)
            stages.append(stage)
        return dataclasses.replace(self, stages=tuple(stages))

    def check_dataset_types(self, dimensions_of: Callable[[str], tuple[str, ...]]) -> None:
        """Check every stage's dimensions against its inputs' and outputs'.

        Parameters
        ----------
        dimensions_of : callable
            Dataset type name -> its dimensions; raises ``KeyError`` (or
            :class:`~apflow.errors.UnknownDatasetTypeError`) for an unknown type. Types the
            workflow declares are looked up here first.

        Raises
        ------
        WorkflowError
            On an unknown dataset type, an output whose dimensions differ from the stage's,
            ``min_inputs`` on an input that is not gathered, or stage dimensions that the
            inputs do not determine.
        """

        def dims(dataset_type: str, where: str) -> tuple[str, ...]:
            if dataset_type in self.dataset_types:
                return self.dataset_types[dataset_type].dimensions
            try:
                return tuple(dimensions_of(dataset_type))
            except (KeyError, UnknownDatasetTypeError):
                raise WorkflowError(
                    f"workflow {self.name!r}, {where}: unknown dataset type {dataset_type!r} "
                    "(declare it under 'dataset_types:' or register it in the repository)"
                ) from None

        for stage in self.stages:
            stage_dims = set(stage.dimensions)
            for name, dt in stage.outputs:
                out_dims = set(dims(dt, f"stage {stage.name!r} output {name!r}"))
                if out_dims != stage_dims:
                    raise WorkflowError(
                        f"workflow {self.name!r}, stage {stage.name!r}: output {name!r} "
                        f"({dt}) has dimensions {sorted(out_dims)}, the stage has "
                        f"{sorted(stage_dims)}; an output must have the stage's dimensions"
                    )
            covered: set[str] = set()
            for spec in stage.inputs:
                in_dims = set(dims(spec.dataset_type, f"stage {stage.name!r} input {spec.name!r}"))
                # a visit's band / physical filter is known to a stage with a visit dimension
                # (apflow.engine.implied): an input over [detector, physical_filter] is one to
                # one for a [visit, detector] stage, not gathered
                gathered = not in_dims <= with_implied(stage_dims)
                if spec.min_inputs is not None and not gathered:
                    raise WorkflowError(
                        f"workflow {self.name!r}, stage {stage.name!r}: input {spec.name!r} sets "
                        "min_inputs/allow_partial but is not gathered (it has no extra dimensions)"
                    )
                if spec.spatial and not gathered:
                    raise WorkflowError(
                        f"workflow {self.name!r}, stage {stage.name!r}: input {spec.name!r} is "
                        "spatial but not gathered (it has no dimensions the stage lacks)"
                    )
                if not spec.optional:
                    covered |= with_implied(in_dims) & stage_dims
            if covered != stage_dims:
                raise WorkflowError(
                    f"workflow {self.name!r}, stage {stage.name!r}: its required inputs do not "
                    f"determine dimension(s) {sorted(stage_dims - covered)}"
                )


def workflows_dir() -> Path:
    """The top-level ``workflows/`` folder next to the package (a source or editable install),
    else ``apflow/workflows/`` (where a wheel would carry them as package data)."""
    import apflow

    package = Path(apflow.__file__).resolve().parent
    top_level = package.parent / "workflows"
    return top_level if top_level.is_dir() else package / "workflows"


def load_workflow(
    source: str | Path | Workflow,
    dimensions_of: Callable[[str], tuple[str, ...]] | None = None,
) -> Workflow:
    """Read and validate a workflow.

    Parameters
    ----------
    source : str or Path or Workflow
        A workflow name (``"example"`` -> ``workflows/example.yaml``) or a path to a YAML file.
    dimensions_of : callable, optional
        Dataset type -> dimensions for the types the workflow does not declare, usually
        ``lambda n: repo.dataset_type(n).dimensions``. Default: the dataset types every
        repository knows (:data:`apflow.io.datasets.BUILTIN_DATASET_TYPES`).

    Raises
    ------
    WorkflowError
        If the file is missing or malformed, a task cannot be imported, a config field is
        unknown, stages form a cycle, two stages write one dataset type, or dimensions disagree.
    """
    if isinstance(source, Workflow):
        workflow = source
    else:
        path = _find(source)
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise WorkflowError(f"workflow file {path}: invalid YAML: {exc}") from None
        workflow = _parse(document, path)
    workflow.check_dataset_types(dimensions_of or _builtin_dimensions)
    return workflow


def _builtin_dimensions(name: str) -> tuple[str, ...]:
    from ..io.datasets import BUILTIN_DATASET_TYPES

    return BUILTIN_DATASET_TYPES[name].dimensions


def _find(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(source):
        if not path.is_file():
            raise WorkflowError(f"workflow file {path} does not exist")
        return path
    candidate = workflows_dir() / f"{source}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in workflows_dir().glob("*.yaml"))
        raise WorkflowError(
            f"unknown workflow {str(source)!r}; known workflows: {', '.join(known) or '(none)'} "
            "(or give a path to a YAML file)"
        )
    return candidate


def _parse(document: Any, path: Path) -> Workflow:
    where = f"workflow file {path}"
    if not isinstance(document, dict):
        raise WorkflowError(f"{where}: expected a mapping with 'stages:'")
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise WorkflowError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    name = str(document.get("name") or path.stem)
    document = _with_includes(document, path, (path.resolve(),))
    declared = {}
    for dt_name, spec in (document.get("dataset_types") or {}).items():
        if not isinstance(spec, dict) or "dimensions" not in spec or "storage" not in spec:
            raise WorkflowError(
                f"{where}: dataset type {dt_name!r} needs 'dimensions' and 'storage'"
            )
        declared[dt_name] = DatasetTypeSpec(
            dt_name,
            _dimensions(spec["dimensions"], f"{where}, dataset type {dt_name!r}"),
            str(spec["storage"]),
        )
    stages_doc = document.get("stages")
    if not isinstance(stages_doc, dict) or not stages_doc:
        raise WorkflowError(f"{where}: 'stages:' must be a non-empty mapping of stage name -> spec")
    stages = [_parse_stage(str(s), spec, f"{where}, stage {s!r}") for s, spec in stages_doc.items()]
    ordered = _topological(stages, where)
    return Workflow(
        name=name,
        stages=tuple(ordered),
        dataset_types=declared,
        description=str(document.get("description") or "").strip(),
        source=str(path),
    )


def _with_includes(document: dict[str, Any], path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The document with the stages and dataset types of its ``include:`` workflows first.

    ``nightly`` is ``include: [sky_correct, calibrate, alert_production]``: one definition of
    each stage. A stage or dataset type defined twice (in two included files, or again in the
    file itself) is an error rather than a silent override; the document's ``overrides:`` are
    the explicit way to change an included stage (:func:`_apply_overrides`).
    """
    includes = document.get("include") or []
    where = f"workflow file {path}"
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise WorkflowError(f"{where}: 'include:' must be a list of workflow names or paths")
    if not includes:
        if document.get("overrides"):
            raise WorkflowError(
                f"{where}: 'overrides:' changes stages of included workflows, but the file "
                "has no 'include:' (edit its own stages directly)"
            )
        return {k: v for k, v in document.items() if k != "overrides"}
    stages: dict[str, Any] = {}
    dataset_types: dict[str, Any] = {}

    def merge(target: dict[str, Any], items: Any, kind: str, origin: Path) -> None:
        for key, value in (items or {}).items():
            if key in target:
                raise WorkflowError(f"{where}: {kind} {key!r} is defined twice (again in {origin})")
            target[key] = value

    for name in includes:
        if "/" in name or name.endswith((".yaml", ".yml")):
            # a path is relative to the including file, so a copied set of workflows still works
            included_path = _find(str(path.parent / name))
        else:
            included_path = _find(name)
        resolved = included_path.resolve()
        if resolved in chain:
            cycle = " -> ".join(str(p) for p in (*chain, resolved))
            raise WorkflowError(f"{where}: workflows include each other: {cycle}")
        try:
            included = yaml.safe_load(included_path.read_text())
        except yaml.YAMLError as exc:
            raise WorkflowError(f"workflow file {included_path}: invalid YAML: {exc}") from None
        if not isinstance(included, dict):
            raise WorkflowError(f"workflow file {included_path}: expected a mapping")
        included = _with_includes(included, included_path, (*chain, resolved))
        merge(stages, included.get("stages"), "stage", included_path)
        merge(dataset_types, included.get("dataset_types"), "dataset type", included_path)
    _apply_overrides(stages, document.get("overrides"), set(document.get("stages") or {}), where)
    merge(stages, document.get("stages"), "stage", path)
    merge(dataset_types, document.get("dataset_types"), "dataset type", path)
    # overrides are applied: a workflow including this one must not apply them again
    flattened = {k: v for k, v in document.items() if k != "overrides"}
    return {**flattened, "stages": stages, "dataset_types": dataset_types}


def _apply_overrides(
    stages: dict[str, Any], overrides: Any, own_stages: set[str], where: str
) -> None:
    """Change included stages in place as the document's ``overrides:`` say.

    Parameters
    ----------
    stages : dict
        Stage name -> stage mapping, as merged from the included workflows.
    overrides : mapping or None
        Stage name -> ``{inputs: {name: spec or null}, config: {field: value}}``.
    own_stages : set of str
        Stages the document defines itself (not to be overridden: edit them there).
    where : str
        The document, for error messages.

    Raises
    ------
    WorkflowError
        On a malformed ``overrides:``, an unknown stage, key or input.
    """
    if overrides is None:
        return
    if not isinstance(overrides, dict):
        raise WorkflowError(f"{where}: 'overrides:' must map stage names to changes")
    for stage_name, changes in overrides.items():
        here = f"{where}, overrides of stage {stage_name!r}"
        if stage_name in own_stages:
            raise WorkflowError(f"{here}: the stage is defined in this file; edit it there")
        if stage_name not in stages:
            raise WorkflowError(
                f"{here}: no included workflow has that stage; included stages: "
                f"{', '.join(stages) or '(none)'}"
            )
        if not isinstance(changes, dict) or not changes:
            raise WorkflowError(
                f"{here}: expected a mapping with {' and/or '.join(sorted(_OVERRIDE_KEYS))}"
            )
        unknown = set(changes) - _OVERRIDE_KEYS
        if unknown:
            raise WorkflowError(
                f"{here}: cannot override {', '.join(sorted(map(str, unknown)))} (only "
                f"{', '.join(sorted(_OVERRIDE_KEYS))})"
            )
        # a copy: the included file's mapping is not ours to change
        stage = dict(stages[stage_name])
        if "inputs" in changes:
            stage["inputs"] = _overridden_inputs(stage.get("inputs") or {}, changes["inputs"], here)
        if "config" in changes:
            if not isinstance(changes["config"], dict):
                raise WorkflowError(f"{here}: 'config' must map field names to values")
            stage["config"] = _merged(stage.get("config") or {}, changes["config"])
        stages[stage_name] = stage


def _overridden_inputs(inputs: dict[str, Any], changes: Any, where: str) -> dict[str, Any]:
    """A stage's inputs with some replaced (a new spec) or dropped (``null``)."""
    if not isinstance(changes, dict) or not changes:
        raise WorkflowError(f"{where}: 'inputs' must map input names to a spec or null")
    out = dict(inputs)
    for name, spec in changes.items():
        if name not in inputs:
            raise WorkflowError(
                f"{where}: the stage has no input {name!r} (its inputs: "
                f"{', '.join(map(str, inputs)) or '(none)'}); overrides replace or drop inputs, "
                "they do not add them"
            )
        if spec is None:
            del out[name]
        else:
            out[name] = spec
    return out


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``changes``, nested mappings (subtask configs) merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _parse_stage(name: str, spec: Any, where: str) -> Stage:
    if not isinstance(spec, dict):
        raise WorkflowError(f"{where}: expected a mapping")
    unknown = set(spec) - _STAGE_KEYS
    if unknown:
        raise WorkflowError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "task" not in spec:
        raise WorkflowError(
            f"{where}: missing 'task:' (an import path like 'package.module:Class')"
        )
    task_class = _import_task(str(spec["task"]), where)
    dimensions = _dimensions(spec.get("dimensions", []), where)
    inputs = tuple(_parse_input(k, v, where) for k, v in (spec.get("inputs") or {}).items())
    if not inputs:
        raise WorkflowError(f"{where}: a stage needs at least one input")
    outputs = tuple((str(k), str(v)) for k, v in (spec.get("outputs") or {}).items())
    if not outputs:
        raise WorkflowError(f"{where}: a stage needs at least one output")
    try:
        config = task_class.ConfigClass().updated(**(spec.get("config") or {}))
    except ConfigError as exc:
        raise WorkflowError(f"{where}: {exc}") from None
    context = _check_signature(task_class, inputs, where)
    ordered_by = spec.get("ordered_by")
    if ordered_by is not None and ordered_by not in dimensions:
        raise WorkflowError(
            f"{where}: ordered_by {ordered_by!r} must be one of the stage's dimensions "
            f"{list(dimensions)}"
        )
    return Stage(
        name,
        str(spec["task"]),
        task_class,
        dimensions,
        inputs,
        outputs,
        config,
        context,
        None if ordered_by is None else str(ordered_by),
    )


def _parse_input(name: Any, spec: Any, where: str) -> InputSpec:
    name = str(name)
    if name in CONTEXT_PARAMETERS:
        raise WorkflowError(f"{where}: input name {name!r} is reserved for the engine's context")
    if isinstance(spec, str):
        return InputSpec(name, spec)
    if not isinstance(spec, dict) or "dataset" not in spec:
        raise WorkflowError(f"{where}: input {name!r} must be a dataset type or {{dataset: ...}}")
    unknown = set(spec) - _INPUT_KEYS
    if unknown:
        raise WorkflowError(f"{where}: input {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    min_inputs = spec.get("min_inputs")
    if spec.get("allow_partial"):
        min_inputs = 1 if min_inputs is None else min_inputs
    if min_inputs is not None and (not isinstance(min_inputs, int) or min_inputs < 0):
        raise WorkflowError(f"{where}: input {name!r}: min_inputs must be a non-negative integer")
    spatial = spec.get("spatial", False)
    if not isinstance(spatial, bool):
        raise WorkflowError(f"{where}: input {name!r}: spatial must be true or false")
    margin = spec.get("margin_arcsec", DEFAULT_SPATIAL_MARGIN_ARCSEC)
    if "margin_arcsec" in spec and not spatial:
        raise WorkflowError(f"{where}: input {name!r}: margin_arcsec needs spatial: true")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1e6:
        raise WorkflowError(
            f"{where}: input {name!r}: margin_arcsec must be a number in [0, 1e6), got {margin!r}"
        )
    return InputSpec(
        name,
        str(spec["dataset"]),
        bool(spec.get("optional", False)),
        min_inputs,
        spatial,
        float(margin),
    )


def _dimensions(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, str) and d.isidentifier() for d in value
    ):
        raise WorkflowError(f"{where}: dimensions must be a list of names, e.g. [visit, detector]")
    if len(set(value)) != len(value):
        raise WorkflowError(f"{where}: repeated dimension in {list(value)}")
    return tuple(value)


def _import_task(path: str, where: str) -> type[Task]:
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise WorkflowError(f"{where}: task {path!r} must look like 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowError(f"{where}: cannot import task module {module_name!r}: {exc}") from None
    task_class = getattr(module, class_name, None)
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise WorkflowError(f"{where}: {path!r} is not an apflow Task class")
    return task_class


def _check_signature(
    task_class: type[Task], inputs: tuple[InputSpec, ...], where: str
) -> frozenset[str]:
    params = inspect.signature(task_class.run).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    input_names = {i.name for i in inputs}
    if not takes_any:
        extra = sorted(input_names - named)
        if extra:
            raise WorkflowError(
                f"{where}: {task_class.__name__}.run() has no parameter(s) {', '.join(extra)}"
            )
    required = {
        n
        for n, p in params.items()
        if n != "self"
        and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    missing = sorted(required - input_names - CONTEXT_PARAMETERS)
    if missing:
        raise WorkflowError(
            f"{where}: {task_class.__name__}.run() needs {', '.join(missing)}, "
            "which the stage's inputs do not provide"
        )
    return frozenset(named & CONTEXT_PARAMETERS)


def _topological(stages: list[Stage], where: str) -> list[Stage]:
    producers: dict[str, str] = {}
    for stage in stages:
        for _, dt in stage.outputs:
            if dt in producers:
                raise WorkflowError(
                    f"{where}: dataset type {dt!r} is written by both stage "
                    f"{producers[dt]!r} and stage {stage.name!r}"
                )
            producers[dt] = stage.name
    by_name = {s.name: s for s in stages}
    deps = {
        s.name: {producers[i.dataset_type] for i in s.inputs if i.dataset_type in producers}
        for s in stages
    }
    ordered: list[Stage] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise WorkflowError(f"{where}: stages form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in sorted(deps[name]):
            visit(dep, [*path, name])
        state[name] = 2
        ordered.append(by_name[name])

    # keep the file's order where dependencies allow, so reports read like the YAML
    for stage in stages:
        visit(stage.name, [])
    return ordered


def _override_items(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(k), v) for k, v in overrides.items()]
    if isinstance(overrides, str):
        overrides = [overrides]
    items = []
    for text in overrides:
        key, sep, value = str(text).partition("=")
        if not sep:
            raise ConfigError(f"config override {text!r} must look like 'stage.field=value'")
        items.append((key.strip(), value.strip()))
    return items
