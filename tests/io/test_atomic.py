"""Atomic writes: interrupted writes leave nothing visible and never damage an existing dataset."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from apflow.core import Exposure
from apflow.errors import DatasetNotFoundError
from apflow.io import Repository, exposure_zarr
from apflow.io.atomic import MARKER, read_commit


class Interrupted(Exception):
    pass


@pytest.fixture
def fail_on_variance(monkeypatch):
    """Make exposure writes raise after image and mask are on disk."""
    original = exposure_zarr._create_array

    def create(group, name, data):
        if name == "variance":
            raise Interrupted("simulated crash mid-write")
        original(group, name, data)

    monkeypatch.setattr(exposure_zarr, "_create_array", create)


def test_exception_mid_write_leaves_nothing_visible(repo, make_exposure, fail_on_variance):
    with pytest.raises(Interrupted):
        repo.put(make_exposure(), "calexp", visit=7, detector=4)
    assert not repo.exists("calexp", visit=7, detector=4)
    assert repo.data_ids("calexp") == []
    with pytest.raises(DatasetNotFoundError):
        repo.get("calexp", visit=7, detector=4)
    # the temporary was removed on failure, and the directories made for it
    assert not (Path(repo.url) / "calexp").exists()


def test_failed_overwrite_keeps_old_version(repo, make_exposure, monkeypatch):
    old = make_exposure(seed=1)
    repo.put(old, "calexp", visit=7, detector=4, provenance={"v": 1})
    original = exposure_zarr._create_array

    def create(group, name, data):
        if name == "variance":
            raise Interrupted
        original(group, name, data)

    monkeypatch.setattr(exposure_zarr, "_create_array", create)
    with pytest.raises(Interrupted):
        repo.put(make_exposure(seed=2), "calexp", visit=7, detector=4, overwrite=True)
    assert repo.get("calexp", visit=7, detector=4).image.tobytes() == old.image.tobytes()
    assert repo.provenance("calexp", visit=7, detector=4)["v"] == 1


def test_overwrite_stopped_after_new_version_is_visible(repo, make_exposure, monkeypatch):
    """A crash between 'marker -> new temporary' and the final rename: new version readable."""
    repo.put(make_exposure(seed=1), "calexp", visit=7, detector=4)
    from apflow.io import atomic

    def crash(*args):
        raise Interrupted

    monkeypatch.setattr(atomic, "_copy_payload", crash)
    with pytest.raises(Interrupted):
        repo.put(make_exposure(seed=2), "calexp", visit=7, detector=4, overwrite=True)
    monkeypatch.undo()
    new = make_exposure(seed=2).image.tobytes()
    assert repo.get("calexp", visit=7, detector=4).image.tobytes() == new
    assert ".tmp-" in repo.uri("calexp", visit=7, detector=4)
    repo.clean_incomplete()  # finishes the rename
    assert repo.uri("calexp", visit=7, detector=4).endswith("detector=4/calexp.zarr")
    assert repo.get("calexp", visit=7, detector=4).image.tobytes() == new
    directory = Path(repo.url) / "calexp" / "visit=7" / "detector=4"
    assert sorted(p.name for p in directory.iterdir()) == [MARKER, "calexp.zarr"]


def test_clean_incomplete_removes_leftovers_only(repo, make_exposure, fail_on_variance):
    repo.put({"a": 1}, "truth_wcs", visit=1, detector=1)
    with pytest.raises(Interrupted):
        repo.put(make_exposure(), "calexp", visit=7, detector=4)
    stray = Path(repo.url) / "calexp" / "visit=8" / "detector=4" / ".tmp-dead.calexp.zarr"
    stray.mkdir(parents=True)
    (stray / "zarr.json").write_text("{}")
    removed = repo.clean_incomplete()
    assert any("visit=8" in r for r in removed)
    assert not (Path(repo.url) / "calexp").exists()
    assert repo.get("truth_wcs", visit=1, detector=1) == {"a": 1}


def test_reader_retries_when_dataset_is_replaced_mid_read(repo, make_exposure, monkeypatch):
    repo.put(make_exposure(seed=1), "calexp", visit=7, detector=4)
    from apflow.io import formats

    original = formats.ExposureFormat.read
    calls = []

    def read_then_overwrite(self, backend, path):
        value = original(self, backend, path)
        if not calls:  # another writer replaces the dataset while this read is in flight
            calls.append(path)
            repo.put(make_exposure(seed=2), "calexp", visit=7, detector=4, overwrite=True)
        return value

    monkeypatch.setattr(formats.ExposureFormat, "read", read_then_overwrite)
    got = repo.get("calexp", visit=7, detector=4)
    assert got.image.tobytes() == make_exposure(seed=2).image.tobytes()


# --- a real process killed with SIGKILL ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from apflow.core import Exposure
    from apflow.io import Repository

    def version(k, n):
        rng = np.random.default_rng(k)
        return Exposure(image=rng.standard_normal((n, n), dtype=np.float32) + k,
                        variance=rng.standard_normal((n, n), dtype=np.float32))

    repo = Repository(sys.argv[1])
    n = int(sys.argv[2])
    k = int(sys.argv[3])
    while True:  # keep (over)writing versions until killed
        print("writing", k, flush=True)
        repo.put(version(k, n), "post_isr", visit=1, detector=0, overwrite=True,
                 provenance={"version": k})
        k += 1
    """
)


def version(k: int, n: int) -> Exposure:
    rng = np.random.default_rng(k)
    return Exposure(
        image=rng.standard_normal((n, n), dtype=np.float32) + k,
        variance=rng.standard_normal((n, n), dtype=np.float32),
    )


def _start_writer(repo: Repository, n: int, first_version: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, repo.url, str(n), str(first_version)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_chunk_in_temporary(directory: Path, child: subprocess.Popen, timeout: float = 60):
    """Block until the writer has put at least one chunk into a temporary payload."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.poll() is None, "writer finished before it could be killed"
        if directory.exists():
            for tmp in directory.glob(".tmp-*/image/c"):
                if any(p.is_file() for p in tmp.rglob("*")):
                    return
        time.sleep(0.001)
    raise AssertionError("writer never started writing")


def test_sigkill_during_first_write_leaves_nothing_visible(repo):
    child = _start_writer(repo, 4096, first_version=0)
    directory = Path(repo.url) / "post_isr" / "visit=1" / "detector=0"
    try:
        _wait_for_chunk_in_temporary(directory, child)
        assert not (directory / MARKER).exists(), "first write finished before the kill"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    fresh = Repository(repo.url)
    assert not fresh.exists("post_isr", visit=1, detector=0)
    assert fresh.data_ids("post_isr") == []
    with pytest.raises(DatasetNotFoundError):
        fresh.get("post_isr", visit=1, detector=0)
    assert fresh.clean_incomplete()  # the partial temporary
    assert not (Path(repo.url) / "post_isr").exists()


@pytest.mark.parametrize(
    "delay",
    [0.3, pytest.param(0.02, marks=pytest.mark.slow), pytest.param(1.0, marks=pytest.mark.slow)],
)
def test_sigkill_during_overwrites_keeps_a_complete_version(repo, delay):
    n = 1024
    repo.put(version(0, n), "post_isr", visit=1, detector=0, provenance={"version": 0})
    child = _start_writer(repo, n, first_version=1)
    try:
        assert child.stdout.readline().startswith("writing")
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    for attempt in range(2):  # as left by the kill, then after cleaning
        got = repo.get("post_isr", visit=1, detector=0)
        k = repo.provenance("post_isr", visit=1, detector=0)["version"]
        expected = version(k, n)
        assert got.image.tobytes() == expected.image.tobytes(), f"version {k} damaged"
        assert got.variance.tobytes() == expected.variance.tobytes()
        if attempt == 0:
            repo.clean_incomplete()
    directory = Path(repo.url) / "post_isr" / "visit=1" / "detector=0"
    assert sorted(p.name for p in directory.iterdir()) == [MARKER, "post_isr.zarr"]
    assert read_commit(repo._backend, str(directory)).file == "post_isr.zarr"
