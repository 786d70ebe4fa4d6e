"""Rows of the APDB ``SSSource`` table from matched (DiaSource, ephemeris) pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord

from ...apdb.schema import conform, empty_frame

#: Ephemeris columns copied unchanged into ``SSSource`` (same name, same unit).
COPIED_COLUMNS: tuple[str, ...] = (
    "designation",
    "ephRa",
    "ephDec",
    "ephVmag",
    "ephRateRa",
    "ephRateDec",
    "elongation",
    "phaseAngle",
    "topoRange",
    "topoRangeRate",
    "helioRange",
    "helioRangeRate",
    *(f"{frame}_{axis}" for frame in ("helio", "topo") for axis in ("x", "y", "z")),
    *(f"{frame}_v{axis}" for frame in ("helio", "topo") for axis in ("x", "y", "z")),
)


def empty_ss_source() -> pd.DataFrame:
    """A zero-row ``SSSource`` frame with the APDB columns and dtypes."""
    return empty_frame("SSSource")


def ss_source_rows(
    sources: pd.DataFrame,
    ephemerides: pd.DataFrame,
    distance_arcsec: np.ndarray,
    *,
    dataset: str | None = None,
) -> pd.DataFrame:
    """``SSSource`` rows of matched pairs, conformed to the APDB schema.

    Parameters
    ----------
    sources : pandas.DataFrame
        The matched DiaSources (``diaSourceId``, ``ra``, ``dec`` in deg), one row per pair.
    ephemerides : pandas.DataFrame
        The matched ephemeris rows, aligned with ``sources`` (``ss_ephemeris`` columns).
    distance_arcsec : numpy.ndarray
        Angular distance of each pair (arcsec), which becomes ``ephOffset``.
    dataset : str, optional
        Name used in schema error messages.

    Returns
    -------
    pandas.DataFrame
        Offsets are observed minus predicted in arcsec, the RA one multiplied by cos(ephDec) so
        that both are on-sky lengths; along/cross-track offsets project that vector on the unit
        rate vector and on its +90 deg rotation (towards +Dec for eastward motion), and are NaN
        when the predicted rate is zero or unknown. Galactic and ecliptic coordinates are of
        the observed (DiaSource) position, as the SDM defines them. Columns the ephemeris does
        not provide are NaN.
    """
    n = len(sources)
    if n == 0:
        return empty_ss_source()
    src_ra = sources["ra"].to_numpy(dtype=np.float64)
    src_dec = sources["dec"].to_numpy(dtype=np.float64)
    out: dict[str, np.ndarray] = {
        "diaSourceId": sources["diaSourceId"].to_numpy(dtype=np.int64),
        "ssObjectId": ephemerides["ssObjectId"].to_numpy(dtype=np.int64),
    }
    for name in COPIED_COLUMNS:
        if name in ephemerides.columns:
            out[name] = ephemerides[name].to_numpy()
        elif name != "designation":
            out[name] = np.full(n, np.nan)
    eph_ra = ephemerides["ephRa"].to_numpy(dtype=np.float64)
    eph_dec = ephemerides["ephDec"].to_numpy(dtype=np.float64)

    # Wrap the RA difference so that a pair straddling RA = 0 gives a small offset.
    delta_ra = np.mod(src_ra - eph_ra + 180.0, 360.0) - 180.0
    offset_ra = delta_ra * np.cos(np.radians(eph_dec)) * 3600.0
    offset_dec = (src_dec - eph_dec) * 3600.0
    rate_ra = np.asarray(out["ephRateRa"], dtype=np.float64)
    rate_dec = np.asarray(out["ephRateDec"], dtype=np.float64)
    rate = np.hypot(rate_ra, rate_dec)
    moving = rate > 0
    along = np.full(n, np.nan)
    cross = np.full(n, np.nan)
    along[moving] = (
        offset_ra[moving] * rate_ra[moving] + offset_dec[moving] * rate_dec[moving]
    ) / rate[moving]
    cross[moving] = (
        -offset_ra[moving] * rate_dec[moving] + offset_dec[moving] * rate_ra[moving]
    ) / rate[moving]
    out.update(
        ephRate=rate,
        ephOffset=np.asarray(distance_arcsec, dtype=np.float64),
        ephOffsetRa=offset_ra,
        ephOffsetDec=offset_dec,
        ephOffsetAlongTrack=along,
        ephOffsetCrossTrack=cross,
        diaDistanceRank=np.ones(n, dtype=np.int16),
    )
    for frame in ("helio", "topo"):
        velocity = np.column_stack(
            [np.asarray(out[f"{frame}_v{axis}"], dtype=np.float64) for axis in "xyz"]
        )
        out[f"{frame}_vtot"] = np.sqrt(np.sum(velocity**2, axis=1))

    observed = SkyCoord(ra=src_ra * u.deg, dec=src_dec * u.deg, frame="icrs")
    galactic = observed.galactic
    ecliptic = observed.barycentrictrueecliptic
    out.update(
        galLon=galactic.l.deg,
        galLat=galactic.b.deg,
        eclLambda=ecliptic.lon.deg,
        eclBeta=ecliptic.lat.deg,
    )
    return conform(pd.DataFrame(out), "SSSource", dataset=dataset)
