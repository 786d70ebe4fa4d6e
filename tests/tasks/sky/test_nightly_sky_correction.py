"""``nightly`` sky-corrects before calibrating, and still runs where no sky frame was built.

One small simulation (mini camera, detectors 3 and 4, 3 visits, seed 3, the default 2% sky
pattern), copied twice: ``without`` runs ``nightly`` on visit 1 as it is; ``with`` first builds
sky frames from the 3 visits (``sky_frame``), then runs ``nightly`` on visit 1. Both through
``apflow.run`` on Dask's synchronous scheduler (the engine's own graph, one process).

What calibrate's background had to model shows whether it got the corrected pixels: its
32-px ``calexp_background`` bins, high-passed (minus a Gaussian smoothing of 4 bins) and
divided by the sky level, are regressed on the truth pattern's 32-px bins high-passed the same
way. Measured: slope 0.99-1.00 without sky frames (calibrate's background absorbs the whole
pattern), 0.02-0.035 with them (the sky frame had removed it).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from apflow import run
from apflow.io import Repository
from apflow.sim import simulate

DETECTORS = (3, 4)
VISIT = 1


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("nightly-sky") / "sim")
    simulate(url, camera="mini", n_visits=3, seed=3, detectors=list(DETECTORS), coadds=False)
    return url


@pytest.fixture(scope="module")
def without_frames(simulated, tmp_path_factory) -> Repository:
    url = str(tmp_path_factory.mktemp("nightly-without") / "repo")
    shutil.copytree(simulated, url)
    summary = run("nightly", url, where=f"visit = {VISIT}", scheduler="synchronous", progress=False)
    assert summary.ok, summary.as_table()
    return Repository(url)


@pytest.fixture(scope="module")
def with_frames(simulated, tmp_path_factory) -> Repository:
    url = str(tmp_path_factory.mktemp("nightly-with") / "repo")
    shutil.copytree(simulated, url)
    frames = run("sky_frame", url, scheduler="synchronous", progress=False)
    assert frames.ok, frames.as_table()
    summary = run("nightly", url, where=f"visit = {VISIT}", scheduler="synchronous", progress=False)
    assert summary.ok, summary.as_table()
    return Repository(url)


def _pattern_in_calibrate_background(repo: Repository, detector: int) -> float:
    """Slope of calibrate's small-scale background (fraction of sky) on the truth pattern."""
    values = np.asarray(repo.get("calexp_background", visit=VISIT, detector=detector)["values"])
    background = values / np.median(values) - 1.0
    truth = repo.get("truth_sky_frame", detector=detector)["pattern_binned32"]
    pattern = np.asarray(truth, dtype=np.float64)
    assert background.shape == pattern.shape  # both 32-px bins of a 1024 x 1024 CCD
    hp_background = (background - gaussian_filter(background, 4.0, mode="nearest")).ravel()
    hp_pattern = (pattern - gaussian_filter(pattern, 4.0, mode="nearest")).ravel()
    return float(np.dot(hp_pattern, hp_background) / np.dot(hp_pattern, hp_pattern))


def test_without_sky_frames_nightly_calibrates_every_ccd_from_the_unchanged_exposure(
    without_frames,
):
    repo = without_frames
    for detector in DETECTORS:
        raw = repo.get("post_isr", visit=VISIT, detector=detector)
        passed = repo.get("post_isr_skycorr", visit=VISIT, detector=detector)
        assert np.array_equal(passed.image, raw.image)
        record = passed.metadata["sky_correction"]
        assert record["applied"] is False and "no sky frame" in record["reason"]
        calexp = repo.get("calexp", visit=VISIT, detector=detector)
        assert np.isfinite(calexp.metadata["zero_point"])
        assert repo.exists("dia_source", visit=VISIT, detector=detector)
    # no sky frame: nothing was masked, modelled or fitted (the copy is the whole cost)
    for dataset_type in ("sky_object_mask", "focal_plane_partial", "sky_frame_samples"):
        assert repo.data_ids(dataset_type) == [], dataset_type
    assert not repo.exists("sky_scale", visit=VISIT)
    assert not repo.exists("focal_plane_background", visit=VISIT)
    # calibrate's own background absorbed the whole pattern
    for detector in DETECTORS:
        assert _pattern_in_calibrate_background(repo, detector) > 0.9


def test_with_sky_frames_calibrate_gets_the_corrected_exposure(with_frames):
    repo = with_frames
    scale = repo.get("sky_scale", visit=VISIT)
    assert scale["detectors"] == list(DETECTORS)
    assert scale["scale"] == pytest.approx(1.0, abs=0.05)
    for detector in DETECTORS:
        record = repo.get("post_isr_skycorr", visit=VISIT, detector=detector).metadata
        assert record["sky_correction"] == {
            "applied": True,
            "scale": scale["scale"],
            "physical_filter": "r_sim",
        }
        calexp = repo.get("calexp", visit=VISIT, detector=detector)
        assert np.isfinite(calexp.metadata["zero_point"])
        # the calexp says the correction was applied (calibrate used to overwrite it)
        assert calexp.metadata["sky_correction"] == record["sky_correction"]
        # the sky frame removed the pattern before calibrate: little is left for its background
        assert _pattern_in_calibrate_background(repo, detector) < 0.1


@pytest.fixture(scope="module")
def one_frame_on_a_cluster(simulated, tmp_path_factory) -> Repository:
    """A sky frame for detector 3 only; ``sky_correct`` of visit 1 on a local cluster (a
    scheduler and two worker processes on 127.0.0.1)."""
    url = str(tmp_path_factory.mktemp("skycorr-one-frame") / "repo")
    shutil.copytree(simulated, url)
    frames = run("sky_frame", url, where="detector = 3", scheduler="synchronous", progress=False)
    assert frames.ok, frames.as_table()
    summary = run("sky_correct", url, where=f"visit = {VISIT}", workers=2, progress=False)
    assert summary.ok, summary.as_table()
    return Repository(url)


def test_on_a_cluster_only_ccds_with_a_sky_frame_are_masked_and_corrected(
    one_frame_on_a_cluster,
):
    repo = one_frame_on_a_cluster
    # detector 4 has no sky frame: never masked (no sky_object_mask, no marker), copied unchanged
    assert repo.data_ids("sky_object_mask", visit=VISIT) == [{"visit": VISIT, "detector": 3}]
    assert repo.not_produced_ids("sky_object_mask") == []
    raw = repo.get("post_isr", visit=VISIT, detector=4)
    passed = repo.get("post_isr_skycorr", visit=VISIT, detector=4)
    assert np.array_equal(passed.image, raw.image)
    assert passed.metadata["sky_correction"]["applied"] is False
    # detector 3 alone sets the visit's scale and is corrected with it
    scale = repo.get("sky_scale", visit=VISIT)
    assert scale["detectors"] == [3]
    assert scale["scale"] == pytest.approx(1.0, abs=0.1)
    corrected = repo.get("post_isr_skycorr", visit=VISIT, detector=3)
    assert corrected.metadata["sky_correction"] == {
        "applied": True,
        "scale": scale["scale"],
        "physical_filter": "r_sim",
    }
    assert not np.array_equal(corrected.image, repo.get("post_isr", visit=VISIT, detector=3).image)
