import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from apflow.core import get_camera
from apflow.errors import (
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeConflictError,
    InvalidDataIdError,
    RepositoryError,
    StorageTypeError,
    UnknownDatasetTypeError,
)
from apflow.io import BUILTIN_DATASET_TYPES, Repository


def catalog() -> pd.DataFrame:
    """Columns of many dtypes, a non-default index, NaN and missing values."""
    return pd.DataFrame(
        {
            "id": np.array([10, 11, 12], dtype=np.int64),
            "x": np.array([1.5, np.nan, -3.25], dtype=np.float32),
            "flux": np.array([1e3, 2e-3, np.inf]),
            "n": np.array([1, 2, 3], dtype=np.uint16),
            "flag": [True, False, True],
            "name": ["a", "b", None],
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "cat": pd.Categorical(["r", "g", "r"]),
            "time": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
        },
        index=pd.Index([5, 7, 9], name="row"),
    )


# --- creating and opening ---------------------------------------------------------------------


def test_create_writes_config_and_open_reads_camera(tmp_path):
    created = Repository.create(str(tmp_path / "r"), camera="lsstcam")
    config = json.loads((tmp_path / "r" / "apflow.json").read_text())
    assert config["camera"]["name"] == "lsstcam" and "calexp" in config["dataset_types"]
    reopened = Repository(str(tmp_path / "r"))
    assert reopened.camera.to_dict() == get_camera("lsstcam").to_dict()
    assert reopened.url == created.url == str(tmp_path / "r")


def test_create_refuses_existing_unless_exist_ok(repo):
    with pytest.raises(RepositoryError, match="already exists"):
        Repository.create(repo.url)
    assert Repository.create(repo.url, exist_ok=True).camera.name == "mini"


def test_open_non_repository_names_url(tmp_path):
    with pytest.raises(RepositoryError, match=str(tmp_path)):
        Repository(str(tmp_path))


def test_file_url_is_a_local_path(tmp_path):
    repo = Repository.create(f"file://{tmp_path}/r")
    assert repo.url == f"{tmp_path}/r"


def test_pickles_as_url_only_and_reopens_lazily(repo, make_exposure):
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    blob = pickle.dumps(repo)
    assert len(blob) < 500 and b"calexp" not in blob
    clone = pickle.loads(blob)
    assert clone._config is None  # nothing read until used
    assert clone.data_ids("calexp") == [{"visit": 7, "detector": 4}]


# --- dataset types ----------------------------------------------------------------------------


def test_builtin_dataset_types(repo):
    assert repo.dataset_type("post_isr_snap").dimensions == ("visit", "detector", "snap")
    assert repo.dataset_type("alerts").extension == "avro"
    assert repo.dataset_type("deep_coadd").dimensions == ("tract", "patch", "band")
    assert repo.dataset_type("calexp_background").storage == "arrays"


def test_unknown_dataset_type_lists_known(repo):
    with pytest.raises(UnknownDatasetTypeError, match="known: .*calexp"):
        repo.dataset_type("calexpp")


def test_register_persists_and_conflicts_are_refused(repo):
    repo.register_dataset_type("truth_stamps", ["visit"], "dataframe")
    repo.register_dataset_type("truth_stamps", ("visit",), "dataframe")  # identical: fine
    assert Repository(repo.url).dataset_type("truth_stamps").dimensions == ("visit",)
    with pytest.raises(DatasetTypeConflictError, match="truth_stamps"):
        repo.register_dataset_type("truth_stamps", ["visit", "detector"], "dataframe")
    with pytest.raises(DatasetTypeConflictError):
        repo.register_dataset_type("calexp", ["visit"], "exposure")
    with pytest.raises(ValueError, match="storage"):
        repo.register_dataset_type("x", [], "pickle")


def test_type_registered_by_another_process_is_found(repo):
    other = Repository(repo.url)
    repo.register_dataset_type("truth_extra", [], "json")
    other.put({"a": 1}, "truth_extra")  # reloads apflow.json on a miss
    assert other.get("truth_extra") == {"a": 1}


def test_dataset_types_lists_types_with_data(repo, make_exposure):
    assert repo.dataset_types() == []
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    repo.put(catalog(), "ref_cat")
    assert repo.dataset_types() == ["calexp", "ref_cat"]


# --- data ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x y", 1.5, None, True])
def test_unsafe_data_id_values_are_refused(repo, bad):
    with pytest.raises(InvalidDataIdError, match="calexp"):
        repo.put({"a": np.ones(1)}, "calexp_background", visit=bad, detector=1)
    with pytest.raises(InvalidDataIdError):
        repo.exists("calexp", visit=bad, detector=1)


@pytest.mark.parametrize(
    "data_id", [{"visit": 1}, {"visit": 1, "detector": 2, "band": "r"}, {"visit": 1, "ccd": 2}]
)
def test_wrong_keys_name_type_and_expected_keys(repo, data_id, make_exposure):
    with pytest.raises(
        InvalidDataIdError, match=r"'calexp' needs data id keys \['visit', 'detector'\]"
    ):
        repo.put(make_exposure(), "calexp", **data_id)
    with pytest.raises(InvalidDataIdError, match="calexp"):
        repo.get("calexp", **data_id)


def test_reads_may_leave_out_a_key_the_stored_datasets_imply(repo, make_exposure):
    """A sky frame is per (detector, physical_filter); with one filter stored, the detector
    alone names it (DESIGN's ``repo.exists("sky_frame", detector=4)``); with two it does not."""
    assert not repo.exists("sky_frame", detector=4)
    with pytest.raises(DatasetNotFoundError, match="sky_frame"):
        repo.get("sky_frame", detector=4)
    repo.put(make_exposure(), "sky_frame", detector=4, physical_filter="r_sim", provenance={"a": 1})
    assert repo.exists("sky_frame", detector=4)
    assert repo.get("sky_frame", detector=4).shape == make_exposure().shape
    assert repo.provenance("sky_frame", detector=4)["a"] == 1
    assert repo.exposure_header("sky_frame", detector=4).shape == make_exposure().shape
    assert not repo.exists("sky_frame", detector=5)
    repo.put(make_exposure(), "sky_frame", detector=4, physical_filter="g_sim")
    with pytest.raises(InvalidDataIdError, match=r"sky_frame .*g_sim.*r_sim.*give one"):
        repo.get("sky_frame", detector=4)
    assert repo.get("sky_frame", detector=4, physical_filter="g_sim") is not None
    # only implied keys may be left out, and writes always need every key
    with pytest.raises(InvalidDataIdError, match="needs data id keys"):
        repo.get("sky_frame", physical_filter="g_sim")
    with pytest.raises(InvalidDataIdError, match="needs data id keys"):
        repo.put(make_exposure(), "sky_frame", detector=4)


def test_data_ids_sorted_filtered_and_complete_only(repo):
    for visit in (12, 3):
        for detector in (2, 0):
            repo.put({"v": visit}, "truth_wcs", visit=visit, detector=detector)
    # an incomplete write (no marker) must not be listed
    stray = Path(repo.url) / "truth_wcs" / "visit=5" / "detector=0"
    stray.mkdir(parents=True)
    (stray / "truth_wcs.json").write_text("{}")
    assert repo.data_ids("truth_wcs") == [
        {"visit": 3, "detector": 0},
        {"visit": 3, "detector": 2},
        {"visit": 12, "detector": 0},
        {"visit": 12, "detector": 2},
    ]
    assert repo.data_ids("truth_wcs", visit=12) == [
        {"visit": 12, "detector": 0},
        {"visit": 12, "detector": 2},
    ]
    assert repo.data_ids("truth_wcs", detector="2") == [
        {"visit": 3, "detector": 2},
        {"visit": 12, "detector": 2},
    ]
    assert repo.data_ids("calexp") == []
    with pytest.raises(InvalidDataIdError, match="band"):
        repo.data_ids("truth_wcs", band="r")


def test_string_integers_and_names_in_data_ids(repo):
    repo.put(catalog(), "forced_src", tract=0, patch="7", band="r")
    assert repo.data_ids("forced_src") == [{"tract": 0, "patch": 7, "band": "r"}]
    assert repo.exists("forced_src", tract="0", patch=7, band="r")


# --- storage classes --------------------------------------------------------------------------


def test_dataframe_round_trip_exact(repo):
    df = catalog()
    repo.put(df, "stars", visit=1, detector=2, provenance={"task": "calibrate"})
    back = repo.get("stars", visit=1, detector=2)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert list(back.dtypes) == list(df.dtypes)
    metadata = pq.read_schema(repo.uri("stars", visit=1, detector=2)).metadata
    assert json.loads(metadata[b"apflow"])["provenance"] == {"task": "calibrate"}


def test_json_bytes_round_trips(repo):
    record = {"a": [1, 2.5, None], "nan": float("nan"), "nested": {"s": "x"}}
    repo.put(record, "truth_wcs", visit=1, detector=1)
    back = repo.get("truth_wcs", visit=1, detector=1)
    assert back["a"] == [1, 2.5, None] and np.isnan(back["nan"]) and back["nested"] == {"s": "x"}
    avro = b"Obj\x01" + bytes(range(256))
    repo.put(avro, "alerts", visit=1, detector=1)
    assert repo.get("alerts", visit=1, detector=1) == avro
    assert repo.uri("alerts", visit=1, detector=1).endswith("alerts/visit=1/detector=1/alerts.avro")


@pytest.mark.parametrize(
    "obj, dataset_type, data_id",
    [
        (pd.DataFrame({"a": [1]}), "calexp", {"visit": 1, "detector": 1}),
        (np.zeros((2, 2)), "calexp", {"visit": 1, "detector": 1}),
        ({"a": 1}, "stars", {"visit": 1, "detector": 1}),
        (b"\x89PNG\r\n\x1a\n", "alerts", {"visit": 1, "detector": 1}),
        ("text", "truth_wcs", {"visit": 1, "detector": 1}),
        ({"a": [1, 2]}, "calexp_background", {"visit": 1, "detector": 1}),
    ],
)
def test_wrong_python_type_names_type_and_storage(repo, obj, dataset_type, data_id):
    with pytest.raises(StorageTypeError, match=dataset_type) as info:
        repo.put(obj, dataset_type, **data_id)
    assert isinstance(info.value, TypeError)
    assert repo.dataset_type(dataset_type).storage in str(info.value)
    assert not repo.exists(dataset_type, **data_id)


# --- lifecycle --------------------------------------------------------------------------------


def test_put_refuses_existing_without_overwrite(repo):
    repo.put({"v": 1}, "truth_wcs", visit=1, detector=1)
    with pytest.raises(DatasetExistsError, match="overwrite"):
        repo.put({"v": 2}, "truth_wcs", visit=1, detector=1)
    repo.put({"v": 2}, "truth_wcs", visit=1, detector=1, overwrite=True)
    assert repo.get("truth_wcs", visit=1, detector=1) == {"v": 2}


def test_overwrite_keeps_canonical_layout(repo, make_exposure):
    repo.put(make_exposure(seed=1), "calexp", visit=7, detector=4)
    repo.put(make_exposure(seed=2), "calexp", visit=7, detector=4, overwrite=True)
    directory = Path(repo.url) / "calexp" / "visit=7" / "detector=4"
    assert sorted(p.name for p in directory.iterdir()) == ["_COMMITTED.json", "calexp.zarr"]
    assert (
        repo.get("calexp", visit=7, detector=4).image.tobytes()
        == make_exposure(seed=2).image.tobytes()
    )


def test_get_missing_raises_not_found(repo):
    with pytest.raises(DatasetNotFoundError, match=r"calexp \[detector=4, visit=7\]"):
        repo.get("calexp", visit=7, detector=4)
    assert not repo.exists("calexp", visit=7, detector=4)


def test_remove_deletes_and_tidies(repo, make_exposure):
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    repo.remove("calexp", visit=7, detector=4)
    assert not repo.exists("calexp", visit=7, detector=4)
    assert not (Path(repo.url) / "calexp").exists()
    with pytest.raises(DatasetNotFoundError):
        repo.remove("calexp", visit=7, detector=4)


def test_provenance_records_what_put_recorded(repo, make_exposure):
    prov = {"workflow": "calibrate", "inputs": [{"visit": 7}], "config": {"nsigma": 5.0}}
    repo.put(make_exposure(), "calexp", visit=7, detector=4, provenance=prov)
    got = repo.provenance("calexp", visit=7, detector=4)
    assert {k: got[k] for k in prov} == prov
    assert got["written"].endswith("Z") and got["apflow_version"]
    with pytest.raises(DatasetNotFoundError):
        repo.provenance("calexp", visit=8, detector=4)


def test_provenance_must_be_json(repo):
    with pytest.raises(TypeError, match="provenance"):
        repo.put({"a": 1}, "truth_wcs", visit=1, detector=1, provenance={"f": object()})


def test_corrupt_payload_names_dataset(repo):
    repo.put(catalog(), "stars", visit=1, detector=2)
    path = Path(repo.uri("stars", visit=1, detector=2))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CorruptDatasetError, match=r"stars \[detector=2, visit=1\]"):
        repo.get("stars", visit=1, detector=2)


def test_corrupt_exposure_chunk_names_dataset(repo, make_exposure):
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    chunk = Path(repo.uri("calexp", visit=7, detector=4)) / "variance" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(CorruptDatasetError, match=r"calexp \[detector=4, visit=7\]"):
        repo.get("calexp", visit=7, detector=4)


def test_corrupt_marker_names_dataset(repo):
    repo.put({"a": 1}, "truth_wcs", visit=1, detector=1)
    (Path(repo.url) / "truth_wcs" / "visit=1" / "detector=1" / "_COMMITTED.json").write_text("{")
    with pytest.raises(CorruptDatasetError, match="truth_wcs"):
        repo.get("truth_wcs", visit=1, detector=1)


def test_every_builtin_type_has_a_valid_definition():
    for name, dtype in BUILTIN_DATASET_TYPES.items():
        assert dtype.name == name and dtype.filename.startswith(name + ".")


def test_threads_share_one_repository(repo, make_exposure):
    from concurrent.futures import ThreadPoolExecutor

    def work(detector: int) -> bool:
        exposure = make_exposure(seed=detector, detector=detector)
        repo.put(exposure, "calexp", visit=1, detector=detector)
        return repo.get("calexp", visit=1, detector=detector).image.tobytes() == (
            exposure.image.tobytes()
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))
    assert len(repo.data_ids("calexp", visit=1)) == 8
