"""Detection: completeness, false detections, saturated stars, bad columns, mask planes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from apflow.core import Exposure, GaussianPsf, MaskPlanes
from apflow.errors import PsfError
from apflow.tasks.calibrate import DetectionConfig, DetectSourcesTask
from apflow.tasks.calibrate.detection import SOURCE_COLUMNS, grow_footprints, grow_mask
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


def brute_force_disk_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """OR of the mask shifted by every offset within ``radius`` (nothing enters from outside)."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius or abs(dy) >= height or abs(dx) >= width:
                continue
            src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            out[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)] |= src
    return out


@pytest.mark.parametrize("shape", [(40, 9), (9, 40), (60, 70)])
def test_grow_mask_is_a_disk_dilation_even_when_the_radius_exceeds_the_image(shape):
    """A radius beyond half the width (a cutout at the CCD edge) raised a broadcast error."""
    rng = np.random.default_rng(3)
    mask = rng.random(shape) < 0.01
    mask[shape[0] // 2, shape[1] // 2] = True
    for radius in (1, 4, 12):
        assert np.array_equal(grow_mask(mask, radius), brute_force_disk_dilation(mask, radius))


def disk(shape: tuple[int, int], x: float, y: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(xx - x, yy - y) <= radius


def test_grow_footprints_grows_in_proportion_to_the_semi_major_axis():
    shape = (300, 300)
    big = disk(shape, 100.0, 100.0, 20.0)  # semi-major axis 20 px
    small = disk(shape, 240.0, 240.0, 3.0)  # below the offset: left alone
    edge = disk(shape, 2.0, 250.0, 12.0)  # cut by the image edge
    detected = big | small | edge
    grown = grow_footprints(detected, scale=1.0, offset=5.0, max_radius=32)
    # the disc of radius 20 grown by about 20 - 5 = 15 px
    assert grown[100, 100 + 34] and not grown[100, 100 + 37]
    assert grown[100 - 34, 100] and not grown[100 - 37, 100]
    assert np.array_equal(grown & disk(shape, 240.0, 240.0, 30.0), small)
    assert grown[250, 2 + 12 + 4] and not grown[250, 2 + 12 + 12]  # grown, by less than 12
    assert not (detected & ~grown).any()
    # the same with the labels given, and the cap respected
    labels, _ = ndimage.label(detected, structure=np.ones((3, 3), bool))
    assert np.array_equal(grow_footprints(detected, 1.0, 5.0, 32, footprints=labels), grown)
    capped = grow_footprints(detected, scale=3.0, offset=5.0, max_radius=10)
    assert capped[100, 100 + 30] and not capped[100, 100 + 32]
    assert np.array_equal(grow_footprints(detected, scale=0.0), detected)


def test_grow_footprints_follows_an_elongated_footprint_along_its_major_axis():
    yy, xx = np.mgrid[:200, :200]
    ellipse = ((xx - 100) / 30.0) ** 2 + ((yy - 100) / 10.0) ** 2 <= 1  # a = 30, b = 10 px
    grown = grow_footprints(ellipse, scale=1.0, offset=5.0)
    # grown isotropically by ~25 px: the minor axis reaches ~35 px, the major ~55 px
    assert grown[100 + 33, 100] and not grown[100 + 38, 100]
    assert grown[100, 100 + 53] and not grown[100, 100 + 58]
