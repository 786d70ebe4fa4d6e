"""Exposure headers without pixels, sky regions from them, and "not produced" records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apflow.core.region import SkyPolygon
from apflow.errors import DatasetError, DatasetNotFoundError, StorageTypeError
from apflow.io import RegionReader
from apflow.io.regions import dataset_region


def test_header_has_shape_wcs_corners_and_visit_info_without_pixels(repo, make_exposure):
    exposure = make_exposure()
    repo.put(exposure, "calexp", visit=7, detector=4)
    header = repo.exposure_header("calexp", visit=7, detector=4)
    assert header.shape == (80, 96)
    assert header.visit_info.to_dict().keys() == exposure.visit_info.to_dict().keys()
    assert (header.visit_info.visit, header.visit_info.band, header.detector) == (7, "r", 4)
    # the stored corners are the WCS's (TAN-SIP included) to double precision
    ra, dec = exposure.wcs.all_pix2world([-0.5, 95.5, 95.5, -0.5], [-0.5, -0.5, 79.5, 79.5], 0)
    np.testing.assert_allclose(np.array(header.sky_corners), np.stack([ra, dec], 1), atol=1e-12)
    x, y = header.wcs.all_world2pix(ra, dec, 0)
    np.testing.assert_allclose(x, [-0.5, 95.5, 95.5, -0.5], atol=1e-8)


def test_header_reads_no_chunk(repo, make_exposure):
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    payload = Path(repo.uri("calexp", visit=7, detector=4))
    for chunk in payload.glob("*/c/**/*"):
        if chunk.is_file():
            chunk.unlink()  # a pixel read would now fail
    assert repo.exposure_header("calexp", visit=7, detector=4).shape == (80, 96)
    with pytest.raises(Exception, match="calexp"):
        repo.get("calexp", visit=7, detector=4)


def test_header_of_a_missing_or_non_exposure_dataset(repo):
    with pytest.raises(DatasetNotFoundError, match=r"calexp \[detector=4, visit=7\]"):
        repo.exposure_header("calexp", visit=7, detector=4)
    repo.put({"a": 1}, "truth_wcs", visit=7, detector=4)
    with pytest.raises(StorageTypeError, match="not an exposure"):
        repo.exposure_header("truth_wcs", visit=7, detector=4)


def test_region_of_an_exposure_written_without_corners_comes_from_its_wcs(repo, make_exposure):
    exposure = make_exposure()
    repo.put(exposure, "calexp", visit=7, detector=4)
    region = dataset_region(repo, "calexp", {"visit": 7, "detector": 4})
    # as written before exposures stored their corners
    attrs_file = Path(repo.uri("calexp", visit=7, detector=4)) / "zarr.json"
    document = json.loads(attrs_file.read_text())
    del document["attributes"]["sky_corners"]
    attrs_file.write_text(json.dumps(document))
    assert repo.exposure_header("calexp", visit=7, detector=4).sky_corners is None
    from_wcs = dataset_region(repo, "calexp", {"visit": 7, "detector": 4})
    np.testing.assert_allclose(from_wcs.polygon.vertices, region.polygon.vertices, atol=1e-14)
    expected = SkyPolygon.from_wcs(exposure.wcs, exposure.image.shape)
    np.testing.assert_allclose(region.polygon.vertices, expected.vertices, atol=1e-14)
    assert region.band == "r"


def test_region_band_comes_from_the_data_id_first(repo, make_exposure):
    exposure = make_exposure()  # visit info says r
    repo.put(exposure, "template", tract=0, patch=1, band="g")
    assert dataset_region(repo, "template", {"tract": 0, "patch": 1, "band": "g"}).band == "g"


def test_region_of_an_exposure_without_wcs_names_it(repo, make_exposure):
    exposure = make_exposure()
    exposure.wcs = None
    repo.put(exposure, "calexp", visit=7, detector=4)
    with pytest.raises(DatasetError, match=r"calexp \[detector=4, visit=7\]: has no WCS"):
        RegionReader(repo).read("calexp", [{"visit": 7, "detector": 4}])


def test_region_reader_reads_each_header_once(repo, make_exposure):
    for detector in range(3):
        repo.put(make_exposure(detector=detector), "calexp", visit=7, detector=detector)
    reader = RegionReader(repo, threads=4)
    ids = [{"visit": 7, "detector": d} for d in (2, 0, 1)]
    first = reader.read("calexp", ids)
    repo.remove("calexp", visit=7, detector=0)  # cached: not read again within the run
    assert reader.read("calexp", ids) == first
    assert reader.can_read("calexp") and not reader.can_read("truth_wcs")


def test_not_produced_records_are_listed_and_removed(repo):
    repo.mark_not_produced("stars", provenance={"stage": "calibrate"}, visit=3, detector=1)
    repo.mark_not_produced("stars", visit=3, detector=0)
    assert repo.not_produced_ids("stars") == [
        {"visit": 3, "detector": 0},
        {"visit": 3, "detector": 1},
    ]
    assert repo.not_produced_ids("stars", detector=1) == [{"visit": 3, "detector": 1}]
    assert not repo.exists("stars", visit=3, detector=1) and repo.data_ids("stars") == []
    repo.remove("stars", visit=3, detector=1)
    assert repo.not_produced_ids("stars") == [{"visit": 3, "detector": 0}]
    with pytest.raises(DatasetNotFoundError):
        repo.remove("stars", visit=3, detector=1)
