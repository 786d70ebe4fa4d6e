"""APDB rows of one synthetic (visit, detector)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from apflow.apdb.ids import pack_source_ids


def ccd_rows(
    visit: int, detector: int, n: int = 5, *, ra0: float = 10.0, dec0: float = -5.0
) -> dict[str, pd.DataFrame]:
    """DiaObjects (one new per source), DiaSources, forced sources and one SSSource of a CCD.

    Values exercise every storage path: NaN floats, NA and True/False booleans, strings, ids
    above 2**53 (visit 2**30 makes them so).
    """
    rng = np.random.default_rng(visit * 1000 + detector)
    ids = pack_source_ids(visit, detector, np.arange(n))
    mjd = 60000.0 + visit / 100.0
    ra = ra0 + detector * 0.1 + rng.uniform(0, 0.01, n)
    dec = dec0 + rng.uniform(0, 0.01, n)
    flux = rng.normal(500.0, 100.0, n).astype(np.float32)
    flux[0] = np.nan
    flag = pd.array([True, False] + [None] * (n - 2), dtype="boolean")
    sources = pd.DataFrame(
        {
            "diaSourceId": ids,
            "visit": visit,
            "detector": detector,
            "diaObjectId": ids,
            "midpointMjdTai": mjd,
            "ra": ra,
            "dec": dec,
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "psfFlux": flux,
            "psfFluxErr": np.float32(20.0),
            "centroid_flag": flag,
            "psfNdata": 25,
            "trailNdata": 0,
            "dipoleNdata": 0,
            "bboxSize": 15,
            "band": "g",
            "reliabilityVersion": "v1.2",
            "timeProcessedMjdTai": mjd + 0.01,
        }
    )
    sources.loc[0, "diaObjectId"] = 0  # the SSO-associated one
    sources["ssObjectId"] = pd.array([12345] + [None] * (n - 1), dtype="Int64")
    objects = pd.DataFrame(
        {
            "diaObjectId": ids[1:],
            "validityStartMjdTai": mjd,
            "ra": ra[1:],
            "dec": dec[1:],
            "nDiaSources": 1,
            "g_psfFluxMean": flux[1:],
            **{f"{b}_psfFluxNdata": int(b == "g") for b in "ugrizy"},
        }
    )
    forced = pd.DataFrame(
        {
            "diaForcedSourceId": pack_source_ids(visit, detector, np.arange(n - 1)),
            "diaObjectId": ids[1:],
            "ra": ra[1:],
            "dec": dec[1:],
            "visit": visit,
            "detector": detector,
            "psfFlux": flux[1:],
            "psfFluxErr": np.float32(20.0),
            "midpointMjdTai": mjd,
            "band": "g",
            "timeProcessedMjdTai": mjd + 0.01,
        }
    )
    ss = pd.DataFrame(
        {
            "diaSourceId": ids[:1],
            "ssObjectId": [12345],
            "designation": ["2026 AB"],
            "eclLambda": 1.0,
            "eclBeta": 2.0,
            "galLon": 3.0,
            "galLat": 4.0,
        }
    )
    return {
        "dia_objects": objects,
        "dia_sources": sources,
        "dia_forced_sources": forced,
        "ss_sources": ss,
    }
