"""Variable stars and transients: light curves, numbers, S/N spread, and what they leave alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apflow.sim import SkyModel, counts_per_njy, render_exposure
from apflow.sim.dynamic import dia_truth
from apflow.sim.transients import light_curve_flux, template_flux


@pytest.fixture(scope="module")
def first_visit_truth(sky, visits):
    return dia_truth(sky, visits[:1], list(range(9)), None)


def test_variable_mean_flux_is_the_template_flux_and_amplitude_is_as_drawn(sky):
    table = sky.transients[sky.transients["kind"] == "variable"]
    assert {"sinusoid", "rrlyrae"} <= set(table["subtype"])
    for row in table.head(20).itertuples():
        one = table.loc[[row.Index]]
        times = row.phase_mjd + np.linspace(0.0, row.period, 4001)[:-1]
        flux = light_curve_flux(one.iloc[np.zeros(len(times), int)], times, "r")
        assert flux.mean() == pytest.approx(row.r_flux, rel=1e-6)
        assert 2.5 * math.log10(flux.max() / flux.min()) == pytest.approx(row.amplitude, abs=0.01)
        assert template_flux(one, "r", 0.0)[0] == pytest.approx(row.r_flux)
    assert table["amplitude"].between(0.1, 1.0).all()
    assert table["period"].min() < 0.25 and table["period"].max() > 2.0  # hours to days


def test_transient_rises_to_its_peak_then_declines_exponentially(sky):
    table = sky.transients[sky.transients["kind"] == "transient"]
    row = table.iloc[[0]]
    t0, rise, fall = (float(row[c].iloc[0]) for c in ("t_explode", "tau_rise", "tau_fall"))
    s_peak = rise * math.log1p(fall / rise)
    times = t0 + np.array([-1.0, 0.0, 0.5 * s_peak, s_peak, s_peak + 60.0, s_peak + 60.0 + fall])
    flux = light_curve_flux(row.iloc[[0] * len(times)], times, "r")
    assert flux[0] == 0.0 and flux[1] == 0.0
    assert 0 < flux[2] < flux[3] and flux[3] == pytest.approx(float(row["r_flux"].iloc[0]))
    assert flux[5] / flux[4] == pytest.approx(math.exp(-1.0), rel=0.01)
    assert template_flux(row, "r", t0 - 1.0)[0] == 0.0


def test_variables_and_transients_are_not_in_the_reference_catalog(sky):
    ref = sky.reference_catalog()
    stars = sky.catalog[sky.catalog["is_star"] & (sky.catalog["r_mag"] < sky.config.ref_mag_limit)]
    assert len(ref) == len(stars) and set(ref["id"]) == set(stars["id"])
    assert not set(ref["id"]) & set(sky.transients["id"])


def test_a_few_variables_and_transients_per_ccd(first_visit_truth):
    on = first_visit_truth[first_visit_truth["detector"] >= 0]
    per_ccd = on.groupby(["kind", "detector"])["id"].nunique().groupby("kind").mean()
    assert 3.0 < per_ccd["variable"] < 8.0
    assert 1.5 < per_ccd["transient"] < 5.0


def test_transient_difference_snr_spans_the_detection_threshold(sky, visits, first_visit_truth):
    visit = visits[0]
    rows = first_visit_truth[
        (first_visit_truth["kind"] == "transient") & (first_visit_truth["detector"] >= 0)
    ]
    counts = rows["diff_flux"].to_numpy() * counts_per_njy(visit.zero_point)
    # PSF-flux noise of a point source: sky over the PSF's effective area (2.27 FWHM^2 for a
    # beta = 3.5 Moffat), read noise and the source itself
    fwhm_px = visit.seeing_fwhm / 0.2
    n_eff = 2.27 * fwhm_px**2
    snr = counts / np.sqrt(n_eff * (visit.sky_level + 25.0) + counts)
    assert np.mean(snr >= 10) > 0.3
    assert np.any((snr > 0) & (snr < 10))


def test_some_transients_explode_during_a_daily_run():
    sky = SkyModel.generate("mini", seed=8, visit_cadence_s=86_400.0)
    visits = sky.visits(10)
    truth = dia_truth(sky, visits, [], None)
    flux = truth[truth["kind"] == "transient"].pivot(index="id", columns="visit", values="flux")
    new = (flux[1] == 0) & (flux[10] > 0)
    assert new.sum() >= 3
    assert (flux.loc[new].diff(axis=1).iloc[:, 1:] >= 0).sum().sum() > 0  # rising after


def test_dynamic_sources_leave_the_static_noise_unchanged(sky, visits):
    with_dynamic = render_exposure(sky, visits[0], 4)
    static = render_exposure(sky, visits[0], 4, dynamic=False)
    lit = with_dynamic.model != static.model
    assert lit.any() and lit.mean() < 0.2
    assert np.array_equal(with_dynamic.exposure.image[~lit], static.exposure.image[~lit])
    assert not np.array_equal(with_dynamic.exposure.image[lit], static.exposure.image[lit])
