"""Where a run executes: a local cluster, an existing scheduler, or one started from a cluster file.

Cluster files (``cluster/*.yaml``) name a ``type`` and the keyword arguments of its cluster class::

    type: slurm                     # local | slurm | pbs | remote
    options: {cores: 32, processes: 8, memory: 120GiB, walltime: "04:00:00"}
    scale: {jobs: 4}                # or adapt: {minimum_jobs: 1, maximum_jobs: 50}

A Kubernetes ``DaskCluster`` resource (``kind: DaskCluster``, see ``cluster/kubernetes/``) is
passed to the dask-kubernetes operator as it is. ``type: remote`` attaches to a running
scheduler, with TLS certificates when its address starts with ``tls://`` (``cluster/tls/``).
Relative paths in a cluster file are relative to the file.

Nothing listens beyond 127.0.0.1 unless a cluster file asks for it: the default local cluster
binds its scheduler, workers and dashboard to the loopback interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, WorkflowError
from .execute import Backend, DistributedBackend, LocalBackend

__all__ = ["WORKER_CONFIG", "Connection", "cluster_from_file", "connect", "read_cluster_file"]

LOCAL_SCHEDULERS = ("synchronous", "sync", "threads")
_JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


@dataclass
class Connection:
    """An open place to run quanta."""

    backend: Backend
    client: Any = None
    dashboard: str | None = None
    description: str = ""


def read_cluster_file(path: str | Path) -> dict[str, Any]:
    """Load a cluster file, resolving relative paths; raise :class:`ConfigError` when invalid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cluster file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cluster file {path}: invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"cluster file {path}: expected a mapping")
    if document.get("kind") == "DaskCluster":
        return {"type": "kubernetes", "spec": document, "path": str(path)}
    kind = document.get("type")
    if kind not in ("local", "remote", "kubernetes", *_JOBQUEUE):
        raise ConfigError(
            f"cluster file {path}: 'type' must be one of local, remote, slurm, pbs, kubernetes "
            f"(or the file a Kubernetes DaskCluster resource), got {kind!r}"
        )
    unknown = set(document) - {"type", "options", "scale", "adapt", "address", "security"}
    if unknown:
        raise ConfigError(f"cluster file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    document = dict(document)
    document["path"] = str(path)
    security = document.get("security") or {}
    document["security"] = {
        k: str((path.parent / v).resolve()) if k != "require_encryption" else v
        for k, v in security.items()
    }
    return document


def cluster_from_file(path: str | Path, **overrides: Any) -> Any:
    """Create (but do not scale) the cluster a ``local``, ``slurm``, ``pbs`` or ``kubernetes``
    cluster file describes.

    Parameters
    ----------
    path : str or Path
    **overrides
        Replace options of the file (e.g. ``scheduler_options`` in tests).

    Returns
    -------
    distributed.deploy.Cluster
        ``job_script()`` shows what a batch job would run (dask-jobqueue clusters).
    """
    spec = read_cluster_file(path)
    options = {**(spec.get("options") or {}), **overrides}
    kind = spec["type"]
    with _engine_cluster_config():
        return _start_cluster(kind, path, spec, options, overrides)


#: Dask settings for the clusters the engine starts (local, or from a cluster file), in effect
#: in the scheduler and in every worker process whose nanny is created here. Workers started
#: elsewhere (batch jobs, Kubernetes, ``dask worker``) need them in their own environment:
#: ``MALLOC_ARENA_MAX=1`` and ``DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms``. The numbers
#: below are task CPU seconds on one LSSTCam CCD, in a worker vs in a plain process.
WORKER_CONFIG: dict[str, Any] = {
    # Root-task queuing (worker-saturation 1.1) would add a scheduler round trip between quanta
    # on each thread; the engine already bounds what is on the cluster with max_in_flight.
    "distributed.scheduler.worker-saturation": float("inf"),
    # The quantum runs in the worker's executor thread, and glibc gives a non-main thread its
    # own arena made of 64 MiB heaps: CCD-size temporaries (16-32 MiB) then land in fresh heaps
    # that are unmapped when emptied and page-faulted in again by the next quantum
    # (FocalPlanePartialTask: ~40,000 minor faults and 0.45-0.55 CPU s per CCD, against
    # ~10,000 and 0.38-0.40 s in a plain process). One arena serves them from the main heap,
    # as in a plain process; a worker runs one task thread, so there is no lock contention.
    "distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1,
    # The statistical profiler walks every thread's stack each 10 ms under the GIL: beside
    # MaskObjectsTask the worker's other threads used 6-9% (median) of the task's CPU time, on
    # a core the other worker needs; at 100 ms, 3%. Tasks here run for seconds, so 100 ms
    # samples still give the dashboard's profile a useful picture.
    "distributed.worker.profile.interval": "100ms",
}


@contextlib.contextmanager
def _engine_cluster_config() -> Iterator[None]:
    import dask

    with dask.config.set(WORKER_CONFIG):
        yield


def _start_cluster(
    kind: str, path: str | Path, spec: dict[str, Any], options: dict[str, Any], overrides: dict
) -> Any:
    if kind == "local":
        return _local_cluster(**options)
    if kind in _JOBQUEUE:
        try:
            import dask_jobqueue
        except ImportError:
            raise ConfigError(
                f"cluster file {path} needs dask-jobqueue: pip install 'apflow[hpc]'"
            ) from None
        return getattr(dask_jobqueue, _JOBQUEUE[kind])(**options)
    if kind == "kubernetes":
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError:
            raise ConfigError(
                f"cluster file {path} needs dask-kubernetes: pip install 'apflow[kubernetes]'"
            ) from None
        return KubeCluster(custom_cluster_spec=spec.get("spec", options), **overrides)
    raise ConfigError(f"cluster file {path}: type {kind!r} attaches to a scheduler, it starts none")


@contextlib.contextmanager
def connect(
    client: Any = None,
    scheduler: str | None = None,
    cluster: str | Path | None = None,
    workers: int | None = None,
    retries: int = 0,
) -> Iterator[Connection]:
    """Open the place a run executes and close what was started here on exit.

    Parameters
    ----------
    client : distributed.Client, optional
        Use this client (never closed here).
    scheduler : str, optional
        ``"synchronous"`` or ``"threads"`` run in this process without a cluster; an address
        (``tcp://host:8786``, ``tls://...``) attaches to a running scheduler; a path to a
        ``scheduler.json`` file likewise.
    cluster : str or Path, optional
        A cluster file (see the module docstring).
    workers : int, optional
        Number of workers of the default local cluster (or threads of ``"threads"``).
    retries : int
        Dask retries of quanta that raised.
    """
    given = [x is not None for x in (client, scheduler, cluster)]
    if sum(given) > 1:
        raise ConfigError("give at most one of client, scheduler and cluster")
    if scheduler in LOCAL_SCHEDULERS:
        mode = "threads" if scheduler == "threads" else "synchronous"
        backend = LocalBackend(mode, retries=retries, workers=workers)
        try:
            yield Connection(backend, description=f"in-process ({mode})")
        finally:
            backend.close()
        return
    if client is not None:
        _check_workers(client)
        yield Connection(
            DistributedBackend(client, retries), client, _dashboard(client), "given client"
        )
        return
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            if scheduler.endswith(".json") and Path(scheduler).is_file():
                dask_client = Client(scheduler_file=scheduler)
            else:
                dask_client = Client(scheduler)
            description = f"scheduler {dask_client.scheduler.address}"
        elif cluster is not None:
            dask_client, description = _client_from_file(cluster, stack)
        else:
            local = stack.enter_context(_local_cluster(n_workers=workers))
            dask_client = Client(local)
            description = f"local cluster of {len(local.workers)} workers x 1 thread"
        stack.enter_context(dask_client)
        _check_workers(dask_client)
        yield Connection(
            DistributedBackend(dask_client, retries),
            dask_client,
            _dashboard(dask_client),
            description,
        )


def _client_from_file(path: str | Path, stack: contextlib.ExitStack) -> tuple[Any, str]:
    from distributed import Client
    from distributed.security import Security

    spec = read_cluster_file(path)
    if spec["type"] == "remote":
        address = spec.get("address")
        if not address:
            raise ConfigError(f"cluster file {path}: a remote cluster needs 'address'")
        security = None
        if spec["security"]:
            sec = spec["security"]
            security = Security(
                tls_ca_file=sec.get("ca_file"),
                tls_client_cert=sec.get("cert"),
                tls_client_key=sec.get("key"),
                require_encryption=bool(sec.get("require_encryption", True)),
            )
        return Client(address, security=security), f"scheduler {address}"
    cluster = stack.enter_context(cluster_from_file(path))
    if spec.get("adapt"):
        cluster.adapt(**spec["adapt"])
    elif spec.get("scale"):
        cluster.scale(**spec["scale"])
    return Client(cluster), f"{type(cluster).__name__} from {path}"


def _local_cluster(n_workers: int | None = None, **options: Any) -> Any:
    from distributed import LocalCluster

    settings: dict[str, Any] = {
        "n_workers": n_workers or _cpu_count(),
        "threads_per_worker": 1,  # numpy-heavy tasks; one thread per process avoids GIL convoys
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": _dashboard_address(),
        "silence_logs": logging.ERROR,
    }
    settings.update({k: v for k, v in options.items() if v is not None})
    with _engine_cluster_config():
        return LocalCluster(**settings)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _dashboard_address() -> str | None:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return None
    # prefer the usual port; take any free one rather than warn when 8787 is busy
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8787))
            return "127.0.0.1:8787"
        except OSError:
            return "127.0.0.1:0"


def _dashboard(client: Any) -> str | None:
    # dashboard_link is formatted from configuration even when the scheduler serves none
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing, or disabled)
        return None


def _check_workers(client: Any) -> None:
    """Workers must import apflow as an installed package (never pickled by value)."""
    import apflow

    versions = client.get_versions(packages=["apflow"])
    missing = [
        address
        for address, info in (versions.get("workers") or {}).items()
        if (info or {}).get("packages", {}).get("apflow") is None
    ]
    if missing:
        raise WorkflowError(
            f"worker(s) {', '.join(sorted(missing))} cannot import apflow; install apflow "
            f"{apflow.__version__} in the workers' environment (pip install apflow)"
        )
