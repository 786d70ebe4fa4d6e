"""Write a complete simulated repository: exposures, reference catalog, coadds and every truth.

Datasets written (dimensions; storage):

- ``post_isr`` (visit, detector; exposure), or ``post_isr_snap`` (visit, detector, snap) when
  ``n_snaps > 1``: counts, initial TAN WCS, true PSF, visit info, no photo-calib.
- ``ref_cat`` ((); dataframe): see :func:`~apflow.sim.catalog.make_reference_catalog`.
- ``deep_coadd`` (tract, patch, band; exposure) and ``coadd_ref`` (tract, patch; dataframe).
- ``truth_sources`` ((); dataframe): every source (:data:`~apflow.sim.catalog.SOURCE_COLUMNS`).
- ``truth_visits`` ((); dataframe): one row per visit (the fields of
  :class:`~apflow.sim.visits.VisitParameters`) plus ``sky_mean_focal_plane``, the mean expected
  sky (counts per pixel, whole visit) over the simulated detectors.
- ``truth_exposures`` ((); dataframe): one row per (visit, detector, snap): zero point, PSF FWHM
  (centre/min/max, arcsec), sky level at the detector centre and mean sky (counts), numbers of
  stars and galaxies, saturated pixels, bad columns.
- ``truth_wcs`` (visit, detector; json): FITS cards of the exact TAN-SIP WCS.
- ``truth_sky_frame`` (detector; arrays): ``pattern`` (float32, full resolution) and
  ``pattern_binned32`` (32-px block means), the fixed sky pattern ``P`` (fraction of the sky).
- ``truth_coadd`` (tract, patch, band; dataframe): see :func:`~apflow.sim.coadd.coadd_truth`.
- ``template`` (tract, patch, band; exposure): deep, sharp templates of the visits' band at an
  epoch before the run (:mod:`apflow.sim.template`), unless ``templates=False``.
- ``ss_ephemeris`` (visit; dataframe): predicted positions and geometry of the known movers in
  the field (:data:`~apflow.sim.movers.EPHEMERIS_COLUMNS`).
- ``truth_dia`` ((); dataframe): variables, transients and movers per visit
  (:func:`~apflow.sim.dynamic.dia_truth`).
- ``truth_summary`` ((); json): what :func:`simulate` returns.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from ..core import Camera, get_camera
from ..errors import ConfigError
from .background import bin_image
from .coadd import coadd_reference, coadd_truth, make_tract, render_coadd
from .config import BANDS, SimConfig
from .dynamic import dia_truth
from .exposure import SkyModel, render_exposure
from .movers import ephemeris, field_radius_deg
from .template import render_template, template_mjd

#: Truth dataset types the simulator registers beyond the repository's built-ins.
TRUTH_DATASET_TYPES: dict[str, tuple[list[str], str]] = {
    "truth_exposures": ([], "dataframe"),
    "truth_coadd": (["tract", "patch", "band"], "dataframe"),
    "truth_summary": ([], "json"),
    "truth_dia": ([], "dataframe"),
}
SKY_FRAME_BIN = 32


def simulate(
    url: str,
    camera: str | Camera = "mini",
    n_visits: int = 10,
    seed: int = 0,
    band: str = "r",
    n_snaps: int = 1,
    coadds: bool = True,
    *,
    detectors: list[int] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Simulate a survey field and write it, with its truth, to a repository.

    Parameters
    ----------
    url : str
        Repository root (path, ``file://``, ``memory://``, ...); created when missing.
    camera : str or Camera
        Built-in camera name or a camera; must match an existing repository's camera.
    n_visits : int
        Number of visits (ids 1..n_visits), 30 s each by default.
    seed : int
        Master seed: the same seed gives bit-identical outputs.
    band : str
        Band of the visits (``g``, ``r`` or ``i``).
    n_snaps : int
        1 writes ``post_isr``; 2 (or more) writes ``post_isr_snap`` with the exposure split.
    coadds : bool
        Also write ``deep_coadd``, ``coadd_ref`` and ``truth_coadd``.
    detectors : list of int, optional
        Restrict to these detectors (default: all).
    overwrite : bool
        Replace datasets that already exist.
    **options
        :class:`~apflow.sim.config.SimConfig` fields, e.g. ``star_density=1e5``.

    Returns
    -------
    dict
        JSON-serialisable summary: ``seed``, ``camera``, ``band``, ``n_snaps``, ``written``
        (dataset type -> count), ``n_sources``/``n_stars``/``n_galaxies``/``n_ref``,
        ``visits`` (list of per-visit truth dicts), ``tract`` geometry, ``elapsed_s``.

    Raises
    ------
    ConfigError
        On an unknown option, band, or a camera that differs from the repository's.
    """
    from ..io import Repository  # the simulator's only storage dependency

    start = time.perf_counter()
    if band not in BANDS:
        raise ConfigError(f"simulate: band {band!r} not in {BANDS}")
    if n_snaps < 1 or n_visits < 1:
        raise ConfigError("simulate: n_visits and n_snaps must be >= 1")
    config = SimConfig().updated(**options)  # before touching storage: bad options raise first
    cam = get_camera(camera) if isinstance(camera, str) else camera
    repo = Repository.create(url, camera=cam, exist_ok=True)
    if repo.camera.name != cam.name:
        raise ConfigError(
            f"simulate: repository {url} has camera {repo.camera.name!r}, not {cam.name!r}"
        )
    for name, (dims, storage) in TRUTH_DATASET_TYPES.items():
        repo.register_dataset_type(name, dims, storage)

    sky = SkyModel.generate(repo.camera, seed=seed, config=config)
    provenance = {
        "producer": "apflow.sim.simulate",
        "seed": int(seed),
        "sim_config": config.to_dict(),
    }
    written: dict[str, int] = {}

    def put(obj: Any, dataset_type: str, **data_id: Any) -> None:
        repo.put(obj, dataset_type, overwrite=overwrite, provenance=provenance, **data_id)
        written[dataset_type] = written.get(dataset_type, 0) + 1

    visits = sky.visits(n_visits, band)
    ref_cat = sky.reference_catalog()
    put(ref_cat, "ref_cat")
    put(sky.catalog, "truth_sources")

    det_ids = repo.camera.detector_ids if detectors is None else [int(d) for d in detectors]
    exposure_rows = []
    for det_id in det_ids:
        detector = repo.camera[det_id]
        pattern, description = sky.sky_pattern(detector)
        put(_sky_frame_truth(pattern, description), "truth_sky_frame", detector=det_id)
        for visit in visits:
            snaps = [None] if n_snaps == 1 else list(range(n_snaps))
            for snap in snaps:
                sim = render_exposure(sky, visit, detector, snap=snap, n_snaps=n_snaps)
                if snap is None:
                    put(sim.exposure, "post_isr", visit=visit.visit, detector=det_id)
                else:
                    put(
                        sim.exposure, "post_isr_snap", visit=visit.visit, detector=det_id, snap=snap
                    )
                exposure_rows.append(sim.truth)
            put(dict(sim.true_wcs), "truth_wcs", visit=visit.visit, detector=det_id)
    exposures = pd.DataFrame(exposure_rows)
    put(exposures, "truth_exposures")
    truth_visits = pd.DataFrame([v.to_dict() for v in visits])
    # mean expected sky over the simulated detectors (counts per pixel per visit)
    sky_mean = exposures.groupby("visit")["sky_mean"].mean() * n_snaps
    truth_visits["sky_mean_focal_plane"] = truth_visits["visit"].map(sky_mean)
    put(truth_visits, "truth_visits")

    n_ephemeris = 0
    if sky.movers is not None:
        radius = field_radius_deg(repo.camera)
        for visit in visits:
            eph = ephemeris(sky.movers, visit.mjd, visit.boresight_ra, visit.boresight_dec, radius)
            put(eph, "ss_ephemeris", visit=visit.visit)
            n_ephemeris += len(eph)
    reference_mjd = template_mjd(config) if config.templates else None
    truth_dia = dia_truth(sky, visits, det_ids, reference_mjd)
    put(truth_dia, "truth_dia")

    tract = make_tract(repo.camera, visits, config) if coadds or config.templates else None
    tract_info = tract.to_dict() if tract is not None else None
    if config.templates:
        for patch in range(tract.n_patches):
            template = render_template(
                tract, patch, band, sky.catalog, sky.transients, config, seed
            )
            put(template, "template", tract=0, patch=patch, band=band)
    if coadds:
        for patch in range(tract.n_patches):
            put(
                coadd_reference(tract, patch, sky.catalog, config),
                "coadd_ref",
                tract=0,
                patch=patch,
            )
            for coadd_band in config.coadd_bands:
                coadd = render_coadd(tract, patch, coadd_band, sky.catalog, config, seed)
                put(coadd, "deep_coadd", tract=0, patch=patch, band=coadd_band)
                truth = coadd_truth(tract, patch, coadd_band, sky.catalog, config)
                put(truth, "truth_coadd", tract=0, patch=patch, band=coadd_band)

    summary = {
        "repository": str(url),
        "camera": repo.camera.name,
        "seed": int(seed),
        "band": band,
        "n_visits": int(n_visits),
        "n_snaps": int(n_snaps),
        "detectors": det_ids,
        "n_sources": int(len(sky.catalog)),
        "n_stars": int(sky.catalog["is_star"].sum()),
        "n_galaxies": int((~sky.catalog["is_star"]).sum()),
        "n_ref": int(len(ref_cat)),
        "visits": [v.to_dict() for v in visits],
        "tract": tract_info,
        "dia": _dia_counts(truth_dia, n_ephemeris),
        "template": (
            {"band": band, "mjd": reference_mjd, "fwhm_arcsec": config.template_fwhm_arcsec}
            if config.templates
            else None
        ),
        "config": config.to_dict(),
    }
    written["truth_summary"] = 1
    summary["written"] = dict(written)
    summary["elapsed_s"] = round(time.perf_counter() - start, 3)
    repo.put(summary, "truth_summary", overwrite=True, provenance=provenance)
    return summary


def _dia_counts(truth_dia: pd.DataFrame, n_ephemeris: int) -> dict[str, int]:
    """Objects of each kind in ``truth_dia`` (and on a simulated CCD), and ephemeris rows."""
    counts: dict[str, int] = {"ss_ephemeris_rows": int(n_ephemeris), "rows": len(truth_dia)}
    for kind in ("variable", "transient", "known_mover", "unknown_mover"):
        rows = truth_dia[truth_dia["kind"] == kind]
        counts[f"n_{kind}s"] = int(rows["id"].nunique())
        counts[f"n_{kind}s_on_ccd"] = int(rows.loc[rows["detector"] >= 0, "id"].nunique())
    return counts


def _sky_frame_truth(pattern: np.ndarray, description: dict[str, Any]) -> dict[str, Any]:
    """Arrays (and attributes) of ``truth_sky_frame``."""
    from ..io import ArrayBundle

    arrays = {
        "pattern": np.asarray(pattern, dtype=np.float32),
        "pattern_binned32": bin_image(pattern, SKY_FRAME_BIN).astype(np.float32),
    }
    attrs = {
        **description,
        "bin_size": SKY_FRAME_BIN,
        "definition": (
            "sky = sky_level * G_visit(focal plane) * (1 + pattern); a sky frame (residual after "
            "the focal-plane background, divided by the visit scale) approximates pattern minus "
            "its part on scales of the focal-plane superpixels"
        ),
    }
    return ArrayBundle(arrays=arrays, attrs=attrs)
