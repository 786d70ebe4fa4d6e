"""Templates: sharper than the visits, the static sky at the template epoch, and the difference
between a visit and the template holds exactly the truth's ``diff_flux``.

The difference checks use noise-free renders of one visit (detectors 4 and 1) and the template
patches under them, and a 3" (15 px) aperture, which holds > 99.5% of a point source's light in
both. A field with more variables and transients than the default gives enough isolated ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from apflow.sim import SkyModel, counts_per_njy, make_tract, render_exposure
from apflow.sim.coadd import TractGeometry, render_coadd
from apflow.sim.dynamic import dia_truth
from apflow.sim.template import render_template, template_config, template_mjd, template_psf

DETECTORS = (4, 1)
RADIUS = 15.0  # aperture radius, pixels (0.2" in visits and templates alike)
EDGE = 20.0


@dataclass
class Difference:
    sky: SkyModel
    tract: TractGeometry
    truth: pd.DataFrame
    visit_flux: dict  # (detector, dynamic) -> nJy image without background
    templates: dict  # (patch, with transients) -> template Exposure


def aperture_sum(image: np.ndarray, x: float, y: float, radius: float = RADIUS) -> float:
    x0, y0, r = int(round(x)), int(round(y)), int(radius) + 1
    ys, xs = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    stamp = image[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    return float(stamp[(xs - x) ** 2 + (ys - y) ** 2 <= radius**2].sum())


@pytest.fixture(scope="module")
def difference() -> Difference:
    sky = SkyModel.generate("mini", seed=21, variable_density=4000.0, transient_density=4000.0)
    visit = sky.visits(1)[0]
    tract = make_tract(sky.camera, [visit], sky.config)
    truth = dia_truth(sky, [visit], list(DETECTORS), template_mjd(sky.config))
    to_njy = 1.0 / counts_per_njy(visit.zero_point)
    visit_flux = {}
    for det in DETECTORS:
        for dynamic in (True, False):
            sim = render_exposure(
                sky, visit, det, noise=False, saturate=False, defects=False, dynamic=dynamic
            )
            visit_flux[det, dynamic] = (sim.model.astype(np.float64) - sim.background) * to_njy
    templates = {}
    for patch in range(tract.n_patches):
        for transients in (True, False):
            templates[patch, transients] = render_template(
                tract, patch, visit.band, sky.catalog,
                sky.transients if transients else None, sky.config, sky.seed, noise=False,
            )  # fmt: skip
    return Difference(sky, tract, truth, visit_flux, templates)


def measured_difference(diff: Difference, row, static_removed: bool) -> float | None:
    """Aperture flux of visit minus template at a truth position (None near an edge)."""
    for patch in range(diff.tract.n_patches):
        px, py = diff.tract.sky_to_patch_pixel(patch, np.array([row.ra]), np.array([row.dec]))
        px, py = float(px[0]), float(py[0])
        inside = EDGE < px < diff.tract.patch_width - EDGE
        if inside and EDGE < py < diff.tract.patch_height - EDGE:
            break
    else:
        return None
    if not (EDGE < row.x < 1023 - EDGE and EDGE < row.y < 1023 - EDGE):
        return None
    visit = aperture_sum(diff.visit_flux[row.detector, True], row.x, row.y)
    template = aperture_sum(diff.templates[patch, True].image, px, py)
    if static_removed:
        visit -= aperture_sum(diff.visit_flux[row.detector, False], row.x, row.y)
        template -= aperture_sum(diff.templates[patch, False].image, px, py)
    return visit - template


def isolated(sky: SkyModel, truth: pd.DataFrame, row, radius_arcsec: float = 8.0) -> bool:
    """No static source brighter than 1% of |diff_flux| and no other dynamic object nearby."""
    cat = sky.catalog
    cos = np.cos(np.radians(row.dec))
    sep = np.hypot((cat["ra"] - row.ra) * cos, cat["dec"] - row.dec) * 3600
    bright = cat["r_flux"] > 0.01 * abs(row.diff_flux)
    others = np.hypot((truth["ra"] - row.ra) * cos, truth["dec"] - row.dec) * 3600
    return not np.any((sep < radius_arcsec) & bright) and np.sum(others < radius_arcsec) == 1


def test_template_psf_is_sharper_than_every_visit(sky):
    fwhm = template_psf(sky.config).fwhm * sky.config.coadd_pixel_scale
    assert fwhm == pytest.approx(sky.config.template_fwhm_arcsec)
    visits = sky.visits(30)
    worst_best = min(v.seeing_fwhm * (1 - 3 * 0.02 - 0.1) for v in visits)  # tilts and margin
    assert fwhm < worst_best


def test_template_follows_deep_coadd_conventions(sky):
    visits = sky.visits(1)
    tract = make_tract(sky.camera, visits, sky.config)
    template = render_template(tract, 1, "r", sky.catalog, sky.transients, sky.config, sky.seed)
    coadd = render_coadd(tract, 1, "r", sky.catalog, sky.config, sky.seed)
    assert template.shape == coadd.shape
    assert template.photo_calib == coadd.photo_calib
    corners = ([0, 100, 2000], [0, 1500, 30])
    assert np.allclose(
        template.wcs.pixel_to_world_values(*corners), coadd.wcs.pixel_to_world_values(*corners)
    )
    assert template.metadata["units"] == "nJy" and template.metadata["xy0"] == coadd.metadata["xy0"]
    assert template.metadata["template_mjd"] == template_mjd(sky.config)
    assert template.psf.fwhm < coadd.psf.fwhm
    assert np.all(template.variance > 0) and not np.any(template.mask)
    # own noise: the pixels differ from a coadd rendered with the template's PSF and depth
    same_psf = render_coadd(tract, 1, "r", sky.catalog, template_config(sky.config), sky.seed)
    assert not np.array_equal(template.image, same_psf.image)
    again = render_template(tract, 1, "r", sky.catalog, sky.transients, sky.config, sky.seed)
    assert np.array_equal(template.image, again.image)


def test_template_holds_variables_at_their_mean_and_no_transient(difference):
    truth = difference.truth
    rows = truth[truth["kind"].isin(["variable", "transient"]) & (truth["detector"] >= 0)]
    checked = 0
    for row in rows.itertuples():
        cos = np.cos(np.radians(row.dec))
        sep = np.hypot((rows["ra"] - row.ra) * cos, rows["dec"] - row.dec) * 3600
        if np.sum(sep < (RADIUS + 8) * 0.2) > 1:
            continue  # another one inside the aperture
        for patch in range(difference.tract.n_patches):
            px, py = difference.tract.sky_to_patch_pixel(
                patch, np.array([row.ra]), np.array([row.dec])
            )
            if EDGE < px[0] < difference.tract.patch_width - EDGE and EDGE < py[0] < (
                difference.tract.patch_height - EDGE
            ):
                with_, without = (
                    difference.templates[patch, True],
                    difference.templates[patch, False],
                )
                light = aperture_sum(with_.image - without.image, px[0], py[0])
                assert light == pytest.approx(row.template_flux, rel=0.005, abs=1.0)
                checked += 1
                break
    assert checked > 20
    assert (rows.loc[rows["kind"] == "transient", "template_flux"] == 0).all()
    assert (rows.loc[rows["kind"] == "variable", "template_flux"] > 0).all()


def test_difference_of_isolated_objects_matches_diff_flux(difference):
    truth = difference.truth
    rows = truth[(truth["detector"] >= 0) & (truth["diff_flux"].abs() > 1000.0)]
    results = []
    for row in rows.itertuples():
        if not isolated(difference.sky, truth, row):
            continue
        measured = measured_difference(difference, row, static_removed=False)
        if measured is not None:
            results.append((row.kind, row.diff_flux, measured))
    table = pd.DataFrame(results, columns=["kind", "diff_flux", "measured"])
    assert len(table) >= 10 and (table["kind"] == "transient").sum() >= 3
    error = (table["measured"] - table["diff_flux"]).abs()
    assert np.all(error < 0.03 * table["diff_flux"].abs() + 30.0), table


def test_difference_of_every_transient_matches_diff_flux_once_the_static_sky_cancels(difference):
    """Hosted and crowded transients too: the visit and template renders without the dynamic
    objects remove the static sky's (seeing-dependent) residual exactly."""
    truth = difference.truth
    rows = truth[(truth["kind"] == "transient") & (truth["detector"] >= 0)]
    compared = 0
    for row in rows.itertuples():
        measured = measured_difference(difference, row, static_removed=True)
        if measured is None:
            continue
        # other dynamic objects inside the aperture add their own difference
        cos = np.cos(np.radians(row.dec))
        sep = np.hypot((truth["ra"] - row.ra) * cos, truth["dec"] - row.dec) * 3600
        expected = truth.loc[sep < (RADIUS + 8) * 0.2, "diff_flux"]
        if len(expected) > 1:
            continue
        assert measured == pytest.approx(row.diff_flux, rel=0.005, abs=2.0)
        compared += 1
    assert compared >= 15
