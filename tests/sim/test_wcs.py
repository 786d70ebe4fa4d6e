"""The true TAN-SIP WCS reproduces the camera's optical model; the initial WCS is off by arcsec."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from apflow.core import get_camera
from apflow.sim import pixel_to_sky, sky_to_pixel, true_wcs_header, wcs_from_header
from apflow.sim.wcs import initial_wcs_header, sky_to_tangent


def _separation_mas(ra1, dec1, ra2, dec2):
    return SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).mas


@pytest.mark.parametrize("camera_name", ["mini", "lsstcam"])
def test_true_wcs_matches_camera_geometry_to_1_mas(camera_name):
    camera = get_camera(camera_name)
    rng = np.random.default_rng(1)
    for det in (camera.detectors[0], camera.detectors[len(camera) // 2], camera.detectors[-1]):
        x = rng.uniform(-0.5, det.width - 0.5, 500)
        y = rng.uniform(-0.5, det.height - 0.5, 500)
        wcs = wcs_from_header(true_wcs_header(camera, det, 150.0, 2.2, 0.7))
        world = wcs.pixel_to_world(x, y)
        ra, dec = pixel_to_sky(camera, det, x, y, 150.0, 2.2, 0.7)
        assert _separation_mas(world.ra.deg, world.dec.deg, ra, dec).max() < 1.0


def test_true_wcs_inverse_round_trips_to_a_millipixel():
    camera = get_camera("mini")
    det = camera[0]  # a corner CCD, where the distortion is largest
    wcs = wcs_from_header(true_wcs_header(camera, det, 150.0, 2.2, -0.4))
    x, y = np.meshgrid(np.linspace(0, 1023, 9), np.linspace(0, 1023, 9))
    ra, dec = pixel_to_sky(camera, det, x, y, 150.0, 2.2, -0.4)
    xx, yy = wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg"))
    assert np.abs(xx - x).max() < 1e-3 and np.abs(yy - y).max() < 1e-3
    x2, y2 = sky_to_pixel(camera, det, ra, dec, 150.0, 2.2, -0.4)
    assert np.abs(x2 - x).max() < 1e-6 and np.abs(y2 - y).max() < 1e-6


def test_sip_coefficients_are_the_pixel_space_distortion():
    camera = get_camera("mini")
    header = true_wcs_header(camera, camera[4], 10.0, -30.0, 0.0)
    k_pix = camera.distortion_k * camera[4].pixel_size ** 2
    for card in ("A_3_0", "A_1_2", "B_2_1", "B_0_3"):
        assert header[card] == pytest.approx(k_pix)
    assert header["AP_3_0"] == pytest.approx(-k_pix)


def test_east_is_left_and_north_up_at_zero_rotation():
    camera = get_camera("mini")
    det = camera[4]
    ra, dec = pixel_to_sky(
        camera,
        det,
        np.array([500.0, 600.0, 500.0]),
        np.array([500.0, 500.0, 600.0]),
        150.0,
        2.2,
        0.0,
    )
    assert ra[1] < ra[0]  # +x points West
    assert dec[2] > dec[0]  # +y points North


def test_initial_wcs_is_off_by_the_pointing_error(sky, visits):
    visit = visits[0]
    det = sky.camera[4]
    true = wcs_from_header(
        true_wcs_header(
            sky.camera, det, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle
        )
    )
    initial = wcs_from_header(
        initial_wcs_header(
            sky.camera, det, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle,
            (visit.pointing_error_east, visit.pointing_error_north), visit.rotation_error,
        )
    )  # fmt: skip
    x, y = np.meshgrid(np.linspace(0, 1023, 5), np.linspace(0, 1023, 5))
    a, b = true.pixel_to_world(x, y), initial.pixel_to_world(x, y)
    sep = a.separation(b).arcsec
    expected = np.hypot(visit.pointing_error_east, visit.pointing_error_north)
    assert 1.5 < sep.min() and sep.max() < expected + 5.0
    assert 2.0 <= expected <= 5.0


def test_tangent_projection_of_the_centre_is_zero():
    xi, eta = sky_to_tangent(np.array([150.0]), np.array([2.2]), 150.0, 2.2)
    assert abs(xi[0]) < 1e-12 and abs(eta[0]) < 1e-12
