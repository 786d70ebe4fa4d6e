"""What changes between exposures: variables, transients and movers at a time, and their truth.

:func:`dynamic_sky_at` lists every variable, transient and mover that exists at one time with its
true position and flux; :func:`render_exposure <apflow.sim.exposure.render_exposure>` draws it and
:func:`dia_truth` tabulates it per visit (``truth_dia``) together with the template's flux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core import Camera
from .movers import field_radius_deg, in_field, mover_state
from .transients import light_curve_flux, template_flux
from .visits import VisitParameters
from .wcs import sky_to_pixel

if TYPE_CHECKING:
    from .exposure import SkyModel

#: Columns of ``truth_dia`` in order.
DIA_TRUTH_COLUMNS: tuple[str, ...] = (
    "id",
    "kind",
    "visit",
    "midpointMjdTai",
    "band",
    "ra",
    "dec",
    "detector",
    "x",
    "y",
    "flux",
    "template_flux",
    "diff_flux",
    "ssObjectId",
    "designation",
)


def dynamic_sky_at(
    sky: SkyModel, mjd: float, band: str, exposure_time: float = 0.0
) -> pd.DataFrame:
    """Every variable, transient and mover of a :class:`~apflow.sim.exposure.SkyModel` at a time.

    Parameters
    ----------
    sky : SkyModel
    mjd : float
        MJD TAI (an exposure's midpoint).
    band : str
    exposure_time : float
        Seconds; movers also get their positions at ``mjd -+ exposure_time / 2`` (the ends of
        their trail).

    Returns
    -------
    pandas.DataFrame
        ``id``, ``kind`` ("variable", "transient", "known_mover", "unknown_mover"), ``ra``,
        ``dec`` (true, degrees), ``flux`` (nJy), ``ssObjectId`` (0 unless a known mover),
        ``designation`` ("" unless a known mover), ``ra_start``/``dec_start``/``ra_end``/
        ``dec_end`` (trail ends; equal to ``ra``/``dec`` for fixed objects).
    """
    parts = []
    table = sky.transients
    if table is not None and len(table):
        ra, dec = table["ra"].to_numpy(), table["dec"].to_numpy()
        parts.append(
            pd.DataFrame(
                {
                    "id": table["id"].to_numpy(),
                    "kind": table["kind"].to_numpy(),
                    "ra": ra,
                    "dec": dec,
                    "flux": light_curve_flux(table, mjd, band),
                    "ssObjectId": np.zeros(len(table), dtype=np.int64),
                    "designation": np.full(len(table), ""),
                    "ra_start": ra,
                    "dec_start": dec,
                    "ra_end": ra,
                    "dec_end": dec,
                }
            )
        )
    movers = sky.movers.at(mjd) if sky.movers is not None else None
    if movers is not None and len(movers):
        state = mover_state(movers, mjd)
        half = exposure_time / 2.0 / 86_400.0
        start = mover_state(movers, mjd - half) if half > 0 else state
        end = mover_state(movers, mjd + half) if half > 0 else state
        known = movers["known"].to_numpy()
        parts.append(
            pd.DataFrame(
                {
                    "id": movers["id"].to_numpy(),
                    "kind": np.where(known, "known_mover", "unknown_mover"),
                    "ra": state.ra,
                    "dec": state.dec,
                    "flux": state.flux(band),
                    "ssObjectId": movers["ssObjectId"].to_numpy(),
                    "designation": movers["designation"].to_numpy().astype(str),
                    "ra_start": start.ra,
                    "dec_start": start.dec,
                    "ra_end": end.ra,
                    "dec_end": end.dec,
                }
            )
        )
    if not parts:
        return empty_dynamic_frame()
    return pd.concat(parts, ignore_index=True)


def empty_dynamic_frame() -> pd.DataFrame:
    """A :func:`dynamic_sky_at` table without rows."""
    columns: dict[str, np.ndarray] = {"id": np.zeros(0, np.int64), "kind": np.zeros(0, str)}
    columns.update({c: np.zeros(0) for c in ("ra", "dec", "flux")})
    columns.update(ssObjectId=np.zeros(0, np.int64), designation=np.zeros(0, str))
    columns.update({c: np.zeros(0) for c in ("ra_start", "dec_start", "ra_end", "dec_end")})
    return pd.DataFrame(columns)


def dia_truth(
    sky: SkyModel,
    visits: list[VisitParameters],
    detectors: list[int],
    template_mjd: float | None,
) -> pd.DataFrame:
    """``truth_dia``: one row per (object, visit) for variables, transients and movers.

    Variables and transients get a row in every visit; movers in the visits whose field (the
    camera's footprint plus 1') they are in.

    Parameters
    ----------
    sky : SkyModel
    visits : list of VisitParameters
    detectors : list of int
        Simulated detectors: ``detector``, ``x``, ``y`` say where on them an object lands
        (-1, NaN, NaN when on none of them).
    template_mjd : float or None
        Epoch of the template (``template_flux``; 0 for every object without a template).

    Returns
    -------
    pandas.DataFrame
        :data:`DIA_TRUTH_COLUMNS`; fluxes in nJy at the visit midpoint, ``diff_flux = flux -
        template_flux``; sorted by visit and id.
    """
    camera: Camera = sky.camera
    radius = field_radius_deg(camera)
    frames = []
    for visit in visits:
        objs = sky.dynamic_at(visit.mjd, visit.band, visit.exposure_time)
        mover = objs["kind"].str.endswith("mover").to_numpy()
        inside = in_field(
            objs["ra"].to_numpy(), objs["dec"].to_numpy(), visit.boresight_ra,
            visit.boresight_dec, radius,
        )  # fmt: skip
        objs = objs[~mover | inside].reset_index(drop=True)
        det_of = np.full(len(objs), -1, dtype=np.int64)
        x_of = np.full(len(objs), np.nan)
        y_of = np.full(len(objs), np.nan)
        for det_id in detectors:
            det = camera[det_id]
            x, y = sky_to_pixel(
                camera, det, objs["ra"].to_numpy(), objs["dec"].to_numpy(),
                visit.boresight_ra, visit.boresight_dec, visit.rotation_angle,
            )  # fmt: skip
            on = det.contains_pixel(x, y) & (det_of < 0)
            det_of[on], x_of[on], y_of[on] = det_id, x[on], y[on]
        reference = np.zeros(len(objs))
        if template_mjd is not None and sky.transients is not None:
            fixed = ~objs["kind"].str.endswith("mover").to_numpy()
            lookup = sky.transients.set_index("id")
            rows = lookup.loc[objs["id"].to_numpy()[fixed]].reset_index()
            reference[fixed] = template_flux(rows, visit.band, template_mjd)
        flux = objs["flux"].to_numpy()
        frames.append(
            pd.DataFrame(
                {
                    "id": objs["id"].to_numpy(dtype=np.int64),
                    "kind": objs["kind"].to_numpy().astype(str),
                    "visit": np.full(len(objs), visit.visit, dtype=np.int64),
                    "midpointMjdTai": np.full(len(objs), visit.mjd),
                    "band": np.full(len(objs), visit.band),
                    "ra": objs["ra"].to_numpy(),
                    "dec": objs["dec"].to_numpy(),
                    "detector": det_of,
                    "x": x_of,
                    "y": y_of,
                    "flux": flux,
                    "template_flux": reference,
                    "diff_flux": flux - reference,
                    "ssObjectId": objs["ssObjectId"].to_numpy(dtype=np.int64),
                    "designation": objs["designation"].to_numpy().astype(str),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: [] for c in DIA_TRUTH_COLUMNS})
    out = pd.concat(frames, ignore_index=True)[list(DIA_TRUTH_COLUMNS)]
    return out.sort_values(["visit", "id"], kind="stable").reset_index(drop=True)
