"""Which stars constrain the PSF-matching kernel: the brightest, and those near the edges too.

Residual lobes of bright stars were the largest class of false DiaSources on the simulator's
default mini camera (issue 7). Two causes in the choice of kernel stamps:

- a fraction of the candidates was held out of the fit to judge it, starting with the
  second-brightest star of the detector: a star the fit does not see keeps residuals of the
  spatial kernel's noise, which only its own photon noise hides for faint stars;
- a candidate's stamp grown by the kernel half-width had to lie inside the detector (~30 px),
  so the kernel was held at its value on the stamps' box over the outer tens of pixels,
  where the PSF keeps changing.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from apflow.tasks.diffim import SubtractImagesConfig, SubtractImagesTask
from apflow.tasks.diffim.basis import alard_lupton_basis
from apflow.tasks.diffim.candidates import CandidateSettings, select_candidates
from apflow.tasks.diffim.kernel_fit import kernel_stamps
from apflow.tasks.diffim.task import reserved_candidates
from tests.tasks.diffim.diffim_data import make_scene

DATA_ID = {"visit": 7, "detector": 4}


@pytest.mark.parametrize("n", [1, 7, 35, 41, 200])
@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.4])
def test_reserved_candidates_are_never_the_brightest(n, fraction):
    reserved = reserved_candidates(n, fraction)
    assert reserved.shape == (n,)
    assert reserved.sum() == int(round(fraction * n))
    # candidates come sorted brightest first: the brighter half is always fitted
    assert not reserved[: n // 2].any()


def test_reserved_candidates_none_and_many():
    assert not reserved_candidates(40, 0.0).any()
    assert not reserved_candidates(0, 0.15).any()
    # more than half reserved: the faintest ones
    np.testing.assert_array_equal(np.flatnonzero(reserved_candidates(10, 0.7)), np.arange(3, 10))


@pytest.fixture(scope="module")
def scene():
    # a PSF whose FWHM grows by 80% from the left to the right edge: a kernel held at its
    # value some way inside the detector leaves clear residuals on bright stars near the edge
    return make_scene(size=512, n_stars=220, seed=3, science_fwhm=(0.6, 1.1))


def _run(scene, **cfg):
    return SubtractImagesTask(SubtractImagesConfig(**cfg)).run(
        scene.calexp, scene.templates, data_id=DATA_ID
    )


@pytest.fixture(scope="module")
def default(scene):
    return _run(scene)


@pytest.fixture(scope="module")
def inner_candidates(scene):
    # the former rule: the whole stamp grown by the kernel half-width inside the detector
    return _run(scene, candidate_clean_radius_fwhm=100.0, candidate_edge_margin_fwhm=100.0)


def _edge_stars(scene, lo: float, hi: float, min_flux: float) -> np.ndarray:
    x, y, size = scene.star_x, scene.star_y, scene.calexp.width
    edge = np.minimum(np.minimum(x, size - 1 - x), np.minimum(y, size - 1 - y))
    others = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(others, np.inf)
    isolated = np.min(np.where(scene.star_flux[None, :] > 0.02 * scene.star_flux[:, None],
                               others, np.inf), axis=1) > 20  # fmt: skip
    return np.flatnonzero((edge >= lo) & (edge < hi) & (scene.star_flux > min_flux) & isolated)


def _chi2(result, x: float, y: float, radius: float = 10.0) -> float:
    diff = result.diff_image
    z = diff.image / np.sqrt(diff.variance)
    r = int(math.ceil(radius))
    ix, iy = round(x), round(y)
    yy, xx = np.mgrid[iy - r : iy + r + 1, ix - r : ix + r + 1]
    inside = (xx >= 0) & (yy >= 0) & (xx < z.shape[1]) & (yy < z.shape[0])
    disc = inside & ((xx - ix) ** 2 + (yy - iy) ** 2 <= radius**2)
    values = z[yy[disc], xx[disc]]
    return float(np.mean(values[np.isfinite(values)] ** 2))


def test_kernel_stamps_reach_the_detector_edges(scene, default, inner_candidates):
    size = scene.calexp.width
    fwhm = 1.1 / 0.2
    x0, x1, y0, y1 = default.kernel.valid_box
    old = inner_candidates.kernel.valid_box
    # the former rule could not come closer than stamp + kernel half-widths (~33 px here)
    assert min(old[0], old[2], size - 1 - old[1], size - 1 - old[3]) > 30
    # bright stars 9-24 px from the left and bottom edges are candidates now (seed 3: the box
    # is x 12..476, y 18..484 against 43..473, 66..463 before)
    assert x0 < 4 * fwhm and y0 < 4 * fwhm
    assert (x1 - x0) * (y1 - y0) > 1.2 * (old[1] - old[0]) * (old[3] - old[2])


def test_bright_stars_near_the_edges_are_subtracted(scene, default, inner_candidates):
    stars = _edge_stars(scene, 8.0, 30.0, 3e4)
    assert stars.size >= 3
    new = np.array([_chi2(default, scene.star_x[i], scene.star_y[i]) for i in stars])
    old = np.array([_chi2(inner_candidates, scene.star_x[i], scene.star_y[i]) for i in stars])
    # measured (seed 3, 7 stars 8-30 px from an edge): chi^2 per pixel within 10 px median
    # 1.17 (0.95-96) against 2.36 (1.21-2367) with the former candidates; the 2.4e6 nJy star
    # 9 px from the edge went from 2367 to 97, a 7.6e5 nJy one 24 px from it from 342 to 13
    assert np.median(new) < 1.3
    assert np.median(new) < np.median(old)


def test_every_candidate_is_fitted_by_default(default):
    meta = default.diff_image.metadata
    assert meta["diffim_n_stamps_reserved"] == 0
    assert (
        meta["diffim_n_stamps_used"] + meta["diffim_n_stamps_rejected"]
        == meta["diffim_n_candidates"]
    )
    # no reserved stars: no held-out residual, reported as null (NaN is not JSON)
    summary = default.summary()
    assert summary["residual_rms_reserved"] is None
    assert json.loads(json.dumps(summary)) == summary


def test_reserved_stamps_come_from_the_fainter_half(scene):
    result = _run(scene, reserve_fraction=0.2)
    meta = result.diff_image.metadata
    n = meta["diffim_n_candidates"]
    assert meta["diffim_n_stamps_reserved"] == round(0.2 * n) > 0
    assert 0.8 < meta["diffim_residual_rms_reserved"] < 1.3


def test_stamps_running_off_the_detector_have_no_weight():
    basis = alard_lupton_basis(4, (1.0, 2.0), (2, 1))
    half, stamp_half = basis.half, 6
    height, width = 40, 50
    rng = np.random.default_rng(2)
    conv = rng.standard_normal((height + 2 * half, width + 2 * half))
    ref = rng.standard_normal((height, width))
    ones = np.ones((height, width))
    bad = np.zeros((height, width), bool)
    x, y = np.array([3, 25, 47]), np.array([20, 2, 38])
    convolved, reference, weights = kernel_stamps(
        conv, np.ones_like(conv), ref, ones, bad, x, y, stamp_half, half, basis
    )
    offsets = np.arange(-stamp_half, stamp_half + 1)
    for k in range(x.size):
        rows, cols = y[k] + offsets, x[k] + offsets
        on = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
        assert (weights[k][~on] == 0).all() and (weights[k][on] == 0.5).all()
        # on-detector pixels hold the reference and the full convolution from the margin
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        np.testing.assert_array_equal(reference[k][on], ref[rr[on], cc[on]])
        k0 = basis.images[0]
        for j, i in list(zip(*np.nonzero(on), strict=True))[:5]:
            window = conv[rr[j, i] : rr[j, i] + 2 * half + 1, cc[j, i] : cc[j, i] + 2 * half + 1]
            expected = float(np.sum(k0[::-1, ::-1] * window))
            assert convolved[k, 0, j, i] == pytest.approx(expected, abs=1e-9)


def _star_field(size: int = 200, fwhm: float = 4.0):
    """Noise-free Gaussian stars (peak S/N 1000) on unit-variance sky, and their positions."""
    sigma = fwhm / 2.3548
    yy, xx = np.mgrid[:size, :size]
    xs, ys = [100, 12, 100, 60], [100, 100, 9, 150]
    image = np.zeros((size, size))
    for x, y in zip(xs, ys, strict=True):
        image += 1000.0 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2)
    return image, np.ones_like(image), xs, ys


def _candidates(image, variance, bad, clean_radius, edge_margin):
    psf_area = 2 * np.pi * (4.0 / 2.3548) ** 2
    settings = CandidateSettings(5.0, 50.0, 0.3, 1.5, 2, 5, clean_radius, edge_margin)
    no = np.zeros(image.shape, bool)
    found = select_candidates(image, variance, bad, image, no, psf_area, 12, 10, settings)
    return set(zip(found.x.tolist(), found.y.tolist(), strict=True))


def test_masked_pixels_outside_the_core_do_not_reject_a_candidate():
    image, variance, xs, ys = _star_field()
    bad = np.zeros(image.shape, bool)
    bad[:, 100 + 7] = True  # a bad column 7 px from the central star
    bad[150 - 3, 40:80] = True  # a bad row 3 px from another
    # the former rule: nothing masked, and on the detector, within stamp + kernel (22 px)
    assert _candidates(image, variance, bad, None, None) == set()
    # a 5 px clean core and a 6 px edge margin: the stars 12 and 9 px from the edges and the
    # one beside the bad column are candidates; the one whose core holds the bad row is not
    assert _candidates(image, variance, bad, 5, 6) == {(100, 100), (12, 100), (100, 9)}
    assert _candidates(image, variance, bad, 5, 10) == {(100, 100), (12, 100)}
    # an 8 px core reaches the bad column from both stars at x = 100
    assert _candidates(image, variance, bad, 8, 6) == {(12, 100)}
