"""Known inputs for alert packaging: one (visit, detector) with DiaSources, history and images.

Used by the tests, the benchmark (``benchmarks/alerts.py``) and for trying
:class:`~apflow.tasks.alerts.PackageAlertsTask` without running the upstream stages. The
geometry is a real camera detector with its exact TAN-SIP WCS (:mod:`apflow.sim.wcs`); images
are Gaussian noise in counts with ``photo_calib`` != 1, plus each DiaSource drawn as a PSF of
known nJy flux on the difference and science images, so cutouts can be checked against truth.
All catalogs go through :func:`apflow.apdb.schema.conform`, so they have the APDB's columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from ...apdb.ids import pack_source_ids
from ...apdb.schema import conform
from ...core import Exposure, PhotoCalib, VisitInfo
from ...core.camera import get_camera
from ...core.psf import GaussianPsf
from ...sim.wcs import true_wcs_header

BANDS = ("u", "g", "r", "i", "z", "y")


@dataclass
class AlertInputs:
    """Keyword arguments of ``PackageAlertsTask.run`` plus the truth they were made from.

    Attributes
    ----------
    inputs : dict
        ``dia_sources``, ``dia_objects``, ``dia_source_history``, ``dia_forced_sources``,
        ``ss_sources``, ``mpc_orbits``, ``diff_image``, ``calexp``, ``template``.
    flux_njy : numpy.ndarray
        True flux of each DiaSource (nJy), as drawn on the difference image.
    calibration : float
        nJy per count of the images.
    """

    inputs: dict[str, Any]
    flux_njy: np.ndarray
    calibration: float
    extra: dict[str, Any] = field(default_factory=dict)


def synthetic_alert_inputs(
    n_sources: int = 20,
    *,
    seed: int = 0,
    camera: str = "mini",
    detector: int = 4,
    visit: int = 4242,
    mjd: float = 61000.25,
    n_history: int = 4,
    sso_fraction: float = 0.2,
    calibration: float = 0.25,
    noise_counts: float = 20.0,
    edge_sources: int = 0,
) -> AlertInputs:
    """Build one (visit, detector) of alert-packaging inputs with known truth.

    Parameters
    ----------
    n_sources : int
        DiaSources on the detector.
    seed : int
        Random seed.
    camera, detector : str, int
        Built-in camera and detector whose exact WCS is used.
    visit, mjd : int, float
        Visit id and midpoint (MJD TAI).
    n_history : int
        Earlier DiaSources and forced sources per DiaObject, spread over the last 500 days so
        some fall outside a 12-month window.
    sso_fraction : float
        Share of DiaSources associated with a solar-system object (``diaObjectId`` NA,
        ``ssObjectId`` set, with SSSource and mpc_orbits rows).
    calibration : float
        nJy per count of all three images (``photo_calib``).
    noise_counts : float
        Pixel noise sigma in counts.
    edge_sources : int
        Extra DiaSources within 5 pixels of the image edge (partial cutouts).
    """
    rng = np.random.default_rng(seed)
    cam = get_camera(camera)
    det = cam[detector]
    width, height = det.shape[1], det.shape[0]
    rotation = 37.0
    wcs = WCS(fits.Header(true_wcs_header(cam, det, 150.0, -20.0, rotation)))
    n = n_sources + edge_sources
    x = rng.uniform(60, width - 60, n)
    y = rng.uniform(60, height - 60, n)
    if edge_sources:
        x[n_sources:] = rng.uniform(0, 5, edge_sources)
        y[n_sources:] = rng.uniform(60, height - 60, edge_sources)
    ra, dec = wcs.all_pix2world(x, y, 0)
    flux = rng.uniform(2_000, 50_000, n)  # nJy
    psf = GaussianPsf(fwhm=3.5)
    info = VisitInfo(
        visit=visit,
        band="r",
        physical_filter="r_sim",
        mjd=mjd,
        exposure_time=30.0,
        rotation_angle=rotation,
    )
    variance = np.full((height, width), noise_counts**2, dtype=np.float32)
    images = {}
    for kind in ("diff", "calexp", "template"):
        image = rng.normal(0.0, noise_counts, (height, width)).astype(np.float32)
        if kind != "template":
            _draw_psfs(image, psf, x, y, flux / calibration)
        images[kind] = Exposure(
            image=image,
            variance=variance,
            wcs=wcs,
            psf=psf,
            photo_calib=PhotoCalib(calibration),
            visit_info=info,
            detector=detector,
        )

    ids = pack_source_ids(visit, detector, np.arange(n))
    is_sso = rng.uniform(size=n) < sso_fraction
    object_ids = np.where(is_sso, 0, ids + 1_000_000)  # distinct from the DiaSource ids
    ss_object_ids = np.where(is_sso, 7_000_000 + np.arange(n), 0)
    err = np.sqrt(np.pi * (3.5 / 2.355) ** 2 * 4) * noise_counts * calibration
    sources = pd.DataFrame(
        {
            "diaSourceId": ids,
            "visit": visit,
            "detector": detector,
            "diaObjectId": pd.array(np.where(is_sso, None, object_ids), dtype="Int64"),
            "ssObjectId": pd.array(np.where(is_sso, ss_object_ids, None), dtype="Int64"),
            "midpointMjdTai": mjd,
            "ra": ra,
            "dec": dec,
            "x": x,
            "y": y,
            "psfFlux": flux,
            "psfFluxErr": np.full(n, err),
            "snr": flux / err,
            "band": "r",
            "psfNdata": 49,
            "trailNdata": 0,
            "dipoleNdata": 0,
            "timeProcessedMjdTai": mjd + 0.001,
            "bboxSize": rng.integers(12, 140, n),
        }
    )
    dia_sources = conform(sources, "DiaSource")

    obj_mask = ~is_sso
    objects = pd.DataFrame(
        {
            "diaObjectId": object_ids[obj_mask],
            "validityStartMjdTai": mjd - 500.0,
            "ra": ra[obj_mask],
            "dec": dec[obj_mask],
            "nDiaSources": n_history + 1,
            **{f"{b}_psfFluxNdata": 0 for b in BANDS},
            "r_psfFluxMean": flux[obj_mask],
        }
    )
    history_rows = []
    forced_rows = []
    days = np.linspace(499.0, 3.0, n_history) if n_history else np.array([])
    for k in np.flatnonzero(obj_mask):
        for j, age in enumerate(days):
            row = sources.iloc[k].to_dict()
            past_visit = visit - 1000 + 10 * j
            row |= {
                "diaSourceId": int(pack_source_ids(past_visit, detector, k)),
                "visit": past_visit,
                "midpointMjdTai": mjd - age,
                "timeProcessedMjdTai": mjd - age + 0.001,
                "ssObjectId": None,
            }
            history_rows.append(row)
            forced_rows.append(
                {
                    "diaForcedSourceId": int(pack_source_ids(past_visit, detector, k)),
                    "diaObjectId": int(object_ids[k]),
                    "ra": ra[k],
                    "dec": dec[k],
                    "visit": past_visit,
                    "detector": detector,
                    "psfFlux": flux[k] * 0.9,
                    "psfFluxErr": err,
                    "midpointMjdTai": mjd - age,
                    "timeProcessedMjdTai": mjd - age + 0.001,
                    "band": "r",
                }
            )
    history = pd.DataFrame(history_rows) if history_rows else sources.iloc[:0]
    forced = pd.DataFrame(forced_rows) if forced_rows else pd.DataFrame()

    sso_idx = np.flatnonzero(is_sso)
    designations = [f"2026 A{k:03d}" for k in sso_idx]
    ss_sources = pd.DataFrame(
        {
            "diaSourceId": ids[sso_idx],
            "ssObjectId": ss_object_ids[sso_idx],
            "designation": designations,
            "eclLambda": ra[sso_idx],
            "eclBeta": dec[sso_idx],
            "galLon": ra[sso_idx],
            "galLat": dec[sso_idx],
            "ephRa": ra[sso_idx],
            "ephDec": dec[sso_idx],
        }
    )
    mpc = pd.DataFrame(
        {
            "id": np.arange(len(sso_idx), dtype=np.int32),
            "designation": designations,
            "packed_primary_provisional_designation": [f"K26A{k:03d}" for k in sso_idx],
            "unpacked_primary_provisional_designation": designations,
            "q": rng.uniform(1.5, 3.5, len(sso_idx)),
            "e": rng.uniform(0.0, 0.3, len(sso_idx)),
            "i": rng.uniform(0.0, 20.0, len(sso_idx)),
            "epoch_mjd": mjd,
        }
    )
    return AlertInputs(
        inputs={
            "dia_sources": dia_sources,
            "dia_objects": conform(objects, "DiaObject"),
            "dia_source_history": conform(history, "DiaSource"),
            "dia_forced_sources": conform(forced, "DiaForcedSource"),
            "ss_sources": conform(ss_sources, "SSSource"),
            "mpc_orbits": conform(mpc, "mpc_orbits"),
            "diff_image": images["diff"],
            "calexp": images["calexp"],
            "template": images["template"],
        },
        flux_njy=flux,
        calibration=calibration,
        extra={"wcs": wcs, "is_sso": is_sso},
    )


def _draw_psfs(image: np.ndarray, psf: GaussianPsf, x: np.ndarray, y: np.ndarray, counts):
    height, width = image.shape
    for xk, yk, ck in zip(x, y, counts, strict=True):
        stamp = psf.compute_image(xk, yk)
        half = stamp.shape[0] // 2
        ix, iy = round(xk), round(yk)
        x0, y0 = ix - half, iy - half
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1 = stamp.shape[1] - max(0, x0 + stamp.shape[1] - width)
        sy1 = stamp.shape[0] - max(0, y0 + stamp.shape[0] - height)
        image[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += ck * stamp[sy0:sy1, sx0:sx1]
