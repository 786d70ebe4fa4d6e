"""What runs on a worker: read a quantum's inputs from the repository, run its task, write outputs.

:func:`run_quantum` is the only function the engine submits to Dask. Its argument is a small
:class:`QuantumSpec` (data ids, dataset type names, the task's import path and config, the
repository, which pickles as its URL), and it returns a small dict. Pixels are read and written on the worker and never
cross the scheduler. Workers import this module from the installed apflow package: nothing is
pickled by value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TaskError
from ..tasks.base import Task, TaskConfig
from .provenance import quantum_provenance

__all__ = ["QuantumInput", "QuantumSpec", "run_quantum", "publish_event"]


@dataclass(frozen=True)
class QuantumInput:
    """One input as sent to the worker: final data ids (failed producers already removed)."""

    name: str
    dataset_type: str
    gathered: bool
    optional: bool
    data_ids: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class QuantumSpec:
    """Everything a worker needs to run one quantum; a few hundred bytes to a few KB pickled."""

    key: str
    run_id: str
    workflow: str
    stage: str
    task: str
    config: TaskConfig
    data_id: dict[str, Any]
    inputs: tuple[QuantumInput, ...]
    outputs: tuple[tuple[str, str], ...]
    context: frozenset[str]
    repo: Any
    event_topic: str | None = None
    namespace: str = ""

    @property
    def dask_key(self) -> str:
        """The key on the cluster: the quantum's key plus a digest of the repository, workflow
        and stage config, so two runs on one scheduler for different repositories (or configs)
        never share a task, while a rerun of the same thing keeps the same key."""
        return f"{self.key}-{self.namespace}" if self.namespace else self.key


def run_quantum(spec: QuantumSpec) -> dict[str, Any]:
    """Run one quantum on this process and return its summary.

    Parameters
    ----------
    spec : QuantumSpec

    Returns
    -------
    dict
        ``key``, ``status`` ("done"), ``start``/``end`` (POSIX s), ``seconds`` (of which
        ``read_seconds``, ``compute_seconds`` and ``write_seconds``), ``written`` and
        ``not_produced`` (dataset types), ``summary`` (the result's small numbers).

    Raises
    ------
    Exception
        Whatever the task or the repository raised; Dask records it (and retries it when asked)
        and the engine reports it with the quantum's stage and data id.
    """
    start = time.time()
    tune_allocator()
    publish_event(spec, "started")
    try:
        repo = _repository(spec.repo, spec.run_id)
        kwargs, read_ids = _read_inputs(repo, spec)
        kwargs.update(_context(repo, spec, read_ids))
        task = _task_class(spec.task)(spec.config)
        read_done = time.time()

        def provenance_until(end: float) -> dict[str, Any]:
            return quantum_provenance(
                run_id=spec.run_id,
                workflow=spec.workflow,
                stage=spec.stage,
                task=spec.task,
                config=spec.config.to_dict(),
                data_id=dict(spec.data_id),
                input_data_ids=read_ids,
                start=start,
                end=end,
            )

        try:
            result = task.run(**kwargs)
        except Exception as exc:
            partial = getattr(exc, "partial_outputs", None)
            if partial is not None:
                # the pixels must not travel back to the scheduler inside the exception
                del exc.partial_outputs
                _write_partial(repo, spec, partial, exc, provenance_until(time.time()))
            raise
        computed = time.time()
        provenance = provenance_until(computed)
        written, not_produced = [], []
        for name, dataset_type in spec.outputs:
            if not hasattr(result, name):
                raise TaskError(
                    f"{type(task).__name__}.run() returned {type(result).__name__} without "
                    f"attribute {name!r} (the workflow's output)"
                )
            value = getattr(result, name)
            if value is None:
                not_produced.append(dataset_type)
                continue
            # overwrite: a quantum runs only when some output is missing (or on redo), and a
            # crashed earlier attempt may have left the others; writes are atomic either way
            repo.put(value, dataset_type, overwrite=True, provenance=provenance, **spec.data_id)
            written.append(dataset_type)
        # only once every output is settled: a resume then skips the quantum (all its outputs
        # exist or are recorded as not produced) instead of rerunning it on every run
        for dataset_type in not_produced:
            repo.mark_not_produced(dataset_type, provenance=provenance, **spec.data_id)
        summary = _jsonable(result.summary()) if callable(getattr(result, "summary", None)) else {}
    except BaseException as exc:
        publish_event(spec, "failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    end = time.time()
    outcome = {
        "key": spec.key,
        "status": "done",
        "start": start,
        "end": end,
        "seconds": end - start,
        # where a quantum's time goes: reading inputs, the task, writing outputs
        "read_seconds": read_done - start,
        "compute_seconds": computed - read_done,
        "write_seconds": end - computed,
        "written": written,
        "not_produced": not_produced,
        "summary": summary,
    }
    publish_event(spec, "finished", seconds=end - start, summary=summary)
    return outcome


@functools.cache
def tune_allocator() -> bool:
    """Give this process glibc's allocator settings for large arrays; once per process.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any trim
    threshold switches off glibc's adaptive mmap threshold, so every numpy temporary above
    128 KiB becomes a fresh mmap that page-faults on first touch: image tasks ran 1.4-1.9x
    slower in such workers than in a plain process (``benchmarks/sky_frame.py``). Arrays up to
    32 MiB are served from the heap again (the adaptive threshold's own ceiling); larger ones
    are still mmapped and so still go back to the OS when freed. Workers started by an HPC
    batch system or Kubernetes get this too, since it runs with the quantum.

    Returns
    -------
    bool
        Whether the settings were applied (only on glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: leave them alone
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(
        mallopt(m_mmap_threshold, 32 * 1024 * 1024) and mallopt(m_trim_threshold, 64 * 1024 * 1024)
    )


def _write_partial(
    repo: Any, spec: QuantumSpec, partial: Any, exc: BaseException, provenance: dict[str, Any]
) -> None:
    """Write what a failed task had validly computed (Rubin's partial outputs).

    The quantum still counts as failed and its dependants are blocked. So that a later run does
    not skip it as complete, at least one output is always left unwritten: when the partial
    result carries every output, the last one declared is held back.
    """
    provenance = {**provenance, "partial": True, "failure": f"{type(exc).__name__}: {exc}"[:2000]}
    present = [(n, dt) for n, dt in spec.outputs if getattr(partial, n, None) is not None]
    if len(present) == len(spec.outputs):
        present = present[:-1]
    for name, dataset_type in present:
        repo.put(
            getattr(partial, name),
            dataset_type,
            overwrite=True,
            provenance=provenance,
            **spec.data_id,
        )


def publish_event(spec: QuantumSpec, kind: str, **fields: Any) -> None:
    """Send a small event to the run's topic (``Client.subscribe_topic``) when on a worker."""
    if spec.event_topic is None:
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not on a distributed worker (synchronous or threaded run)
    event = {"kind": kind, "key": spec.key, "stage": spec.stage, "data_id": spec.data_id}
    event.update(fields)
    try:
        worker.log_event(spec.event_topic, event)
    except Exception:  # noqa: BLE001 - progress is advisory and must never fail a quantum
        pass


_REPOSITORIES: dict[tuple[str, str, str], Any] = {}


def _repository(repo: Any, run_id: str) -> Any:
    # One opened repository per process and run: apflow.json is read once, not per quantum, and
    # a long-lived worker still sees dataset types that a later run registers.
    key = (repo.url, repr(sorted(repo.storage_options.items())), run_id)
    cached = _REPOSITORIES.get(key)
    if cached is None:
        if len(_REPOSITORIES) > 8:
            _REPOSITORIES.clear()
        cached = _REPOSITORIES[key] = repo
    return cached


@functools.lru_cache(maxsize=64)
def _task_class(path: str) -> type[Task]:
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def _read_inputs(
    repo: Any, spec: QuantumSpec
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    kwargs: dict[str, Any] = {}
    read_ids: dict[str, list[dict[str, Any]]] = {}
    for item in spec.inputs:
        values, ids = [], []
        for data_id in item.data_ids:
            if item.optional and not repo.exists(item.dataset_type, **data_id):
                continue
            values.append(repo.get(item.dataset_type, **data_id))
            ids.append(dict(data_id))
        read_ids[item.name] = ids
        kwargs[item.name] = values if item.gathered else (values[0] if values else None)
    return kwargs, read_ids


def _context(
    repo: Any, spec: QuantumSpec, read_ids: Mapping[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if "data_id" in spec.context:
        context["data_id"] = dict(spec.data_id)
    if "repo_url" in spec.context:
        # for tasks that keep state beside the repository (the APDB's default SQLite file)
        context["repo_url"] = repo.url
    if "input_data_ids" in spec.context:
        gathered = {i.name for i in spec.inputs if i.gathered}
        context["input_data_ids"] = {k: v for k, v in read_ids.items() if k in gathered}
    if spec.context & {"camera", "detector"}:
        camera = repo.camera
        if isinstance(camera, str):
            from ..core import get_camera

            camera = get_camera(camera)
        if "camera" in spec.context:
            context["camera"] = camera
        if "detector" in spec.context:
            detector_id = spec.data_id.get("detector")
            context["detector"] = camera[detector_id] if detector_id is not None else None
    return context


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars to Python, NaN/inf to None) for events and reports."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
