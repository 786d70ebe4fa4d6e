"""``apflow.run``: load a workflow, expand it over a repository, run it, report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from ..errors import WorkflowError
from .cluster import connect
from .execute import execute
from .graph import IdKey, Quantum, QuantumGraph
from .implied import VisitRecords
from .progress import Progress, event_topic
from .provenance import new_run_id
from .quantum import QuantumInput, QuantumSpec
from .summary import RunSummary, StageSummary
from .where import parse_where
from .workflow import Workflow, load_workflow

__all__ = ["run", "plan"]


def run(
    workflow: str | Path | Workflow,
    repo: Any,
    where: str | None = None,
    client: Any = None,
    config: Mapping[str, Any] | Iterable[str] | None = None,
    redo: bool = False,
    retries: int = 0,
    scheduler: str | None = None,
    cluster: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    report: str | Path | None = None,
    max_in_flight: int | None = None,
    stream: TextIO | None = None,
) -> RunSummary:
    """Run a workflow over the data ids of a repository.

    Parameters
    ----------
    workflow : str or Path or Workflow
        Name of a workflow in ``workflows/`` (``"example"``), a path to a YAML file, or a loaded
        :class:`~apflow.engine.Workflow`.
    repo : Repository or str
        The repository or its URL.
    where : str, optional
        Selection of data ids, e.g. ``"visit in (1, 2) and detector < 5"``.
    client : distributed.Client, optional
        Run on this client's cluster.
    config : mapping or list of str, optional
        Task config overrides: ``{"stage.field": value}`` or ``["stage.field=value"]``.
    redo : bool
        Recompute quanta whose outputs exist (default: skip them, i.e. resume).
    retries : int
        Times Dask re-runs a quantum that raised, for transient errors.
    scheduler : str, optional
        ``"synchronous"`` / ``"threads"`` (in this process) or the address of a running scheduler.
    cluster : str or Path, optional
        A cluster file (``cluster/slurm.yaml``, ...).
    workers : int, optional
        Workers of the default local cluster (default: one per core).
    progress : bool
        Show progress bars (or lines when not on a terminal) and the dashboard link.
    report : str or Path, optional
        Save Dask's performance report (HTML) here.
    max_in_flight : int, optional
        Most quanta on the cluster at once (default four per worker thread, at least 16).
    stream : file, optional
        Where progress goes (default standard error).

    Returns
    -------
    RunSummary
        ``ok`` is False when a quantum failed or was blocked.

    Raises
    ------
    WorkflowError, ConfigError, WhereError
        Before anything runs, when the workflow, overrides or selection are invalid.
    """
    started = time.monotonic()
    repository = _open_repository(repo)
    graph = plan(workflow, repository, where=where, config=config, redo=redo)
    summary = RunSummary(
        run_id=new_run_id(), workflow=graph.workflow.name, repo=_repo_url(repository)
    )
    with connect(client, scheduler, cluster, workers, retries) as connection:
        summary.dashboard = connection.dashboard
        topic = event_topic(summary.run_id) if connection.client is not None else None
        display = Progress(summary.stages, enabled=progress, stream=stream)
        for name, items in graph.by_stage().items():
            summary.stages[name] = StageSummary(name, total=len(items))
        to_run = sum(1 for q in graph.quanta.values() if not q.skip)
        display.print(
            f"apflow run {summary.run_id}: workflow {graph.workflow.name!r}, {len(graph)} quanta "
            f"({to_run} to run, {len(graph) - to_run} already done) on {connection.description}"
        )
        if not graph.quanta:
            display.print(
                f"nothing to do: no data ids of {', '.join(graph.workflow.input_dataset_types())} "
                f"in {summary.repo}{f' match {where!r}' if where else ''}"
            )
        if connection.dashboard:
            display.print(f"Dashboard: {connection.dashboard}")
        if connection.client is not None:
            connection.client.subscribe_topic(topic, display.on_event)
        make_spec = _spec_factory(graph, summary, repository, topic)
        with _performance_report(connection.client, report):
            display.start()
            try:
                execute(
                    graph,
                    connection.backend,
                    make_spec,
                    summary,
                    max_in_flight=max_in_flight,
                    on_outcome=display.update,
                )
            finally:
                display.close()
                if connection.client is not None:
                    with contextlib.suppress(Exception):
                        connection.client.unsubscribe_topic(topic)
    summary.wall_seconds = time.monotonic() - started
    return summary


def plan(
    workflow: str | Path | Workflow,
    repo: Any,
    where: str | None = None,
    config: Mapping[str, Any] | Iterable[str] | None = None,
    redo: bool = False,
) -> QuantumGraph:
    """Build the quantum graph :func:`run` would execute, without running anything.

    Registers the workflow's declared dataset types in the repository (an existing type must
    agree). Parameters as for :func:`run`.
    """
    repository = _open_repository(repo)

    outdated = repository.outdated_dataset_types()

    def dimensions_of(name: str) -> tuple[str, ...]:
        if name in outdated:
            old, new = outdated[name]
            raise WorkflowError(
                f"{repository.url} has dataset type {name!r} as {list(old.dimensions)}, this "
                f"apflow as {list(new.dimensions)}{_UPGRADE_HINT}"
            )
        return tuple(repository.dataset_type(name).dimensions)

    loaded = load_workflow(workflow, dimensions_of).with_config(config)
    _register_dataset_types(loaded, repository)
    selection = parse_where(where)
    if selection is not None:
        known = {d for s in loaded.stages for d in s.dimensions}
        for stage in loaded.stages:
            for item in stage.inputs:
                known.update(dimensions_of(item.dataset_type))
        selection.check_keys(known)
    regions = None
    if any(i.spatial for s in loaded.stages for i in s.inputs):
        from ..io.regions import RegionReader

        regions = RegionReader(repository)
    return QuantumGraph.build(
        loaded,
        repository.data_ids,
        dimensions_of,
        selection,
        redo,
        regions,
        getattr(repository, "not_produced_ids", None),
        # a visit's band / filter, from the exposures the workflow reads (read only if a stage
        # needs them: apflow.engine.implied)
        VisitRecords(repository, loaded.input_dataset_types()),
    )


def _register_dataset_types(workflow: Workflow, repository: Any) -> None:
    for spec in workflow.dataset_types.values():
        try:
            current = repository.dataset_type(spec.name)
        except KeyError:
            repository.register_dataset_type(spec.name, spec.dimensions, spec.storage)
            continue
        if tuple(current.dimensions) != spec.dimensions or current.storage != spec.storage:
            raise WorkflowError(
                f"workflow {workflow.name!r} declares dataset type {spec.name!r} with dimensions "
                f"{list(spec.dimensions)} and storage {spec.storage!r}, but the repository has "
                f"{list(current.dimensions)} / {current.storage!r}{_UPGRADE_HINT}"
            )


_UPGRADE_HINT = (
    " (a repository made by an older apflow: `apflow upgrade REPO` redefines such types and "
    "deletes their stored datasets, which the workflow that made them rebuilds)"
)


def _spec_factory(graph: QuantumGraph, summary: RunSummary, repository: Any, topic: str | None):
    workflow = graph.workflow
    stages = {s.name: s for s in workflow.stages}
    namespaces = {
        s.name: _namespace(repository, workflow.name, s.name, s.config.to_dict())
        for s in workflow.stages
    }

    def make_spec(quantum: Quantum, lost: dict[str, list[tuple[IdKey, bool]]]) -> QuantumSpec:
        stage = stages[quantum.stage]
        inputs = []
        for ref in quantum.inputs:
            gone = {i for i, _ in lost.get(ref.name, ())}
            inputs.append(
                QuantumInput(
                    ref.name,
                    ref.dataset_type,
                    ref.gathered,
                    ref.optional,
                    tuple(dict(i) for i in ref.ids if i not in gone),
                )
            )
        return QuantumSpec(
            key=quantum.key,
            run_id=summary.run_id,
            workflow=workflow.name,
            stage=stage.name,
            task=stage.task,
            config=stage.config,
            data_id=dict(quantum.data_id),
            inputs=tuple(inputs),
            outputs=stage.outputs,
            context=stage.context,
            repo=repository,
            event_topic=topic,
            namespace=namespaces[stage.name],
        )

    return make_spec


def _namespace(repository: Any, workflow: str, stage: str, config: dict[str, Any]) -> str:
    text = json.dumps([_repo_url(repository), workflow, stage, config], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@contextlib.contextmanager
def _performance_report(client: Any, filename: str | Path | None):
    if filename is None:
        yield
        return
    if client is None:
        raise WorkflowError("report= needs a distributed cluster (not the in-process scheduler)")
    from distributed import performance_report

    with performance_report(filename=str(filename)):
        yield


def _open_repository(repo: Any) -> Any:
    if isinstance(repo, (str, Path)):
        from ..io import Repository

        return Repository(str(repo))
    return repo


def _repo_url(repository: Any) -> str:
    return str(getattr(repository, "url", None) or repository)
