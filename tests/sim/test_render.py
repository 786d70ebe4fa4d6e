"""Rendering of one (visit, detector): determinism, flux and noise truth, masks, snaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.core import MaskPlanes, ab_mag_to_njy
from apflow.sim import SkyModel, counts_per_njy, pixel_to_sky, render_exposure


def _star_grid(sky, visit, detector, mags, spacing=100):
    """A catalog of isolated stars on a pixel grid of one detector."""
    det = sky.camera[detector]
    n = len(mags)
    side = int(np.ceil(np.sqrt(n)))
    ix, iy = np.meshgrid(np.arange(side), np.arange(side))
    # sub-pixel offsets exercise the sub-pixel centring
    x = 120 + spacing * ix.ravel()[:n] + np.linspace(-0.45, 0.45, n)
    y = 120 + spacing * iy.ravel()[:n] + np.linspace(0.4, -0.4, n)
    ra, dec = pixel_to_sky(
        sky.camera, det, x, y, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle
    )
    flux = np.asarray(ab_mag_to_njy(np.asarray(mags)))
    cat = pd.DataFrame(
        {
            "id": np.arange(1, n + 1),
            "ra": ra,
            "dec": dec,
            "is_star": True,
            "r_flux": flux,
            "half_light_radius": 0.0,
            "axis_ratio": 1.0,
            "position_angle": 0.0,
        }
    )
    return cat, x, y


@pytest.fixture(scope="module")
def noisy(sky, visits):
    return render_exposure(sky, visits[0], 4)


def test_same_seed_gives_identical_pixels(sky, visits, noisy):
    again = render_exposure(SkyModel.generate("mini", seed=3), visits[0], 4)
    assert np.array_equal(noisy.exposure.image, again.exposure.image)
    assert np.array_equal(noisy.exposure.mask, again.exposure.mask)
    assert np.array_equal(noisy.exposure.variance, again.exposure.variance)


def test_result_does_not_depend_on_render_order(sky, visits, noisy):
    render_exposure(sky, visits[1], 0)  # render something else first
    again = render_exposure(sky, visits[0], 4)
    assert np.array_equal(noisy.exposure.image, again.exposure.image)


def test_different_seed_gives_different_pixels(visits, noisy):
    other = SkyModel.generate("mini", seed=4)
    assert not np.array_equal(
        noisy.exposure.image, render_exposure(other, visits[0], 4).exposure.image
    )


def test_star_flux_in_large_aperture_matches_truth(sky, visits):
    visit = visits[0]
    mags = np.linspace(17.0, 22.0, 49)
    cat, x, y = _star_grid(sky, visit, 4, mags)
    sim = render_exposure(sky, visit, 4, catalog=cat, noise=False, saturate=False, defects=False)
    net = sim.exposure.image.astype(float) - sim.background
    yy, xx = np.mgrid[0 : net.shape[0], 0 : net.shape[1]]
    expected = cat["r_flux"].to_numpy() * counts_per_njy(visit.zero_point)
    for xi, yi, counts in zip(x, y, expected, strict=True):
        aperture = (xx - xi) ** 2 + (yy - yi) ** 2 < 30.0**2
        assert net[aperture].sum() == pytest.approx(counts, rel=0.01)


def test_stored_psf_model_matches_rendered_star(sky, visits):
    visit = visits[1]
    cat, x, y = _star_grid(sky, visit, 2, [18.0])
    sim = render_exposure(sky, visit, 2, catalog=cat, noise=False, saturate=False, defects=False)
    counts = cat["r_flux"].iloc[0] * counts_per_njy(visit.zero_point)
    stamp = sim.exposure.psf.compute_image(x[0], y[0], 31)
    cx, cy = int(round(x[0])), int(round(y[0]))
    rendered = (sim.exposure.image - sim.background)[cy - 15 : cy + 16, cx - 15 : cx + 16] / counts
    assert np.abs(rendered - stamp).max() < 2e-3 * stamp.max()


def test_pixel_noise_matches_variance_plane(noisy):
    good = noisy.exposure.mask == 0
    pull = (noisy.exposure.image - noisy.model)[good] / np.sqrt(noisy.exposure.variance[good])
    assert abs(np.std(pull) - 1.0) < 0.03
    assert abs(np.mean(pull)) < 0.01


def test_variance_is_sky_plus_source_plus_read_noise(sky, noisy):
    expected = noisy.model / sky.config.gain + sky.config.read_noise**2
    assert np.allclose(noisy.exposure.variance, expected, rtol=1e-5)


def test_bad_columns_and_edges_are_masked(sky, noisy):
    exp = noisy.exposure
    for col, start in sky.bad_columns(4):
        assert np.all(exp.mask[start:, col] & MaskPlanes.BAD)
        assert np.all(exp.image[start:, col] == 0)
    e = sky.config.edge_width
    assert np.all(exp.mask[:e, :] & MaskPlanes.EDGE) and np.all(exp.mask[:, -e:] & MaskPlanes.EDGE)
    assert not np.any(exp.mask[e:-e, e:-e] & MaskPlanes.EDGE)


def test_saturated_stars_are_clipped_and_bleed(sky, visits):
    visit = visits[0]
    cat, x, y = _star_grid(sky, visit, 4, [13.5, 20.0], spacing=400)
    sim = render_exposure(sky, visit, 4, catalog=cat, defects=False)
    exp = sim.exposure
    sat = exp.mask_of("SAT")
    assert exp.image.max() == pytest.approx(sky.config.saturation)
    assert np.all(exp.image[sat] == np.float32(sky.config.saturation))
    cx, cy = int(round(x[0])), int(round(y[0]))
    assert sat[cy, cx]
    column_run = sat[:, cx].sum()
    row_run = sat[cy, :].sum()
    assert column_run > 2 * row_run  # a bleed trail along the column
    assert not sat[int(round(y[1])), int(round(x[1]))]


def test_snaps_split_the_exposure(sky, visits):
    # movers are somewhere else in each snap: the static sky is what splits evenly
    full = render_exposure(sky, visits[0], 4, noise=False, dynamic=False)
    snap0 = render_exposure(sky, visits[0], 4, snap=0, n_snaps=2, dynamic=False)
    snap1 = render_exposure(sky, visits[0], 4, snap=1, n_snaps=2, dynamic=False)
    # stamp sizes follow the counts, so the faint wings differ slightly between snap and visit
    assert np.allclose(snap0.model * 2, full.model, rtol=3e-3)
    assert not np.array_equal(snap0.exposure.image, snap1.exposure.image)
    assert snap0.exposure.visit_info.exposure_time == pytest.approx(visits[0].exposure_time / 2)
    assert snap0.exposure.visit_info.mjd < snap1.exposure.visit_info.mjd


def test_exposure_carries_visit_info_and_no_photo_calib(visits, noisy):
    exp = noisy.exposure
    info = exp.visit_info
    assert exp.detector == 4 and exp.photo_calib is None
    assert info.visit == visits[0].visit and info.band == "r" and info.physical_filter == "r_sim"
    assert info.exposure_time == 30.0 and 1.0 <= info.airmass <= 1.6
    assert info.boresight_ra == visits[0].boresight_ra
    assert exp.wcs is not None and exp.psf is not None


def test_psf_fwhm_truth_is_in_the_seeing_range(sky, visits, noisy):
    fwhm = noisy.truth["psf_fwhm_center"]
    lo, hi = sky.config.seeing_range_arcsec
    assert lo <= fwhm <= hi * (1 + sky.config.psf_fwhm_variation + 0.1)
    assert noisy.truth["psf_fwhm_min"] <= fwhm <= noisy.truth["psf_fwhm_max"]


def test_galaxy_flux_is_conserved(sky, visits):
    visit = visits[0]
    cat, x, y = _star_grid(sky, visit, 4, [19.0, 19.5, 20.0], spacing=300)
    cat["is_star"] = False
    cat["half_light_radius"] = [0.5, 1.0, 2.0]
    cat["axis_ratio"] = [0.5, 0.8, 0.3]
    cat["position_angle"] = [10.0, 80.0, 140.0]
    sim = render_exposure(sky, visit, 4, catalog=cat, noise=False, saturate=False, defects=False)
    net = sim.exposure.image.astype(float) - sim.background
    expected = cat["r_flux"].to_numpy() * counts_per_njy(visit.zero_point)
    assert net.sum() == pytest.approx(expected.sum(), rel=2e-3)
