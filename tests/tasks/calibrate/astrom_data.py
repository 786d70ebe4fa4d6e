"""Synthetic astrometric test data: a true TAN-SIP WCS, a reference catalog and detections.

The truth follows the simulator's model: a TAN projection about the optical axis with cubic radial
distortion ``SIP A_3_0 = A_1_2 = B_2_1 = B_0_3 = k'`` (``k' = k * pixel_size**2``, px^-2) and
CRPIX at the axis, which is off the chip. Detections are the exact pixel positions of reference
stars (the stars are drawn in pixels and sent to the sky through the true WCS) plus centroid noise,
with some stars missed and some spurious sources added.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from apflow.core import Camera, Detector, ab_mag_to_njy

BAND = "r"
# AB magnitude of one count in the synthetic images.
TRUE_ZERO_POINT = 31.0


@dataclass
class AstrometryCase:
    """One synthetic CCD: truth, initial guess, reference catalog and detections."""

    true_wcs: WCS
    initial_wcs: WCS
    image_shape: tuple[int, int]
    ref_cat: pd.DataFrame
    sources: pd.DataFrame


def true_wcs(
    camera: Camera, detector: Detector, ra0: float, dec0: float, rotation_deg: float = 0.0
) -> WCS:
    """TAN-SIP WCS of a detector: boresight ``(ra0, dec0)`` at the optical axis, radial distortion."""
    axis_x, axis_y = detector.focal_plane_to_pixel(0.0, 0.0)
    scale = camera.plate_scale * detector.pixel_size / 3600.0  # deg/px
    angle = math.radians(detector.yaw_deg + rotation_deg)
    c, s = math.cos(angle), math.sin(angle)
    k_pix = camera.distortion_k * detector.pixel_size**2
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header["CRPIX1"], header["CRPIX2"] = float(axis_x) + 1.0, float(axis_y) + 1.0
    header["CRVAL1"], header["CRVAL2"] = ra0, dec0
    # East to the left (RA decreases with x) as on the sky seen from inside the sphere.
    header["CD1_1"], header["CD1_2"] = -scale * c, scale * s
    header["CD2_1"], header["CD2_2"] = scale * s, scale * c
    header["RADESYS"] = "ICRS"
    header["A_ORDER"] = header["B_ORDER"] = 3
    header["A_3_0"] = header["A_1_2"] = k_pix
    header["B_2_1"] = header["B_0_3"] = k_pix
    return _wcs(header)


def initial_wcs(
    truth: WCS, pointing_error_arcsec: float, rotation_error_deg: float, position_angle: float
) -> WCS:
    """TAN WCS without distortion, pointing off by an angle and rotated about the boresight."""
    centre = SkyCoord(truth.wcs.crval[0], truth.wcs.crval[1], unit="deg")
    moved = centre.directional_offset_by(position_angle * u.deg, pointing_error_arcsec * u.arcsec)
    angle = math.radians(rotation_error_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    cd = rotation @ truth.pixel_scale_matrix
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = truth.wcs.crpix
    header["CRVAL1"], header["CRVAL2"] = moved.ra.deg, moved.dec.deg
    header["CD1_1"], header["CD1_2"] = cd[0]
    header["CD2_1"], header["CD2_2"] = cd[1]
    header["RADESYS"] = "ICRS"
    return _wcs(header)


def make_case(
    camera: Camera,
    detector: Detector,
    n_stars: int,
    seed: int,
    ra0: float = 150.0,
    dec0: float = -30.0,
    pointing_error_arcsec: float = 30.0,
    rotation_error_deg: float = 0.5,
) -> AstrometryCase:
    """Build a full synthetic case with ``n_stars`` reference stars on the chip (16 < m < 22)."""
    rng = np.random.default_rng(seed)
    truth = true_wcs(camera, detector, ra0, dec0, rotation_deg=20.0)
    shape = (detector.height, detector.width)
    margin = 250  # px: the reference-catalog padding of Rubin's loader
    area_factor = (
        (detector.width + 2 * margin)
        * (detector.height + 2 * margin)
        / (detector.width * detector.height)
    )
    n_total = int(n_stars * area_factor)
    x = rng.uniform(-0.5 - margin, detector.width - 0.5 + margin, n_total)
    y = rng.uniform(-0.5 - margin, detector.height - 0.5 + margin, n_total)
    mag = _star_magnitudes(rng, n_total)
    ra, dec = truth.all_pix2world(x, y, 0)
    flux = ab_mag_to_njy(mag)
    ref_cat = pd.DataFrame(
        {
            "id": np.arange(n_total, dtype=np.int64) + 1000,
            "ra": ra,
            "dec": dec,
            # Gaia-like 0.5% photometric errors, quoted and applied.
            f"{BAND}_flux": flux * (1.0 + rng.normal(0.0, 0.005, n_total)),
            f"{BAND}_flux_err": 0.005 * flux,
        }
    )
    on_chip = (x >= -0.5) & (x < detector.width - 0.5) & (y >= -0.5) & (y < detector.height - 0.5)
    detected = on_chip & (mag < 21.5) & (rng.random(n_total) > 0.05)
    sources = _detections(rng, x[detected], y[detected], mag[detected], shape)
    start = initial_wcs(truth, pointing_error_arcsec, rotation_error_deg, rng.uniform(0, 360))
    return AstrometryCase(truth, start, shape, ref_cat, sources)


def _star_magnitudes(rng: np.random.Generator, n: int) -> np.ndarray:
    # Counts rising as 10^(0.3 m), the slope of Galactic star counts at these magnitudes.
    slope, low, high = 0.3, 16.0, 22.0
    u = rng.random(n)
    return low + np.log10(1.0 + u * (10 ** (slope * (high - low)) - 1.0)) / slope


def _detections(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, mag: np.ndarray, shape: tuple[int, int]
) -> pd.DataFrame:
    """Noisy centroids and fluxes of the detected stars plus 5% spurious faint sources."""
    n_false = max(len(x) // 20, 1)
    height, width = shape
    x = np.concatenate([x, rng.uniform(0, width - 1, n_false)])
    y = np.concatenate([y, rng.uniform(0, height - 1, n_false)])
    mag = np.concatenate([mag, rng.uniform(20.0, 21.5, n_false)])
    # 0.01 px for bright stars, growing as 1/SNR to ~0.2 px at the detection limit.
    sigma = np.hypot(0.01, 0.02 * 10 ** (0.4 * (mag - 19.0)))
    instflux = 10 ** (-0.4 * (mag - TRUE_ZERO_POINT))
    # Sky-limited plus Poisson error: 1000 counts^2 per pixel over a 36-pixel PSF area.
    instflux_err = np.sqrt(instflux + 36.0 * 1000.0)
    order = rng.permutation(len(x))
    return pd.DataFrame(
        {
            "id": np.arange(len(x), dtype=np.int64),
            "x": (x + rng.normal(0.0, sigma))[order],
            "y": (y + rng.normal(0.0, sigma))[order],
            "x_err": sigma[order],
            "y_err": sigma[order],
            "psf_instflux": (instflux + rng.normal(0.0, instflux_err))[order],
            "psf_instflux_err": instflux_err[order],
        }
    )


def _wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)
