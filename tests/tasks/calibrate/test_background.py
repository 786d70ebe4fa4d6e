"""Background: clipped bin statistics, smooth interpolation, subtraction, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apflow.core import Exposure, MaskPlanes
from apflow.errors import TaskError
from apflow.sim.render import galaxy_shape_matrices, render_galaxies
from apflow.sim.render import render_stars as render_point_sources
from apflow.tasks.calibrate import (
    BackgroundConfig,
    BackgroundModel,
    CalibrateImageConfig,
    DetectSourcesTask,
    SubtractBackgroundTask,
    estimate_background,
)
from apflow.tasks.stats import clipped_stats
from tests.tasks.calibrate.conftest import READ_NOISE, SKY_LEVEL, sky_model, truth_psf


def sky_only(
    width: int, height: int, seed: int = 0, plane: bool = False
) -> tuple[Exposure, np.ndarray]:
    """Noisy sky without stars: the star-field sky, or a plane of fixed slope per pixel."""
    if plane:
        y, x = np.mgrid[0:height, 0:width]
        sky = SKY_LEVEL + 0.02 * x - 0.01 * y
    else:
        sky = sky_model(width, height)
    rng = np.random.default_rng(seed)
    image = rng.poisson(sky) + rng.normal(0, READ_NOISE, sky.shape)
    variance = sky + READ_NOISE**2
    return Exposure(image=image, variance=variance), sky


def reference_clipped_mean(row: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3) -> float:
    """The textbook iteration, one row at a time."""
    row = row[np.isfinite(row)].astype(np.float64)
    q25, center, q75 = np.percentile(row, [25, 50, 75])
    sigma = 0.7413 * (q75 - q25)
    for _ in range(n_iter):
        kept = row[np.abs(row - center) <= n_sigma * sigma]
        center, sigma = kept.mean(), kept.std(ddof=1)
    return float(center)


def test_meanclip_bins_match_the_textbook_iteration():
    rng = np.random.default_rng(1)
    values = rng.normal(1000.0, 30.0, (20, 4000)).astype(np.float32)
    values[:, :200] += rng.exponential(3000.0, (20, 200)).astype(np.float32)  # sources
    values[::2, -500:] = np.nan  # masked pixels
    clipped = clipped_stats(values, method="meanclip")  # what estimate_background uses
    mean, sigma, count = clipped.mean, clipped.std, clipped.n_kept
    expected = [reference_clipped_mean(row) for row in values]
    assert np.allclose(mean, expected, atol=1e-3)
    assert np.allclose(sigma, 30.0, rtol=0.05)
    assert (count > 3000).all()


def test_sky_gradient_is_recovered_within_the_noise():
    exposure, sky = sky_only(1024, 1024)
    result = SubtractBackgroundTask().run(exposure)
    residual = result.background_image - sky
    noise = np.sqrt(SKY_LEVEL + READ_NOISE**2)
    # The mean background is known to the noise of all the pixels together ...
    assert abs(residual.mean()) < 4 * noise / np.sqrt(residual.size)
    # ... and each bin to the noise of its 128 x 128 pixels (the interpolation adds little).
    assert residual.std() < 2 * noise / 128
    assert abs(np.mean(result.exposure.image)) < 4 * noise / np.sqrt(residual.size) + 0.01


def test_star_field_background_is_unbiased_once_sources_are_masked(star_field, characterised):
    first = characterised.background.background_image - star_field.sky
    final = characterised.final_background.background_image - star_field.sky
    noise = np.sqrt(SKY_LEVEL + READ_NOISE**2)
    n_bins = characterised.final_background.background.values.size
    # Star light biases the first pass; with DETECTED masked the bias falls to the noise.
    assert first.mean() > 0.3
    assert abs(final.mean()) < 4 * noise / 128 / np.sqrt(n_bins)
    assert final.std() < 2 * noise / 128


def test_previous_background_is_added_back_so_the_result_is_the_total(star_field, characterised):
    total = (
        characterised.final_background.exposure.image
        + characterised.final_background.background_image
    )
    assert np.allclose(total, star_field.exposure.image, atol=0.05)


def test_masked_pixels_are_ignored_and_empty_bins_filled():
    exposure, sky = sky_only(512, 512, seed=2, plane=True)
    exposure.image[:150, :150] = 1e6  # garbage under a mask covering whole bins
    exposure.mask[:150, :150] = int(MaskPlanes.BAD)
    background = estimate_background(exposure.image, exposure.mask, BackgroundConfig())
    assert np.isfinite(background.values).all()
    assert background.n_pixels[0, 0] == 0 and np.isnan(background.sigma[0, 0])
    # Filled from the neighbours: off by about the sky's change over a bin there, no more.
    assert np.abs(background.image() - sky).max() < 0.03 * 128 * 2


def test_fully_masked_image_raises_task_error():
    exposure, _ = sky_only(256, 256)
    exposure.mask[:] = int(MaskPlanes.NO_DATA)
    with pytest.raises(TaskError, match="unmasked"):
        SubtractBackgroundTask().run(exposure)


@pytest.mark.parametrize("shape", [(300, 200), (100, 64), (1000, 260)])
@pytest.mark.parametrize("interpolation", ["akima", "cubic", "linear", "constant"])
def test_any_image_size_and_interpolation_gives_a_full_image(shape, interpolation):
    exposure, sky = sky_only(shape[1], shape[0], seed=3, plane=True)
    config = BackgroundConfig(interpolation=interpolation)
    result = SubtractBackgroundTask(config).run(exposure)
    assert result.background_image.shape == shape
    # Every scheme but "constant" reproduces a plane (and extrapolates it to the edges).
    tolerance = 0.03 * max(shape) if interpolation == "constant" else 2.0
    assert np.abs(result.background_image - sky).max() < tolerance


def test_every_bin_holds_pixels_of_the_image():
    """An LSSTCam CCD's 4004 rows in 32 px bins: 122 bins of 33 px, none past the edge.

    Bins of ``ceil(4004 / 125)`` px made 125 of them end at row 4125: the last 3 held no pixel
    and were filled from their neighbours, at centres outside the image (4014-4048).
    """
    image = np.random.default_rng(1).normal(0.0, 1.0, (4004, 64)).astype(np.float32)
    model = estimate_background(image, None, BackgroundConfig(bin_size=32))
    assert model.values.shape == (122, 2)
    assert (model.n_pixels > 0).all()
    assert model.y_centers.max() < 4004 and np.all(np.diff(model.y_centers) > 0)


def test_background_model_round_trips_through_json():
    exposure, _ = sky_only(512, 384, seed=4)
    model = SubtractBackgroundTask().run(exposure).background
    restored = BackgroundModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.array_equal(restored.image(), model.image())
    assert np.array_equal(restored.values, model.values)


def test_scaled_model_scales_the_image():
    exposure, _ = sky_only(256, 256, seed=5)
    model = SubtractBackgroundTask().run(exposure).background
    assert np.allclose(model.scaled(2.5).image(), 2.5 * model.image(), rtol=1e-6)


def bright_object_scene(kind: str, counts: float, seed: int = 0) -> tuple[Exposure, float]:
    """A 512 x 512 flat sky of SKY_LEVEL with one bright object at the centre.

    ``galaxy``: the simulator's PSF-convolved exponential, half-light radius 2.5" (12.5 px at
    0.2"/px), axis ratio 0.5; ``star``: a PSF. The PSF is the star field's (FWHM 3.5 px).
    """
    size, centre = 512, 256.3
    psf = truth_psf(size, size)
    light = np.zeros((size, size))
    if kind == "galaxy":
        shape = galaxy_shape_matrices(
            np.array([2.5]), np.array([0.5]), np.array([30.0]), np.eye(2) * 0.2
        )
        render_galaxies(
            light, np.array([centre]), np.array([centre]), np.array([counts]), shape, psf
        )
    else:
        render_point_sources(light, np.array([centre]), np.array([centre]), np.array([counts]), psf)
    rng = np.random.default_rng(seed)
    model = SKY_LEVEL + light
    image = rng.poisson(model) + rng.normal(0.0, READ_NOISE, model.shape)
    variance = model + READ_NOISE**2
    return Exposure(image=image.astype(np.float32), variance=variance.astype(np.float32)), centre


@pytest.mark.parametrize(
    ("kind", "counts"),
    [("galaxy", 3.5e5), ("star", 1.7e5), ("star", 5.2e5)],
)
def test_final_background_does_not_oversubtract_around_bright_objects(kind, counts):
    """Calibrate's two background passes leave no negative halo around a bright object.

    3.5e5 counts is a 2e5 nJy galaxy at the simulator's r-band zero point (0.575 nJy per
    count); the stars are 1e5 and 3e5 nJy. The 5-sigma footprint stops where the galaxy's
    exponential wing is still ~30 counts/px: with only that masked, the 32 px bins around it
    took in ~10^4 counts of wing and the background was 13 counts/px too high 20-40 px from
    the galaxy (-8 nJy/px in the calexp: negative DiaSources in the difference image).
    Growing each footprint in proportion to its size leaves < 1 count/px; the bound is 5
    counts/px (3 nJy/px), in every annulus from 20 to 150 px, averaged over 3 noise draws.
    """
    cfg = CalibrateImageConfig()
    yy, xx = np.mgrid[:512, :512]
    annuli = ((20, 40), (40, 90), (90, 150))
    residuals = []
    for seed in range(3):
        exposure, centre = bright_object_scene(kind, counts, seed)
        first = SubtractBackgroundTask(cfg.background).run(exposure)
        detection = DetectSourcesTask(cfg.detection).run(
            first.exposure, psf_fwhm=cfg.initial_psf_fwhm
        )
        final = SubtractBackgroundTask(cfg.final_background).run(
            detection.exposure,
            previous_background=first.background,
            footprints=detection.footprints,
        )
        residual = SKY_LEVEL - final.background_image  # what the calexp keeps of the sky
        distance = np.hypot(xx - centre, yy - centre)
        residuals.append([residual[(distance >= lo) & (distance < hi)].mean() for lo, hi in annuli])
    mean = np.mean(residuals, axis=0)
    assert np.all(np.abs(mean) < 5.0), dict(zip(annuli, mean.round(2), strict=True))
