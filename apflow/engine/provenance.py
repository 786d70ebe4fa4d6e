"""Provenance recorded with every output: what ran, on what, with which software, when, where."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = ["new_run_id", "package_versions", "quantum_provenance", "utc_iso"]

_PACKAGES = ("apflow", "numpy", "dask", "distributed", "zarr", "astropy")


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that determine an output's pixels (cached per process)."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def new_run_id() -> str:
    """A sortable, unique run id such as ``20260714T101502Z-3f9a1c``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def utc_iso(timestamp: float) -> str:
    """A POSIX timestamp as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def quantum_provenance(
    *,
    run_id: str,
    workflow: str,
    stage: str,
    task: str,
    config: dict[str, Any],
    data_id: dict[str, Any],
    input_data_ids: dict[str, list[dict[str, Any]]],
    start: float,
    end: float,
) -> dict[str, Any]:
    """The provenance dict passed to ``Repository.put`` for each output of a quantum.

    Parameters
    ----------
    run_id, workflow, stage : str
        Which run, workflow and stage wrote the dataset.
    task : str
        Import path of the task class (``package.module:Class``).
    config : dict
        The task's configuration as run (after overrides).
    data_id : dict
        The quantum's data id.
    input_data_ids : dict
        Input name -> data ids read (one element for non-gathered inputs, none when an
        optional input was absent).
    start, end : float
        POSIX times the quantum started and finished computing (before writing).
    """
    return {
        "run_id": run_id,
        "workflow": workflow,
        "stage": stage,
        "task": task,
        "config": config,
        "data_id": data_id,
        "inputs": input_data_ids,
        "versions": package_versions(),
        "start": utc_iso(start),
        "end": utc_iso(end),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
