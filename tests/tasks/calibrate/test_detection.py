"""Detection: completeness, false detections, saturated stars, bad columns, mask planes."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.core import Exposure, GaussianPsf, MaskPlanes
from apflow.errors import PsfError
from apflow.tasks.calibrate import DetectionConfig, DetectSourcesTask
from apflow.tasks.calibrate.detection import SOURCE_COLUMNS
from tests.tasks.calibrate.conftest import (
    clear_of_brighter,
    expected_snr,
    match_to_truth,
)


@pytest.fixture(scope="module")
def matches(star_field, characterised):
    """Truth index of each detection (-1 if none within 3 px), and detected flag of each star."""
    sources = characterised.detection.sources
    index, _ = match_to_truth(sources["x"], sources["y"], star_field.truth, radius=3.0)
    detected = np.zeros(len(star_field.truth), bool)
    detected[index[index >= 0]] = True
    return index, detected


def test_catalog_has_the_documented_columns_and_types(characterised):
    sources = characterised.detection.sources
    assert list(sources.columns) == list(SOURCE_COLUMNS)
    assert sources["id"].is_unique and sources["id"].min() == 1
    assert sources["x"].dtype == np.float64 and sources["flag_blended"].dtype == bool
    assert (sources["footprint_npix"] > 0).all()


def test_completeness_above_10_sigma_is_at_least_99_percent(star_field, matches):
    truth = star_field.truth
    _, detected = matches
    height, width = star_field.exposure.shape
    target = (
        (expected_snr(star_field) > 10)
        & clear_of_brighter(truth, radius=10.0)
        & (np.abs(truth["x"] - star_field.bad_column) > 2)
        & truth["x"].between(6, width - 7)
        & truth["y"].between(6, height - 7)
    )
    assert target.sum() > 900
    assert detected[target].mean() >= 0.99


def test_false_detections_are_rare(characterised, matches):
    index, _ = matches
    assert (index < 0).sum() <= max(3, 0.002 * len(index))


def test_pure_noise_gives_almost_no_detections():
    rng = np.random.default_rng(8)
    exposure = Exposure(
        image=rng.normal(0.0, 30.0, (1024, 1024)), variance=np.full((1024, 1024), 900.0)
    )
    result = DetectSourcesTask().run(exposure, psf_fwhm=3.5)
    assert len(result.sources) <= 2


def test_each_saturated_star_gives_one_flagged_detection(star_field, characterised, matches):
    sources = characterised.detection.sources
    index, _ = matches
    for k in np.nonzero(star_field.truth["saturated"].to_numpy())[0]:
        star = star_field.truth.iloc[k]
        near = np.hypot(sources["x"] - star.x, sources["y"] - star.y)
        assert (near < 5).sum() == 1
        assert sources.loc[near < 5, "flag_footprint_saturated"].all()
        # Nothing spurious on its plateau, bleed trail or wings: every other detection within
        # 60 px is a real star.
        assert (index[(near < 60) & (near >= 5)] >= 0).all()


def test_bad_column_creates_no_detections(star_field, characterised, matches):
    sources = characterised.detection.sources
    index, _ = matches
    on_column = np.abs(sources["x"] - star_field.bad_column) < 3
    assert (index[on_column] >= 0).all()


def test_detected_and_edge_planes_are_set(characterised):
    result = characterised.detection
    mask = result.exposure.mask
    detected = (mask & int(MaskPlanes.DETECTED)) != 0
    assert detected[result.sources["peak_y"], result.sources["peak_x"]].all()
    assert np.array_equal(detected, result.footprints > 0)
    edge = (mask & int(MaskPlanes.EDGE)) != 0
    assert edge[0].all() and edge[:, -1].all() and not edge[mask.shape[0] // 2, mask.shape[1] // 2]
    assert 0.005 < detected.mean() < 0.3


def test_input_exposure_is_not_modified(star_field, characterised):
    assert not ((star_field.exposure.mask & int(MaskPlanes.DETECTED)) != 0).any()
    assert characterised.detection.exposure.image is characterised.background.exposure.image


def test_centroids_are_good_to_a_fraction_of_a_pixel(star_field, characterised, matches):
    sources = characterised.detection.sources
    index, _ = matches
    ok = (index >= 0) & ~sources["flag_blended"].to_numpy() & (sources["peak_significance"] > 50)
    truth = star_field.truth.iloc[index[ok]]
    dx = sources["x"].to_numpy()[ok] - truth["x"].to_numpy()
    dy = sources["y"].to_numpy()[ok] - truth["y"].to_numpy()
    assert np.sqrt(np.mean(dx**2 + dy**2)) < 0.2


def test_default_kernel_comes_from_the_exposure_psf():
    rng = np.random.default_rng(9)
    exposure = Exposure(
        image=rng.normal(0.0, 1.0, (64, 64)), variance=np.ones((64, 64)), psf=GaussianPsf(fwhm=5.0)
    )
    assert DetectSourcesTask().run(exposure).psf_sigma == pytest.approx(5.0 / 2.3548, rel=1e-3)


def test_invalid_psf_width_raises_psf_error():
    exposure = Exposure(image=np.zeros((32, 32)), variance=np.ones((32, 32)))
    with pytest.raises(PsfError):
        DetectSourcesTask().run(exposure, psf_fwhm=float("nan"))


def test_non_finite_pixels_are_ignored_like_bad_ones():
    rng = np.random.default_rng(10)
    star = 500 * GaussianPsf(fwhm=4.0).compute_image(40, 40, 21)
    image = rng.normal(0.0, 1.0, (80, 80)) + np.pad(star, (30, 29))
    variance = np.ones((80, 80))
    image[10, 10] = np.nan  # far from the star
    variance[60, 20] = np.inf
    image[41, 44] = np.nan  # on the star's wing
    exposure = Exposure(image=image.astype(np.float32), variance=variance.astype(np.float32))
    result = DetectSourcesTask().run(exposure, psf_fwhm=4.0)
    assert len(result.sources) == 1
    star = result.sources.iloc[0]
    assert abs(star["x"] - 40) < 0.5 and abs(star["y"] - 40) < 0.5
    assert np.isfinite(result.sources[["x", "y", "peak_significance"]].to_numpy()).all()


def test_higher_threshold_finds_fewer_sources(characterised):
    exposure = characterised.background.exposure
    strict = DetectSourcesTask(DetectionConfig(threshold=20.0)).run(exposure)
    assert 0 < len(strict.sources) < len(characterised.detection.sources)
    assert (strict.sources["peak_significance"] > 20).all()
