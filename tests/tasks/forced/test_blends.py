"""Joint PSF fits of blends: neighbours' light no longer biases the PSF flux."""

from __future__ import annotations

import numpy as np
import pandas as pd

from apflow.core import GaussianPsf, MoffatPsf
from apflow.tasks.forced import ForcedPhotConfig, ForcedPhotTask
from apflow.tasks.forced.blends import blend_groups
from tests.tasks.forced.forced_data import make_coadd, make_ref

FWHM = 3.0
SHAPE = (200, 200)


def _run(exposure, x, y, **config) -> pd.DataFrame:
    task = ForcedPhotTask(ForcedPhotConfig(**config))
    return task.run(deep_coadd=exposure, coadd_ref=make_ref(exposure.wcs, x, y)).forced_src


def _pair(separation_fwhm: float, fluxes=(6000.0, 2000.0), sigma=2.0, psf=None, seed=0):
    psf = psf or GaussianPsf(fwhm=FWHM)
    sep = separation_fwhm * psf.fwhm
    x = np.array([100.2, 100.2 + sep * 0.8])
    y = np.array([99.7, 99.7 + sep * 0.6])
    exposure = make_coadd(psf, x, y, np.array(fluxes), shape=SHAPE, sigma=sigma, seed=seed)
    return exposure, x, y, np.array(fluxes)


def test_pair_at_one_and_a_half_fwhm_is_recovered_within_two_percent_by_the_joint_fit():
    exposure, x, y, truth = _pair(1.5)
    joint = _run(exposure, x, y)
    assert joint["psfFlux_nBlend"].tolist() == [2, 2]
    assert not joint["psfFlux_flag"].any()
    np.testing.assert_allclose(joint["psfFlux"], truth, rtol=0.02)
    # Without grouping each fit sees its neighbour's wings: the faint star is biased by far more.
    alone = _run(exposure, x, y, blend_link_fwhm=0.1)
    assert alone["psfFlux_nBlend"].tolist() == [1, 1]
    bias_alone = np.abs(alone["psfFlux"].to_numpy() / truth - 1)
    bias_joint = np.abs(joint["psfFlux"].to_numpy() / truth - 1)
    assert bias_alone[1] > 0.05
    assert np.all(bias_joint < bias_alone / 3)


def test_joint_fit_of_moffat_pair_is_recovered_within_two_percent():
    exposure, x, y, truth = _pair(1.5, psf=MoffatPsf(fwhm=4.0))
    df = _run(exposure, x, y)
    np.testing.assert_allclose(df["psfFlux"], truth, rtol=0.02)


def test_joint_fit_errors_match_the_scatter_over_many_pairs():
    psf = GaussianPsf(fwhm=FWHM)
    rng = np.random.default_rng(11)
    xs, ys = [], []
    for gx in np.arange(20, 380, 30.0):
        for gy in np.arange(20, 380, 30.0):
            x0, y0 = gx + rng.uniform(-0.5, 0.5), gy + rng.uniform(-0.5, 0.5)
            angle = rng.uniform(0, 2 * np.pi)
            sep = 1.5 * FWHM
            xs += [x0, x0 + sep * np.cos(angle)]
            ys += [y0, y0 + sep * np.sin(angle)]
    x, y = np.array(xs), np.array(ys)
    truth = np.tile([3000.0, 1500.0], x.size // 2)
    exposure = make_coadd(psf, x, y, truth, shape=(400, 400), sigma=10.0, seed=3)
    df = _run(exposure, x, y)
    assert (df["psfFlux_nBlend"] == 2).all()
    pull = (df["psfFlux"] - truth) / df["psfFluxErr"]
    assert abs(pull.std(ddof=1) - 1) < 0.12
    assert abs(np.mean(df["psfFlux"] / truth) - 1) < 0.005
    # The joint error is larger than a lone star's: the pair's fluxes are correlated.
    lone = _run(make_coadd(psf, x[:1], y[:1], truth[:1], shape=(400, 400), seed=3), x[:1], y[:1])
    assert df["psfFluxErr"].iloc[0] > lone["psfFluxErr"].iloc[0]


def test_background_term_absorbs_a_flat_offset():
    exposure, x, y, truth = _pair(1.5, sigma=1.0)
    exposure.image += 25.0
    biased = _run(exposure, x, y)
    fitted = _run(exposure, x, y, fit_background=True)
    assert np.all(np.abs(biased["psfFlux"] / truth - 1) > 0.02)
    np.testing.assert_allclose(fitted["psfFlux"], truth, rtol=0.01)
    np.testing.assert_allclose(fitted["psfFlux_background"], 25.0, atol=0.5)


def test_isolated_background_fit_matches_its_pair_equivalent():
    psf = GaussianPsf(fwhm=FWHM)
    x, y = np.array([60.3]), np.array([70.6])
    exposure = make_coadd(psf, x, y, np.array([3000.0]), shape=SHAPE, sigma=1.0, background=-12.0)
    df = _run(exposure, x, y, fit_background=True)
    np.testing.assert_allclose(df["psfFlux"], 3000.0, rtol=0.01)
    np.testing.assert_allclose(df["psfFlux_background"], -12.0, atol=0.2)


def test_group_larger_than_the_limit_falls_back_to_single_fits_and_is_flagged():
    psf = GaussianPsf(fwhm=FWHM)
    x = 100.0 + np.array([0.0, 4.5, 9.0])
    y = np.full(3, 100.0)
    exposure = make_coadd(psf, x, y, np.full(3, 2000.0), shape=SHAPE, sigma=1.0)
    df = _run(exposure, x, y, blend_max_members=2)
    assert df["psfFlux_nBlend"].tolist() == [3, 3, 3]
    assert df["psfFlux_flag_blendTooLarge"].all()
    assert df["psfFlux_flag"].all()
    assert np.all(np.isfinite(df["psfFlux"]))
    ok = _run(exposure, x, y)
    np.testing.assert_allclose(ok["psfFlux"], 2000.0, rtol=0.01)


def test_coincident_sources_are_flagged_singular_not_crashed():
    psf = GaussianPsf(fwhm=FWHM)
    x = np.array([80.0, 80.0 + 1e-4, 120.0])
    y = np.array([90.0, 90.0, 90.0])
    exposure = make_coadd(psf, x, y, np.array([1000.0, 1000.0, 500.0]), shape=SHAPE, sigma=1.0)
    df = _run(exposure, x, y)
    assert df["psfFlux_flag_blendSingular"].tolist() == [True, True, False]
    assert df["psfFlux_flag"].tolist() == [True, True, False]
    # The fall-back single fits each see both stars.
    np.testing.assert_allclose(df["psfFlux"].iloc[:2], 2000.0, rtol=0.01)


def test_blend_groups_link_chains_of_close_sources():
    x = np.array([0.0, 5.0, 10.0, 50.0, 100.0, 104.0])
    y = np.zeros(6)
    labels, sizes = blend_groups(x, y, link_radius=6.0)
    assert sizes.tolist() == [3, 3, 3, 1, 2, 2]
    assert len(set(labels[:3])) == 1 and labels[3] not in labels[[0, 4]]
