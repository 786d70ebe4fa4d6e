"""The static sky and the reference catalog."""

from __future__ import annotations

import numpy as np

from apflow.core import get_camera
from apflow.sim import SOURCE_COLUMNS, SimConfig, make_catalog
from apflow.sim.catalog import draw_magnitudes


def test_catalog_has_every_truth_column(sky):
    assert list(sky.catalog.columns) == list(SOURCE_COLUMNS)
    assert sky.catalog["id"].is_unique
    assert set(sky.catalog["type"]) == {"star", "galaxy"}


def test_number_counts_rise_at_the_configured_slope():
    mags = draw_magnitudes(np.random.default_rng(0), 200_000, (14.0, 24.5), 0.3)
    counts, edges = np.histogram(mags, bins=np.arange(16.0, 24.01, 1.0))
    slope = np.polyfit(edges[:-1], np.log10(counts), 1)[0]
    assert abs(slope - 0.3) < 0.02
    assert mags.min() >= 14.0 and mags.max() <= 24.5


def test_catalog_is_deterministic_and_seed_dependent():
    camera = get_camera("mini")
    a = make_catalog(camera, SimConfig(), 0)
    b = make_catalog(camera, SimConfig(), 0)
    c = make_catalog(camera, SimConfig(), 1)
    assert a.equals(b)
    assert not a["ra"].equals(c["ra"])


def test_colours_give_fluxes_in_every_band(sky):
    for band in ("g", "r", "i"):
        assert (sky.catalog[f"{band}_flux"] > 0).all()
    stars = sky.catalog[sky.catalog["is_star"]]
    gr = stars["g_mag"] - stars["r_mag"]
    assert 0.2 <= gr.min() and gr.max() <= 1.5


def test_reference_catalog_holds_bright_stars_with_errors(sky):
    ref = sky.reference_catalog()
    truth = sky.catalog.set_index("id").loc[ref["id"]]
    assert truth["is_star"].all() and (truth["r_mag"] < sky.config.ref_mag_limit).all()
    assert {"id", "ra", "dec", "r_flux", "r_fluxErr", "g_flux", "is_star"} <= set(ref.columns)
    rel_err = ref["r_fluxErr"] / truth["r_flux"].to_numpy()
    assert rel_err.min() >= sky.config.ref_flux_error_floor
    pull = (ref["r_flux"] - truth["r_flux"].to_numpy()) / ref["r_fluxErr"]
    assert abs(pull.std() - 1) < 0.15
    assert np.array_equal(ref["ra"], truth["ra"].to_numpy())
