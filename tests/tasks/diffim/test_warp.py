"""Template warping: flux conservation, astrometry, variance, PSF and missing coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from apflow.core import Exposure, MaskPlanes, MoffatPsf
from apflow.sim.wcs import tan_wcs
from apflow.tasks.diffim import transform_psf_parameters, warp_planes, warp_to
from tests.tasks.diffim.diffim_data import TEMPLATE_SCALE, make_scene

SIZE = 512


@pytest.fixture(scope="module")
def clean_scene():
    """Noise-free science/template pair (the science is only used for its WCS)."""
    return make_scene(size=SIZE, n_stars=160, seed=11, noise=False, n_transients=0)


@pytest.fixture(scope="module")
def warped(clean_scene) -> Exposure:
    return warp_to(clean_scene.calexp.wcs, (SIZE, SIZE), clean_scene.templates)


def _isolated(x: np.ndarray, y: np.ndarray, size: int, margin: float, distance: float):
    d, _ = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)
    inside = (x > margin) & (x < size - margin) & (y > margin) & (y < size - margin)
    return np.flatnonzero(inside & (d[:, 1] > distance))


def _disc_sum(image: np.ndarray, x: float, y: float, radius: float) -> float:
    r = int(math.ceil(radius))
    ix, iy = round(x), round(y)
    yy, xx = np.mgrid[iy - r : iy + r + 1, ix - r : ix + r + 1]
    disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return float(image[yy[disc], xx[disc]].sum())


def _template_position(scene, ra: float, dec: float) -> tuple[int, float, float]:
    for index, tmpl in enumerate(scene.templates):
        u, v = tmpl.wcs.all_world2pix([ra], [dec], 0)
        if 30 < u[0] < tmpl.width - 30 and 30 < v[0] < tmpl.height - 30:
            return index, float(u[0]), float(v[0])
    return -1, math.nan, math.nan


def test_warp_conserves_flux_of_isolated_stars(clean_scene, warped):
    # the same aperture on the sky: radius 12 science pixels in both frames
    stars = _isolated(clean_scene.star_x, clean_scene.star_y, SIZE, 40, 35)
    ratios = []
    for i in stars:
        index, u, v = _template_position(
            clean_scene, clean_scene.star_ra[i], clean_scene.star_dec[i]
        )
        if index < 0:
            continue  # straddles a patch boundary: measured on one patch it would be cut
        before = _disc_sum(clean_scene.templates[index].image, u, v, 12 * 0.2 / TEMPLATE_SCALE)
        after = _disc_sum(warped.image, clean_scene.star_x[i], clean_scene.star_y[i], 12)
        ratios.append(after / before)
    ratios = np.array(ratios)
    assert ratios.size >= 10
    assert np.max(np.abs(ratios - 1)) < 0.005
    assert abs(np.mean(ratios) - 1) < 5e-4


def test_warped_stars_land_on_science_positions(clean_scene, warped):
    stars = _isolated(clean_scene.star_x, clean_scene.star_y, SIZE, 40, 35)
    stars = stars[clean_scene.star_flux[stars] > 3e4]
    offsets = []
    for i in stars:
        ix, iy = round(clean_scene.star_x[i]), round(clean_scene.star_y[i])
        stamp = warped.image[iy - 8 : iy + 9, ix - 8 : ix + 9].astype(float)
        yy, xx = np.mgrid[iy - 8 : iy + 9, ix - 8 : ix + 9]
        offsets.append(
            (
                (stamp * xx).sum() / stamp.sum() - clean_scene.star_x[i],
                (stamp * yy).sum() / stamp.sum() - clean_scene.star_y[i],
            )
        )
    offsets = np.array(offsets)
    assert len(offsets) >= 8
    # first moments of a truncated, slightly elliptical PSF are within ~0.01 px of the centre
    assert np.max(np.abs(offsets)) < 0.02


def test_warped_psf_matches_warped_stars(clean_scene, warped):
    stars = _isolated(clean_scene.star_x, clean_scene.star_y, SIZE, 40, 35)
    stars = stars[clean_scene.star_flux[stars] > 3e4]
    assert isinstance(warped.psf, MoffatPsf)
    assert len(stars) >= 5
    for i in stars[:5]:
        x, y = clean_scene.star_x[i], clean_scene.star_y[i]
        model = warped.psf.compute_image(x, y, 21)
        ix, iy = round(x), round(y)
        stamp = warped.image[iy - 10 : iy + 11, ix - 10 : ix + 11] / clean_scene.star_flux[i]
        # a 2.5-pixel FWHM template is not band-limited: resampling it aliases at ~1% of the peak
        assert np.max(np.abs(stamp - model)) < 0.015 * model.max()


def test_psf_transform_rotation_and_scale():
    theta, scale = math.radians(30.0), 1.25
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    fwhm, e1, e2 = transform_psf_parameters(3.0, 0.2, 0.0, scale * rotation)
    assert fwhm == pytest.approx(3.0 / scale)
    # an ellipse rotated by -theta: ellipticity angle rotates by -2 theta
    assert e1 == pytest.approx(0.2 * math.cos(2 * theta))
    assert e2 == pytest.approx(-0.2 * math.sin(2 * theta))


def test_uncovered_pixels_are_no_data(clean_scene):
    templates = clean_scene.templates[:3]  # drop the top-right patch
    out = warp_to(clean_scene.calexp.wcs, (SIZE, SIZE), templates)
    no_data = out.mask_of("NO_DATA")
    assert 0.05 < no_data.mean() < 0.6
    assert np.all(np.isnan(out.image[no_data])) and np.all(np.isnan(out.variance[no_data]))
    assert np.all(np.isfinite(out.image[~no_data]))
    assert out.metadata["template_coverage"] == pytest.approx(1 - no_data.mean())
    # the missing patch is top right in sky terms; its science pixels are the uncovered ones
    full = warp_to(clean_scene.calexp.wcs, (SIZE, SIZE), clean_scene.templates)
    same = ~no_data
    np.testing.assert_array_equal(out.image[same], full.image[same])


def test_no_overlap_gives_all_no_data(clean_scene):
    far = [
        Exposure(image=t.image, variance=t.variance, wcs=_shifted(t.wcs, 1.0), psf=t.psf)
        for t in clean_scene.templates
    ]
    out = warp_to(clean_scene.calexp.wcs, (SIZE, SIZE), far)
    assert out.metadata["template_coverage"] == 0.0
    assert out.psf is None
    assert np.all(out.mask & int(MaskPlanes.NO_DATA))


def _shifted(wcs: WCS, degrees: float) -> WCS:
    out = wcs.deepcopy()
    out.wcs.crval = out.wcs.crval + np.array([degrees, 0.0])
    out.wcs.set()
    return out


def test_warped_variance_matches_noise():
    """Per-pixel variance and the uncorrelated-equivalent variance of warped white noise."""
    rng = np.random.default_rng(4)
    shape = (420, 420)
    sigma = 3.0
    tmpl_wcs = tan_wcs(150.0, 2.0, (210.0, 210.0), TEMPLATE_SCALE)
    template = Exposure(
        image=sigma * rng.standard_normal(shape),
        variance=np.full(shape, sigma**2),
        wcs=tmpl_wcs,
        psf=MoffatPsf(fwhm=2.5),
    )
    sci = WCS(naxis=2)
    sci.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    sci.wcs.crval = [150.0 + 0.37 / 3600, 2.0 - 0.21 / 3600]
    sci.wcs.crpix = [192.5, 192.5]
    t = math.radians(0.6)
    s = 0.2 / 3600
    sci.wcs.cd = s * np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])
    planes = warp_planes(sci, (384, 384), [template], lanczos_order=5)
    image, var = planes.image.astype(float), planes.variance.astype(float)
    assert np.all(np.isfinite(image))
    # per pixel, by sub-pixel phase: the plane follows sum(w^2), which varies across the image
    low = var < np.percentile(var, 25)
    high = var > np.percentile(var, 75)
    for sel in (low, high):
        assert np.var(image[sel]) / np.mean(var[sel]) == pytest.approx(1.0, abs=0.04)
    # sums over 8x8 blocks see the uncorrelated-equivalent variance (64 x per-pixel of it)
    blocks = image.reshape(48, 8, 48, 8).sum(axis=(1, 3))
    expected = 64 * float(np.mean(planes.variance_uncorrelated))
    assert np.var(blocks) / expected == pytest.approx(1.0, abs=0.12)
