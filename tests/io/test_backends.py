"""The same repository behaviour on memory:// and on S3 (a moto server on 127.0.0.1)."""

import pickle
import uuid

import numpy as np
import pandas as pd
import pytest

from apflow.errors import DatasetExistsError, DatasetNotFoundError
from apflow.io import Repository, exposure_zarr


@pytest.fixture(params=["memory", "s3"])
def remote_repo(request, memory_repo):
    if request.param == "memory":
        return memory_repo
    server = request.getfixturevalue("s3_server")
    url = f"s3://{server['bucket']}/repo-{uuid.uuid4().hex[:8]}"
    return Repository.create(url, camera="mini", storage_options=server["storage_options"])


def test_round_trips(remote_repo, make_exposure, exposures_identical, sky_offset):
    repo = Repository(remote_repo.url, storage_options=remote_repo.storage_options)
    exposure = make_exposure()
    repo.put(exposure, "calexp", visit=7, detector=4, provenance={"task": "t"})
    back = repo.get("calexp", visit=7, detector=4)
    exposures_identical(exposure, back)
    assert sky_offset(exposure.wcs, back.wcs, exposure.width, exposure.height) <= 1e-10
    df = pd.DataFrame({"a": np.arange(5, dtype=np.int16), "b": list("abcde")})
    repo.put(df, "stars", visit=7, detector=4)
    pd.testing.assert_frame_equal(repo.get("stars", visit=7, detector=4), df)
    repo.put({"x": float("nan")}, "truth_wcs", visit=7, detector=4)
    assert np.isnan(repo.get("truth_wcs", visit=7, detector=4)["x"])
    assert repo.provenance("calexp", visit=7, detector=4)["task"] == "t"
    assert repo.dataset_types() == ["calexp", "stars", "truth_wcs"]
    assert repo.uri("calexp", visit=7, detector=4).startswith(repo.url.split("://")[0] + "://")


def test_many_chunk_exposure_round_trips_through_the_async_store_path(
    remote_repo, make_exposure, exposures_identical, monkeypatch
):
    # Chunks of ~16 x 16 px: 41 strips per plane (the last partial), read through the store's
    # async API rather than local files.
    monkeypatch.setattr(exposure_zarr, "CHUNK_SIDE", 16)
    exposure = make_exposure(width=96, height=81)
    remote_repo.put(exposure, "calexp", visit=7, detector=4)
    exposures_identical(exposure, remote_repo.get("calexp", visit=7, detector=4))


def test_listing_overwrite_and_remove(remote_repo, make_exposure):
    repo = remote_repo
    for visit in (2, 1):
        repo.put(make_exposure(seed=visit), "calexp", visit=visit, detector=0)
    assert repo.data_ids("calexp") == [{"visit": 1, "detector": 0}, {"visit": 2, "detector": 0}]
    assert repo.data_ids("calexp", visit=2) == [{"visit": 2, "detector": 0}]
    with pytest.raises(DatasetExistsError):
        repo.put(make_exposure(seed=9), "calexp", visit=1, detector=0)
    repo.put(make_exposure(seed=9), "calexp", visit=1, detector=0, overwrite=True)
    assert (
        repo.get("calexp", visit=1, detector=0).image.tobytes()
        == make_exposure(seed=9).image.tobytes()
    )
    assert repo.uri("calexp", visit=1, detector=0).endswith("detector=0/calexp.zarr")
    repo.remove("calexp", visit=1, detector=0)
    assert not repo.exists("calexp", visit=1, detector=0)
    assert repo.data_ids("calexp") == [{"visit": 2, "detector": 0}]


def test_interrupted_write_is_invisible_and_cleaned(remote_repo, make_exposure, monkeypatch):
    repo = remote_repo
    repo.put(make_exposure(seed=1), "calexp", visit=1, detector=0)
    original = exposure_zarr._create_array

    def create(group, name, data):
        if name == "variance":
            raise RuntimeError("crash")
        original(group, name, data)

    monkeypatch.setattr(exposure_zarr, "_create_array", create)
    with pytest.raises(RuntimeError):
        repo.put(make_exposure(seed=2), "calexp", visit=2, detector=0)
    with pytest.raises(RuntimeError):
        repo.put(make_exposure(seed=3), "calexp", visit=1, detector=0, overwrite=True)
    monkeypatch.undo()
    assert repo.data_ids("calexp") == [{"visit": 1, "detector": 0}]
    with pytest.raises(DatasetNotFoundError):
        repo.get("calexp", visit=2, detector=0)
    old = make_exposure(seed=1).image.tobytes()
    assert repo.get("calexp", visit=1, detector=0).image.tobytes() == old
    repo.clean_incomplete()
    assert repo.get("calexp", visit=1, detector=0).image.tobytes() == old


def test_s3_repository_pickles_with_its_options(s3_server, make_exposure):
    url = f"s3://{s3_server['bucket']}/pickled-{uuid.uuid4().hex[:8]}"
    repo = Repository.create(url, storage_options=s3_server["storage_options"])
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    clone = pickle.loads(pickle.dumps(repo))
    assert clone.url == url and clone.data_ids("calexp") == [{"visit": 7, "detector": 4}]


def test_missing_s3_repository_names_url(s3_server):
    from apflow.errors import RepositoryError

    url = f"s3://{s3_server['bucket']}/nothing-here"
    with pytest.raises(RepositoryError, match=url):
        Repository(url, storage_options=s3_server["storage_options"])
