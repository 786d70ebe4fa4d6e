"""PSF fluxes of isolated stars: unbiased, with errors that match the scatter."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.core import GaussianPsf, MoffatPsf, VariablePsf
from apflow.tasks.forced import ForcedPhotConfig, ForcedPhotTask
from apflow.tasks.forced.stamps import PsfStampRenderer, fwhm_at
from tests.tasks.forced.forced_data import make_coadd, make_ref, star_grid

SHAPE = (360, 360)


def _measure_grid(psf, flux, seed, sigma=10.0, **config):
    x, y = star_grid(SHAPE, spacing=24.0, margin=14.0, seed=seed)
    exposure = make_coadd(psf, x, y, np.full(x.size, flux), shape=SHAPE, sigma=sigma, seed=seed)
    task = ForcedPhotTask(ForcedPhotConfig(**config))
    return task.run(deep_coadd=exposure, coadd_ref=make_ref(exposure.wcs, x, y)).forced_src


@pytest.mark.parametrize(
    "psf",
    [GaussianPsf(fwhm=3.0), MoffatPsf(fwhm=4.0, beta=3.5), GaussianPsf(fwhm=3.5, e1=0.1, e2=-0.05)],
    ids=["gaussian", "moffat", "elliptical-gaussian"],
)
def test_isolated_star_psf_fluxes_are_unbiased_with_unit_pulls(psf):
    flux = 4000.0
    pulls, ratios = [], []
    for seed in (1, 2):
        df = _measure_grid(psf, flux, seed)
        assert not df["psfFlux_flag"].any()
        assert (df["psfFlux_nBlend"] == 1).all()
        ratios.append(df["psfFlux"].to_numpy() / flux)
        pulls.append((df["psfFlux"].to_numpy() - flux) / df["psfFluxErr"].to_numpy())
    ratio = np.concatenate(ratios)
    pull = np.concatenate(pulls)
    assert ratio.size > 300
    bias = ratio.mean() - 1.0
    assert abs(bias) < 0.005, bias
    assert abs(pull.std(ddof=1) - 1.0) < 0.10, pull.std(ddof=1)
    assert abs(pull.mean()) < 0.25


def test_noise_free_isolated_gaussian_star_is_recovered_to_round_off():
    df = _measure_grid(GaussianPsf(fwhm=3.0), 5000.0, seed=4, sigma=0.0)
    np.testing.assert_allclose(df["psfFlux"], 5000.0, rtol=1e-6)


def test_chi2_area_and_pixel_count_are_consistent_with_the_model():
    psf = GaussianPsf(fwhm=3.0)
    df = _measure_grid(psf, 3000.0, seed=5)
    npix = df["psfFlux_npixels"].to_numpy()
    assert np.all(npix == npix[0]) and npix[0] > 100
    # One fitted parameter: chi2 / (npix - 1) ~ 1 on average.
    assert abs(np.mean(df["psfFlux_chi2"] / (npix - 1)) - 1.0) < 0.03
    # Effective area of a pixelised Gaussian PSF: 4 pi (sigma^2 + 1/12).
    sigma = 3.0 / 2.3548
    np.testing.assert_allclose(df["psfFlux_area"], 4 * np.pi * (sigma**2 + 1 / 12), rtol=1e-3)


def test_position_dependent_gaussian_psf_uses_the_local_width():
    psf = VariablePsf(profile="gaussian", width=360, height=360, fwhm_coeffs=(3.0, 0.0, 0.5))
    x, y = star_grid(SHAPE, spacing=24.0, margin=14.0, seed=6)
    np.testing.assert_allclose(
        fwhm_at(psf, x, y), [psf.fwhm_at(a, b) for a, b in zip(x, y, strict=True)], rtol=1e-12
    )
    exposure = make_coadd(psf, x, y, np.full(x.size, 4000.0), shape=SHAPE, sigma=0.0)
    df = (
        ForcedPhotTask().run(deep_coadd=exposure, coadd_ref=make_ref(exposure.wcs, x, y)).forced_src
    )
    np.testing.assert_allclose(df["psfFlux"], 4000.0, rtol=1e-6)


@pytest.mark.parametrize(
    "psf", [GaussianPsf(fwhm=2.5), MoffatPsf(fwhm=3.0)], ids=["gauss", "moffat"]
)
def test_psf_stamps_reproduce_compute_image(psf):
    rng = np.random.default_rng(0)
    x = 100 + rng.uniform(-0.5, 0.5, 20)
    y = 80 + rng.uniform(-0.5, 0.5, 20)
    half = 6
    stamps = PsfStampRenderer(psf, half, x, y)(x, y)
    size = psf.default_size()
    for k in range(x.size):
        full = psf.compute_image(x[k], y[k], size)
        c = size // 2
        ref = full[c - half : c + half + 1, c - half : c + half + 1]
        # Exact for round Gaussians; for other models within the renderer's own sampling error.
        tol = 1e-12 if isinstance(psf, GaussianPsf) else 2e-3
        assert np.abs(stamps[k] - ref).max() < tol * ref.max()


def test_position_dependent_moffat_psf_is_interpolated_between_kernels():
    # FWHM from 3.4 to 4.6 px across 360 px (30 times a real CCD's variation), so cells of 64 px
    # to keep the change per cell at 5%.
    psf = VariablePsf(profile="moffat", width=360, height=360, fwhm_coeffs=(4.0, 0.0, 0.6))
    x, y = star_grid(SHAPE, spacing=30.0, margin=16.0, seed=8)
    exposure = make_coadd(psf, x, y, np.full(x.size, 4000.0), shape=SHAPE, sigma=0.0)
    df = _measure(exposure, x, y, psf_cell_size=64)
    np.testing.assert_allclose(df["psfFlux"], 4000.0, rtol=0.002)
    # Interpolation, not the nearest kernel: with 256-px cells the bias stays second order.
    coarse = _measure(exposure, x, y, psf_cell_size=256)
    assert np.max(np.abs(coarse["psfFlux"] / 4000.0 - 1)) < 0.015


def _measure(exposure, x, y, **config):
    task = ForcedPhotTask(ForcedPhotConfig(**config))
    return task.run(deep_coadd=exposure, coadd_ref=make_ref(exposure.wcs, x, y)).forced_src
