"""Footprint filter: the CCD box (through the WCS) grown by the prediction-error margin."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.tasks.sso import footprint_margin_px, in_footprint, pixel_scale_arcsec
from tests.tasks.sso.sso_data import PIXEL_SCALE, make_wcs

SHAPE = (2000, 1500)  # height, width


def test_pixel_scale_of_a_rotated_wcs_is_its_cd_scale():
    wcs = make_wcs(SHAPE, rotation_deg=37.0, sip=False)
    assert pixel_scale_arcsec(wcs, 749.5, 999.5) == pytest.approx(PIXEL_SCALE, rel=1e-9)


def test_margin_is_ceil_of_largest_error_over_scale_capped():
    assert footprint_margin_px(np.array([0.3, 2.05, np.nan]), 0.2, 100) == 11
    assert footprint_margin_px(np.array([0.2]), 0.2, 100) == 1
    assert footprint_margin_px(np.array([500.0]), 0.2, 100) == 100
    assert footprint_margin_px(np.array([np.nan]), 0.2, 100) == 0
    assert footprint_margin_px(np.zeros(0), 0.2, 100) == 0


def test_keeps_positions_inside_the_grown_box_only():
    wcs = make_wcs(SHAPE, rotation_deg=30.0, sip=True)
    height, width = SHAPE
    margin = 15
    # Just inside / just outside each edge of the grown box, and the centre.
    x = np.array(
        [-0.5 - margin + 0.05, -0.5 - margin - 0.05, width - 0.5 + margin - 0.05,
         width - 0.5 + margin + 0.05, 700.0, 700.0, 700.0, 700.0, 749.5]
    )  # fmt: skip
    y = np.array(
        [900.0, 900.0, 900.0, 900.0, -0.5 - margin + 0.05, -0.5 - margin - 0.05,
         height - 0.5 + margin - 0.05, height - 0.5 + margin + 0.05, 999.5]
    )  # fmt: skip
    ra, dec = wcs.all_pix2world(x, y, 0)
    inside, px, py = in_footprint(ra, dec, wcs, SHAPE, margin)
    assert inside.tolist() == [True, False, True, False, True, False, True, False, True]
    np.testing.assert_allclose(px, x, atol=1e-6)
    np.testing.assert_allclose(py, y, atol=1e-6)
    inside0, _, _ = in_footprint(ra, dec, wcs, SHAPE, 0)
    assert inside0.tolist() == [False] * 8 + [True]


def test_far_away_and_non_finite_positions_are_excluded_without_projection():
    wcs = make_wcs(SHAPE, ra=210.0, dec=-8.0)
    ra = np.array([30.0, 210.0, 210.5, np.nan, 210.0])
    dec = np.array([8.0, 81.0, -8.0, -8.0, np.nan])
    inside, px, py = in_footprint(ra, dec, wcs, SHAPE, 100)
    assert not inside.any()
    # The antipode and the far-North point are outside the cone, so never projected.
    assert np.isnan(px[:2]).all() and np.isnan(py[:2]).all()
