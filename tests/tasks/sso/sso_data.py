"""Synthetic CCDs, DiaSources and ephemerides with known truth for the SSO-association tests.

The ephemeris frames carry exactly the simulator's ``ss_ephemeris`` columns. Positions are
placed through the CCD's WCS (pixels -> sky) and offsets are applied on the sky in arcsec, so
the tests know which DiaSource belongs to which object.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy.wcs import WCS, Sip

from apflow.apdb.ids import pack_source_ids
from apflow.core import Exposure

PIXEL_SCALE = 0.2  # arcsec per pixel
VISIT, DETECTOR = 7, 4
MJD = 61000.25

EPHEMERIS_COLUMNS = (
    "ssObjectId designation midpointMjdTai ephRa ephDec positionErrArcsec ephVmag ephRateRa "
    "ephRateDec topoRange helioRange topoRangeRate helioRangeRate phaseAngle elongation "
    "helio_x helio_y helio_z helio_vx helio_vy helio_vz topo_x topo_y topo_z topo_vx topo_vy "
    "topo_vz"
).split()


def make_wcs(
    shape: tuple[int, int],
    ra: float = 210.0,
    dec: float = -8.0,
    rotation_deg: float = 30.0,
    sip: bool = True,
) -> WCS:
    """Rotated TAN-SIP WCS of a CCD centred on (ra, dec)."""
    height, width = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [width / 2 + 0.5, height / 2 + 0.5]
    s = PIXEL_SCALE / 3600.0
    c, si = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    wcs.wcs.cd = np.array([[-s * c, s * si], [s * si, s * c]])
    if sip:
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[3, 0] = a[1, 2] = 1e-11
        b[2, 1] = b[0, 3] = 1e-11
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def make_diff_image(shape: tuple[int, int] = (4096, 4096), **wcs_kwargs) -> Exposure:
    """A difference image of ``shape`` whose planes are broadcast views (no pixel memory)."""
    return Exposure(
        image=np.broadcast_to(np.float32(0.0), shape),
        mask=np.broadcast_to(np.int32(0), shape),
        variance=np.broadcast_to(np.float32(1.0), shape),
        wcs=make_wcs(shape, **wcs_kwargs),
        detector=DETECTOR,
    )


def offset_sky(
    ra: np.ndarray, dec: np.ndarray, east_arcsec: np.ndarray, north_arcsec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move positions by small on-sky offsets (arcsec East and North)."""
    dec_new = np.asarray(dec) + np.asarray(north_arcsec) / 3600.0
    ra_new = np.asarray(ra) + np.asarray(east_arcsec) / 3600.0 / np.cos(np.radians(dec))
    return np.mod(ra_new, 360.0), dec_new


def random_offsets(
    rng: np.random.Generator, n: int, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` offsets (arcsec East, North) of length uniform in [low, high], random direction."""
    length = rng.uniform(low, high, n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    return length * np.cos(angle), length * np.sin(angle)


def make_dia_source(ra: np.ndarray, dec: np.ndarray, **columns) -> pd.DataFrame:
    """DiaSources at (ra, dec) with packed ids and positive, non-dipole flags by default."""
    n = len(ra)
    frame = pd.DataFrame(
        {
            "diaSourceId": pack_source_ids(VISIT, DETECTOR, np.arange(n)),
            "visit": np.full(n, VISIT, dtype=np.int64),
            "detector": np.full(n, DETECTOR, dtype=np.int16),
            "midpointMjdTai": np.full(n, MJD),
            "ra": np.asarray(ra, dtype=np.float64),
            "dec": np.asarray(dec, dtype=np.float64),
            "isNegative": np.zeros(n, dtype=bool),
            "isDipole": np.zeros(n, dtype=bool),
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def make_ephemeris(
    ra: np.ndarray,
    dec: np.ndarray,
    position_err: np.ndarray | float = 0.3,
    rate_ra: np.ndarray | float = 0.25,
    rate_dec: np.ndarray | float = -0.1,
    first_id: int = 1000,
    rng: np.random.Generator | None = None,
) -> pd.DataFrame:
    """An ``ss_ephemeris`` frame (every simulator column) for objects predicted at (ra, dec).

    Geometry columns are plausible main-belt values drawn from ``rng`` (seeded default); the
    tests that check copied values read them back from this frame.
    """
    rng = rng if rng is not None else np.random.default_rng(11)
    n = len(ra)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    helio = rng.normal(0.0, 1.5, (n, 3)) + np.array([2.0, 0.5, 0.1])
    topo = rng.normal(0.0, 1.0, (n, 3)) + np.array([1.2, 0.3, 0.1])
    helio_v = rng.normal(0.0, 10.0, (n, 3))
    topo_v = rng.normal(0.0, 15.0, (n, 3))
    frame = {
        "ssObjectId": ids,
        "designation": [f"2026 T{i:05d}" for i in ids],
        "midpointMjdTai": np.full(n, MJD),
        "ephRa": np.asarray(ra, dtype=np.float64),
        "ephDec": np.asarray(dec, dtype=np.float64),
        "positionErrArcsec": np.broadcast_to(position_err, (n,)).astype(np.float64),
        "ephVmag": rng.uniform(18.0, 23.0, n),
        "ephRateRa": np.broadcast_to(rate_ra, (n,)).astype(np.float64),
        "ephRateDec": np.broadcast_to(rate_dec, (n,)).astype(np.float64),
        "topoRange": np.linalg.norm(topo, axis=1),
        "helioRange": np.linalg.norm(helio, axis=1),
        "topoRangeRate": rng.normal(0.0, 10.0, n),
        "helioRangeRate": rng.normal(0.0, 5.0, n),
        "phaseAngle": rng.uniform(0.0, 30.0, n),
        "elongation": rng.uniform(90.0, 180.0, n),
    }
    for i, axis in enumerate("xyz"):
        frame[f"helio_{axis}"] = helio[:, i]
        frame[f"topo_{axis}"] = topo[:, i]
        frame[f"helio_v{axis}"] = helio_v[:, i]
        frame[f"topo_v{axis}"] = topo_v[:, i]
    return pd.DataFrame(frame)[EPHEMERIS_COLUMNS]


def sky_at_pixels(exposure: Exposure, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(ra, dec) in degrees of 0-based pixel positions on ``exposure``."""
    ra, dec = exposure.wcs.all_pix2world(np.asarray(x), np.asarray(y), 0)
    return np.asarray(ra), np.asarray(dec)
