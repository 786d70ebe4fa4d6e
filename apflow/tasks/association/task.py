"""AssociationTask: DiaSources of one (visit, detector) to DiaObjects in the APDB, with forced photometry.

The pipeline stage after SSO association (Rubin's ``DiaPipelineTask`` association and DiaObject
update, with the forced photometry of ``DiaForcedTask``). Per (visit, detector):

1. **SSO sources.** A DiaSource that SSO association matched (its ``diaSourceId`` has a row in
   ``ss_source``) gets that ``ssObjectId`` and ``diaObjectId = 0``: it neither creates nor joins a
   DiaObject, as in Rubin.
2. **Candidates.** The current DiaObjects of the APDB around the CCD (cone from the calexp WCS and
   shape, padded) that existed *before this visit* (first DiaSource earlier than its midpoint),
   at their position *as of this visit*: the mean of their DiaSources earlier than its midpoint.
3. **Matching.** The other DiaSources are matched one-to-one to the candidates within
   ``match_radius_arcsec``, nearest pairs first (:func:`.matching.match_greedy`). A source left
   unmatched creates a DiaObject whose id is its own ``diaSourceId``. Negative sources associate
   like positive ones (a source fainter than the template is variability). A dipole is one
   DiaSource at its centroid (the DIA stage merges the positive and negative lobes) and
   associates as such: its net ``psfFlux`` enters the object's statistics, and no lobe ever
   becomes a DiaObject of its own.
4. **Forced photometry** on the difference image (``psfFlux``) and on the calexp
   (``scienceFlux``) with :func:`apflow.tasks.dia.forced.psf_flux_at`, for every candidate inside
   the CCD with a DiaSource in the last ``history_days`` and every object of this CCD's
   DiaSources, at the object's position including this CCD's new sources. Rows are
   DiaForcedSources with ids ``pack_source_ids(visit, detector, k)``, ``k`` the rank of the
   ``diaObjectId`` (their own id space).
5. **Summaries.** Every DiaObject touched (matched, created, forced-photometered, or referenced by
   a previous run of this (visit, detector)) is recomputed from *all* its DiaSources and
   DiaForcedSources in the APDB, with this CCD's new rows replacing its old ones
   (:func:`.summaries.dia_object_summaries`).
6. **One write.** :meth:`apflow.apdb.Apdb.store` writes everything in one transaction.

This task is the one that talks to storage directly (DESIGN's "tasks never do I/O" has this
exception, as Rubin's ``DiaPipelineTask`` has): the APDB is shared state between quanta, not a
dataset of one quantum.

Ordering and reruns
-------------------
Association assumes that visits covering the same sky are processed in time order (midpoint MJD):
a visit sees the DiaObjects made by earlier ones. The engine enforces that with a per-visit
barrier (all CCDs of a visit finish their association before the next visit's start); CCDs of one
visit run in parallel and do not see each other's new objects (they do not overlap on the sky).

Everything a run reads is "as of" its visit's midpoint (candidates and their positions come from
earlier DiaSources only) and everything it writes is either this CCD's own rows or summaries over
all stored sources. So rerunning a visit -- also an *old* one after newer visits were processed --
with the same inputs rewrites identical rows and leaves the APDB unchanged. A rerun with
*different* inputs replaces this CCD's rows and updates the summaries of the objects involved;
later visits are not re-associated (their DiaSources keep their objects; an object that lost its
last DiaSource is deleted with its forced sources).

Known limitation: the read (candidates, histories) and the write are separate transactions. Two
CCDs of one visit that touch the *same* DiaObject (a source at the edge of one CCD matching an
object just inside the next one, which that CCD forced-photometers) both rewrite its summary, and
the later write misses the other CCD's row until the object's next update. The rows themselves
(DiaSources, DiaForcedSources) are never lost; only that summary lags by one visit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from astropy.time import Time

from ...apdb.ids import pack_source_ids
from ...apdb.schema import column_names, conform, empty_frame
from ...apdb.store import Apdb
from ...core import Exposure
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task, TaskConfig
from ..dia.forced import psf_flux_at
from .matching import match_greedy
from .summaries import dia_object_summaries, mean_positions


@dataclass
class AssociationConfig(TaskConfig):
    """Configuration of :class:`AssociationTask`.

    Attributes
    ----------
    apdb_url : str
        SQLAlchemy URL of the APDB (``postgresql+psycopg://...``, ``sqlite:////path``). Empty:
        the repository's default SQLite file ``<repo>/apdb/apdb.sqlite3``. Default "".
    match_radius_arcsec : float
        Largest DiaSource-DiaObject separation of a match. Default 1.0 (Rubin's
        ``maxDistArcSeconds``).
    history_days : float
        DiaObjects without a DiaSource in this many days before the visit are no longer
        forced-photometered (Rubin: 12 months). Default 365.0.
    region_padding_arcsec : float
        Margin added to the CCD's circumscribed circle when loading DiaObjects, so that sources
        at the edge can match objects just outside. Default 10.0 (apflow).
    """

    apdb_url: str = ""
    match_radius_arcsec: float = 1.0
    history_days: float = 365.0
    region_padding_arcsec: float = 10.0

    def validate(self) -> None:
        for name in ("match_radius_arcsec", "history_days", "region_padding_arcsec"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"AssociationConfig.{name} must be positive, got {value!r}")
        if not isinstance(self.apdb_url, str):
            raise ConfigError(f"AssociationConfig.apdb_url must be a string: {self.apdb_url!r}")


@dataclass
class AssociationResult:
    """What one (visit, detector) wrote to the APDB.

    Attributes
    ----------
    dia_association : pandas.DataFrame
        The DiaSources as stored (DiaSource schema) with ``diaObjectId`` (0 for SSO sources) and
        ``ssObjectId`` set.
    dia_objects : pandas.DataFrame
        The DiaObject rows written (every object touched, current summaries).
    dia_forced_sources : pandas.DataFrame
        The DiaForcedSource rows written.
    ss_sources : pandas.DataFrame
        The SSSource rows written.
    apdb_url : str
    n_matched, n_new, n_sso : int
        DiaSources that joined an existing DiaObject, created one, or are SSO-associated.
    store_report : dict
        :meth:`~apflow.apdb.Apdb.store`'s report (rows, removed orphans, attempts, seconds).
    """

    dia_association: pd.DataFrame
    dia_objects: pd.DataFrame
    dia_forced_sources: pd.DataFrame
    ss_sources: pd.DataFrame
    apdb_url: str
    n_matched: int = 0
    n_new: int = 0
    n_sso: int = 0
    store_report: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Small JSON numbers for the run report and provenance."""
        return {
            "n_dia_sources": len(self.dia_association),
            "n_matched": self.n_matched,
            "n_new_dia_objects": self.n_new,
            "n_sso": self.n_sso,
            "n_dia_objects_updated": len(self.dia_objects),
            "n_dia_forced_sources": len(self.dia_forced_sources),
            "n_dia_objects_removed": int(self.store_report.get("dia_objects_removed", 0)),
            "store_attempts": int(self.store_report.get("attempts", 0)),
            "store_seconds": float(self.store_report.get("seconds", 0.0)),
        }


class AssociationTask(Task):
    """Associate a CCD's DiaSources with DiaObjects and update the APDB (module docstring)."""

    ConfigClass = AssociationConfig
    config: AssociationConfig

    def run(
        self,
        dia_source: pd.DataFrame,
        diff_image: Exposure,
        calexp: Exposure,
        ss_source: pd.DataFrame | None = None,
        data_id: Mapping[str, Any] | None = None,
        repo_url: str | None = None,
    ) -> AssociationResult:
        """Associate, forced-photometer and store one (visit, detector).

        Parameters
        ----------
        dia_source : pandas.DataFrame
            DiaSources of the (visit, detector) (APDB DiaSource columns, nJy, degrees).
        diff_image : Exposure
            The difference image (PSF, WCS, variance; ``visit_info`` gives midpoint and band).
        calexp : Exposure
            The calibrated science exposure (the CCD footprint, and ``scienceFlux``).
        ss_source : pandas.DataFrame, optional
            SSSource rows of SSO-associated DiaSources (``diaSourceId``, ``ssObjectId``, ...);
            columns outside the APDB SSSource table are not stored.
        data_id : mapping, optional
            ``visit`` and ``detector`` (else taken from the exposures).
        repo_url : str, optional
            Repository root, for the default APDB when ``config.apdb_url`` is empty (the engine
            passes it).

        Returns
        -------
        AssociationResult

        Raises
        ------
        ConfigError
            No APDB URL can be worked out, or the inputs do not fit the schema.
        TaskError
            Inputs without the WCS, PSF or midpoint the association needs.
        """
        visit, detector = _visit_detector(data_id, diff_image, calexp)
        where = format_data_id({"visit": visit, "detector": detector})
        apdb = Apdb.create(
            Apdb.resolve(self.config.apdb_url, repo_url, f"association [{where}]").url
        )
        midpoint, band = _midpoint_and_band(diff_image, calexp, dia_source, where)
        if calexp.wcs is None or diff_image.wcs is None:
            raise TaskError(f"association [{where}]: the calexp and diff_image need a WCS")

        sources = conform(dia_source, "DiaSource", dataset=f"dia_source [{where}]")
        ss_rows = _ss_rows(ss_source, where)
        sources = _with_ss_objects(sources, ss_rows)
        is_sso = sources["ssObjectId"].notna().to_numpy()
        if band is not None:
            sources["band"] = sources["band"].where(sources["band"].notna(), band)

        candidates, history = self._candidates(apdb, calexp, midpoint)
        src_idx, obj_idx, _ = match_greedy(
            sources["ra"].to_numpy()[~is_sso],
            sources["dec"].to_numpy()[~is_sso],
            candidates["ra"].to_numpy(),
            candidates["dec"].to_numpy(),
            self.config.match_radius_arcsec,
        )
        # SSO sources get 0, unmatched ones their own id (a new DiaObject), matched ones the
        # candidate's id.
        free = np.flatnonzero(~is_sso)
        object_ids = np.zeros(len(sources), dtype=np.int64)
        object_ids[free] = sources["diaSourceId"].to_numpy(dtype=np.int64)[free]
        object_ids[free[src_idx]] = candidates.index.to_numpy(dtype=np.int64)[obj_idx]
        sources["diaObjectId"] = pd.array(object_ids, dtype="Int64")
        associated = sources

        own = associated[~is_sso]
        previous = apdb.dia_sources_for_visit(visit, detector)
        previous_objects = {int(i) for i in previous["diaObjectId"].dropna() if int(i) != 0}
        new_ids = set(own["diaObjectId"].astype(np.int64).tolist())
        extra_ids = (new_ids | previous_objects) - set(history["diaObjectId"].astype(np.int64))
        if extra_ids:
            history = pd.concat([history, apdb.dia_sources_for_objects(extra_ids)])
        others = history[(history["visit"] != visit) | (history["detector"] != detector)]

        forced_ids = self._forced_objects(candidates, diff_image, midpoint) | new_ids
        forced_positions = _positions_with_new(others, own, forced_ids, midpoint)
        stored_forced = apdb.dia_forced_sources_for_objects(forced_ids | previous_objects | new_ids)
        this_ccd = (stored_forced["visit"] == visit) & (stored_forced["detector"] == detector)
        processed = _time_processed(associated, stored_forced[this_ccd])
        forced = _forced_photometry(
            forced_positions, diff_image, calexp, visit, detector, midpoint, band, processed
        )

        touched = new_ids | previous_objects | forced_ids
        summary_sources = pd.concat([others[others["diaObjectId"].isin(touched)], own])
        summary_forced = pd.concat([stored_forced[~this_ccd], forced])
        dia_objects = dia_object_summaries(summary_sources, summary_forced)

        report = apdb.store(
            visit,
            detector,
            dia_objects=dia_objects,
            dia_sources=associated,
            dia_forced_sources=forced,
            ss_sources=ss_rows,
        )
        return AssociationResult(
            dia_association=associated,
            dia_objects=dia_objects,
            dia_forced_sources=forced,
            ss_sources=ss_rows,
            apdb_url=apdb.url,
            n_matched=int(src_idx.size),
            n_new=int((~is_sso).sum() - src_idx.size),
            n_sso=int(is_sso.sum()),
            store_report=report,
        )

    # --- steps ------------------------------------------------------------------------------

    def _candidates(
        self, apdb: Apdb, calexp: Exposure, midpoint: float
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """DiaObjects that existed before ``midpoint`` around the CCD, at their as-of positions.

        Returns the candidates (index ``diaObjectId``; ``ra``, ``dec``, ``last_seen``) and all
        stored DiaSources of the loaded objects.
        """
        ra0, dec0, radius = _ccd_cone(calexp)
        radius += self.config.region_padding_arcsec / 3600.0
        loaded = apdb.dia_objects_in_region(ra0, dec0, radius)
        first = loaded["firstDiaSourceMjdTai"].to_numpy(dtype=np.float64)
        # An object first seen at or after this visit did not exist for it (a rerun of an old
        # visit must not see objects made by later ones, nor by this one's previous run).
        ids = loaded["diaObjectId"].to_numpy()[~(first >= midpoint)]
        history = apdb.dia_sources_for_objects(ids)
        earlier = history[history["midpointMjdTai"] < midpoint]
        candidates = mean_positions(earlier)
        candidates["last_seen"] = earlier.groupby("diaObjectId")["midpointMjdTai"].max()
        return candidates, history

    def _forced_objects(
        self, candidates: pd.DataFrame, diff_image: Exposure, midpoint: float
    ) -> set[int]:
        """Candidates inside the CCD that had a DiaSource within ``history_days``."""
        if candidates.empty:
            return set()
        recent = candidates[candidates["last_seen"] >= midpoint - self.config.history_days]
        if recent.empty:
            return set()
        x, y = diff_image.wcs.world_to_pixel_values(
            recent["ra"].to_numpy(), recent["dec"].to_numpy()
        )
        inside = _inside(diff_image, np.asarray(x), np.asarray(y))
        return {int(i) for i in recent.index.to_numpy()[inside]}


# --- helpers --------------------------------------------------------------------------------


def _visit_detector(
    data_id: Mapping[str, Any] | None, diff_image: Exposure, calexp: Exposure
) -> tuple[int, int]:
    data_id = dict(data_id or {})
    visit = data_id.get("visit")
    detector = data_id.get("detector")
    for exposure in (diff_image, calexp):
        if visit is None and exposure.visit_info is not None:
            visit = exposure.visit_info.visit
        if detector is None and exposure.detector is not None:
            detector = exposure.detector
    if visit is None or detector is None:
        raise TaskError(
            f"association [{format_data_id(data_id)}]: no visit/detector in the data id or the "
            "exposures"
        )
    return int(visit), int(detector)


def _midpoint_and_band(
    diff_image: Exposure, calexp: Exposure, dia_source: pd.DataFrame, where: str
) -> tuple[float, str | None]:
    midpoint, band = float("nan"), None
    for exposure in (diff_image, calexp):
        info = exposure.visit_info
        if info is not None:
            if not math.isfinite(midpoint) and math.isfinite(info.mjd):
                midpoint = float(info.mjd)
            band = band or info.band or None
    if not math.isfinite(midpoint) and len(dia_source) and "midpointMjdTai" in dia_source:
        midpoint = float(dia_source["midpointMjdTai"].iloc[0])
    if not math.isfinite(midpoint):
        raise TaskError(f"association [{where}]: no exposure midpoint (visit_info.mjd)")
    return midpoint, band


def _ss_rows(ss_source: pd.DataFrame | None, where: str) -> pd.DataFrame:
    if ss_source is None or ss_source.empty:
        return empty_frame("SSSource")
    keep = [c for c in column_names("SSSource") if c in ss_source]
    return conform(ss_source[keep], "SSSource", dataset=f"ss_source [{where}]")


def _with_ss_objects(sources: pd.DataFrame, ss_rows: pd.DataFrame) -> pd.DataFrame:
    """``sources`` with ``ssObjectId`` from ``ss_rows`` (keyed by ``diaSourceId``)."""
    sources = sources.copy()
    if ss_rows.empty:
        return sources
    # Python ints throughout: ssObjectIds use all 64 bits (packed designations) and a float64
    # detour (what pandas' map does with missing keys) would round them.
    lookup = dict(zip(ss_rows["diaSourceId"].tolist(), ss_rows["ssObjectId"].tolist(), strict=True))
    current = sources["ssObjectId"].tolist()
    sources["ssObjectId"] = pd.array(
        [lookup.get(s, c) for s, c in zip(sources["diaSourceId"].tolist(), current, strict=True)],
        dtype="Int64",
    )
    return sources


def _ccd_cone(exposure: Exposure) -> tuple[float, float, float]:
    """Centre (deg) and radius (deg) of the circle through the CCD's corners."""
    w, h = exposure.width, exposure.height
    ra0, dec0 = exposure.wcs.pixel_to_world_values((w - 1) / 2.0, (h - 1) / 2.0)
    cx = np.array([-0.5, w - 0.5, w - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, h - 0.5, h - 0.5])
    ra, dec = exposure.wcs.pixel_to_world_values(cx, cy)
    r0, d0 = np.radians(float(ra0)), np.radians(float(dec0))
    ra, dec = np.radians(ra), np.radians(dec)
    cos_sep = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - r0)
    radius = float(np.degrees(np.arccos(np.clip(cos_sep, -1.0, 1.0))).max())
    return float(ra0) % 360.0, float(dec0), radius


def _inside(exposure: Exposure, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (
        np.isfinite(x)
        & np.isfinite(y)
        & (x >= -0.5)
        & (x < exposure.width - 0.5)
        & (y >= -0.5)
        & (y < exposure.height - 0.5)
    )


def _positions_with_new(
    others: pd.DataFrame, own: pd.DataFrame, ids: set[int], midpoint: float
) -> pd.DataFrame:
    """Positions of ``ids`` from their earlier DiaSources plus this CCD's new ones."""
    if not ids:
        return pd.DataFrame({"ra": [], "dec": []}, index=pd.Index([], name="diaObjectId"))
    rows = pd.concat(
        [
            others[others["diaObjectId"].isin(ids) & (others["midpointMjdTai"] < midpoint)],
            own[own["diaObjectId"].isin(ids)],
        ]
    )
    return mean_positions(rows).reindex(sorted(ids))


def _time_processed(associated: pd.DataFrame, previous_forced: pd.DataFrame) -> float:
    """``timeProcessedMjdTai`` of the forced rows: the DIA processing time of this CCD.

    Taken from the DiaSources (so a rerun on the same inputs writes the same value), else from
    this CCD's previous forced rows, else now.
    """
    if len(associated):
        return float(associated["timeProcessedMjdTai"].max())
    if len(previous_forced):
        return float(previous_forced["timeProcessedMjdTai"].max())
    return float(Time.now().tai.mjd)


def _forced_photometry(
    positions: pd.DataFrame,
    diff_image: Exposure,
    calexp: Exposure,
    visit: int,
    detector: int,
    midpoint: float,
    band: str | None,
    processed: float,
) -> pd.DataFrame:
    """DiaForcedSource rows: PSF fluxes on the difference image and on the calexp."""
    positions = positions.dropna()
    ids = positions.index.to_numpy(dtype=np.int64)
    ra, dec = positions["ra"].to_numpy(), positions["dec"].to_numpy()
    if ids.size == 0:
        return empty_frame("DiaForcedSource")
    x, y = diff_image.wcs.world_to_pixel_values(ra, dec)
    diff = psf_flux_at(diff_image, np.asarray(x), np.asarray(y))
    xs, ys = calexp.wcs.world_to_pixel_values(ra, dec)
    science = psf_flux_at(calexp, np.asarray(xs), np.asarray(ys))
    frame = pd.DataFrame(
        {
            "diaForcedSourceId": pack_source_ids(visit, detector, np.arange(ids.size)),
            "diaObjectId": ids,
            "ra": ra,
            "dec": dec,
            "visit": visit,
            "detector": detector,
            "psfFlux": diff.flux,
            "psfFluxErr": diff.flux_err,
            "midpointMjdTai": midpoint,
            "scienceFlux": science.flux,
            "scienceFluxErr": science.flux_err,
            "band": band,
            "timeProcessedMjdTai": processed,
        }
    )
    return conform(frame, "DiaForcedSource")
