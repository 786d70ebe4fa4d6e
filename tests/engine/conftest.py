"""Fixtures for engine tests: small repositories and real Dask clusters on 127.0.0.1.

Clusters are a ``dask scheduler`` and ``dask worker`` processes started with ``.venv/bin/dask``
(the same executable as this interpreter's), one thread each, no dashboard, always killed by a
finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from apflow.core import Exposure, MaskPlanes, VisitInfo
from apflow.io import Repository

DASK = str(Path(sys.executable).with_name("dask"))
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


@dataclass
class DaskCluster:
    """A scheduler and workers running as separate processes."""

    directory: Path
    tls: dict[str, str] | None = None
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    address: str = ""

    def _tls_args(self, party: str) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--tls-ca-file",
            self.tls["ca"],
            "--tls-cert",
            self.tls[party],
            "--tls-key",
            self.tls[f"{party}-key"],
        ]

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        handle = open(self.directory / log, "wb")  # noqa: SIM115 - kept open for the process
        # own process group: a kill reaches the process and anything it spawned
        return subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT
        )

    def start_scheduler(self) -> None:
        scheduler_file = self.directory / "scheduler.json"
        protocol = ["--protocol", "tls"] if self.tls else []
        self.scheduler = self._spawn(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             # the HTTP server (health, metrics) runs even without a dashboard: keep it local
             "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(scheduler_file), *protocol, *self._tls_args("scheduler")],
            "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if scheduler_file.exists():
                try:
                    self.address = json.loads(scheduler_file.read_text())["address"]
                    return
                except (ValueError, KeyError):
                    pass
            if self.scheduler.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"scheduler did not start: {self.log('scheduler.log')}")

    def start_worker(self, name: str) -> subprocess.Popen:
        worker = self._spawn(
            [DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--name", name, "--memory-limit", "0",
             "--death-timeout", "30", *self._tls_args("worker")],
            f"{name}.log",
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, n: int, security: Any = None) -> None:
        from distributed import Client

        with Client(self.address, security=security, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(n, timeout=START_TIMEOUT)

    def log(self, name: str) -> str:
        path = self.directory / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def kill(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=5)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    self.kill(process)


def start_cluster(directory: Path, n_workers: int = 2, tls: dict[str, str] | None = None,
                  security: Any = None) -> DaskCluster:  # fmt: skip
    """Start a scheduler and ``n_workers`` workers; the caller must ``stop()`` it."""
    directory.mkdir(parents=True, exist_ok=True)
    cluster = DaskCluster(directory, tls=tls)
    try:
        cluster.start_scheduler()
        for n in range(n_workers):
            cluster.start_worker(f"worker-{n}")
        cluster.wait_for_workers(n_workers, security=security)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """Scheduler + two workers shared by a test module (tests must not kill them)."""
    cluster = start_cluster(tmp_path_factory.mktemp("dask"))
    yield cluster
    cluster.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    """Scheduler + two workers for one test (which may kill them)."""
    cluster = start_cluster(tmp_path / "dask")
    yield cluster
    cluster.stop()


_TEMPLATES: dict[tuple, Path] = {}
_TEMPLATE_DIR = Path(tempfile.mkdtemp(prefix="apflow-engine-repos-"))


@pytest.fixture(scope="session", autouse=True)
def _remove_template_repos() -> Iterator[None]:
    yield
    shutil.rmtree(_TEMPLATE_DIR, ignore_errors=True)


def make_repo(
    url: str | Path,
    visits: tuple[int, ...] = (1, 2, 3),
    shape: tuple[int, int] = (128, 128),
    seed: int = 7,
    nan_data_ids: tuple[tuple[int, int], ...] = (),
) -> Repository:
    """A mini-camera repository of random ``post_isr`` exposures (a few masked pixels each).

    ``nan_data_ids`` lists (visit, detector) whose image is all NaN, which ImageStatsTask rejects.
    Each distinct repository is made once per session and copied, since encoding is the slow part.
    """
    key = (visits, shape, seed, nan_data_ids)
    if key not in _TEMPLATES:
        template = _TEMPLATE_DIR / f"repo-{len(_TEMPLATES)}"
        _fill_repo(Repository.create(str(template), camera="mini"), *key)
        _TEMPLATES[key] = template
    shutil.copytree(_TEMPLATES[key], url)
    return Repository(str(url))


def _fill_repo(
    repo: Repository,
    visits: tuple[int, ...],
    shape: tuple[int, int],
    seed: int,
    nan_data_ids: tuple[tuple[int, int], ...],
) -> None:
    rng = np.random.default_rng(seed)
    for visit in visits:
        for detector in repo.camera.detector_ids:
            image = rng.normal(1000.0 + 10 * visit + detector, 20.0, shape).astype(np.float32)
            mask = np.zeros(shape, dtype=np.int32)
            mask[rng.integers(0, shape[0], 20), rng.integers(0, shape[1], 20)] = MaskPlanes.bits(
                "BAD"
            )
            if (visit, detector) in nan_data_ids:
                image[:] = np.nan
            exposure = Exposure(
                image=image,
                mask=mask,
                variance=np.full(shape, 400.0, dtype=np.float32),
                visit_info=VisitInfo(visit=visit, band="r"),
                detector=detector,
            )
            repo.put(exposure, "post_isr", visit=visit, detector=detector)


OUTPUT_TYPES = ("image_stats", "visit_stats", "normalized")


def assert_same_outputs(
    a: Repository, b: Repository, types: tuple[str, ...] = OUTPUT_TYPES
) -> None:
    """The two repositories hold the same data ids and bit-identical outputs."""
    for dataset_type in types:
        ids_a, ids_b = a.data_ids(dataset_type), b.data_ids(dataset_type)
        assert ids_a == ids_b, dataset_type
        for data_id in ids_a:
            x, y = a.get(dataset_type, **data_id), b.get(dataset_type, **data_id)
            if isinstance(x, dict):
                assert x == y, (dataset_type, data_id)
            else:
                for plane in ("image", "mask", "variance"):
                    px, py = getattr(x, plane), getattr(y, plane)
                    assert px.dtype == py.dtype
                    assert px.tobytes() == py.tobytes(), (dataset_type, data_id, plane)


def stats_repeat_for(seconds: float, shape: tuple[int, int] = (128, 128)) -> int:
    """``image_stats.repeat`` that makes one ImageStatsTask quantum take about ``seconds``."""
    from apflow.tasks.examples import ImageStatsConfig, ImageStatsTask

    exposure = Exposure(image=np.random.default_rng(0).normal(0, 1, shape).astype(np.float32))
    task = ImageStatsTask(ImageStatsConfig(repeat=20))
    start = time.perf_counter()
    task.run(exposure)
    per_repeat = (time.perf_counter() - start) / 20
    return max(1, int(seconds / per_repeat))


def count(repo: Repository, dataset_type: str) -> int:
    """Number of complete datasets of a type (0 before the run registered the type)."""
    from apflow.errors import UnknownDatasetTypeError

    try:
        return len(repo.data_ids(dataset_type))
    except UnknownDatasetTypeError:
        return 0


def wait_until(
    predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture(scope="session")
def helpers() -> Any:
    """The helper functions above (conftest modules cannot be imported under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_repo=make_repo,
        assert_same_outputs=assert_same_outputs,
        stats_repeat_for=stats_repeat_for,
        count=count,
        wait_until=wait_until,
        start_cluster=start_cluster,
        OUTPUT_TYPES=OUTPUT_TYPES,
        REPO_ROOT=REPO_ROOT,
    )
