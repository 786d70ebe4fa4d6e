"""`apflow.run("calibrate", ...)` on a small simulated repository, in process."""

from __future__ import annotations

import numpy as np
import pytest

from apflow import run
from apflow.io import Repository
from apflow.sim import simulate

OUTPUTS = ("calexp", "calexp_background", "stars", "psf_stars", "astrom_matches", "photom_matches")


@pytest.fixture(scope="module")
def repo_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("calibrate") / "repo")
    # one visit, the central and a corner CCD; a star-rich field without the fixed sky pattern
    # (no sky frames in this repository), see test_calibrate_image.py
    simulate(
        url,
        camera="mini",
        n_visits=1,
        seed=3,
        detectors=[4, 0],
        coadds=False,
        star_density=60_000.0,
        star_mag_range=(14.0, 21.5),
        sky_pattern_rms=0.0,
    )
    return url


def test_calibrate_workflow_writes_every_output(repo_url):
    summary = run("calibrate", repo_url, scheduler="synchronous", progress=False)
    assert summary.ok, summary.as_table()
    assert summary.count("done") == 2
    repo = Repository(repo_url)
    for name in OUTPUTS:
        assert len(repo.data_ids(name)) == 2, name
    truth = repo.get("truth_exposures").set_index("detector")
    for result in summary.results:
        detector = result["data_id"]["detector"]
        calexp = repo.get("calexp", visit=1, detector=detector)
        assert calexp.metadata["BUNIT"] == "nJy" and calexp.photo_calib.calibration_mean == 1.0
        zero_point = result["summary"]["zero_point"]
        assert zero_point == pytest.approx(calexp.metadata["zero_point"])
        # the default reference catalog's 1.5% errors allow a few mmag
        assert abs(zero_point - truth.loc[detector, "zero_point"]) < 0.01
        assert result["summary"]["failure"] is None
        stars = repo.get("stars", visit=1, detector=detector)
        assert np.isfinite(stars[["ra", "dec", "psf_flux_njy"]].to_numpy()).all()


def test_failures_are_reported_or_written_as_partial_outputs(repo_url):
    impossible = {"calibrate.astrometry.min_matches": 100_000}
    summary = run(
        "calibrate", repo_url, config=impossible, redo=True, scheduler="synchronous", progress=False
    )
    assert not summary.ok and summary.count("failed") == 2
    assert all("AstrometryError" in f.error for f in summary.failures)

    partial = {**impossible, "calibrate.raise_on_failure": False}
    summary = run(
        "calibrate", repo_url, config=partial, redo=True, scheduler="synchronous", progress=False
    )
    assert summary.ok and summary.count("done") == 2
    assert all(r["summary"]["failure"] == "AstrometryError" for r in summary.results)
    assert all(
        set(r["not_produced"]) == {"astrom_matches", "photom_matches"} for r in summary.results
    )
    calexp = Repository(repo_url).get("calexp", visit=1, detector=4)
    assert calexp.metadata["BUNIT"] == "count" and calexp.wcs is None and calexp.psf is not None
