"""SsoAssociationTask: associate the DiaSources of one CCD with known solar-system objects.

Rubin's ``SolarSystemAssociationTask`` (pipe_tasks ``ssoAssociation.py``), run first inside
alert production on the DiaSources of one (visit, detector):

1. The visit's ``ss_ephemeris`` (predicted positions of the known objects at the exposure
   midpoint) is cut to the CCD: positions projected through the difference image's WCS are
   kept when they fall inside the pixel box grown by
   ``min(ceil(max(positionErrArcsec) / pixel scale), max_pixel_margin)`` pixels, the pixel
   scale taken at the CCD centre.
2. Each remaining ephemeris takes its nearest DiaSource within ``match_radius_arcsec``; a
   DiaSource claimed by several objects goes to the closest (:func:`.match_ephemerides`).
3. Each pair becomes an APDB ``SSSource`` row (:func:`.ss_source_rows`).

Only positive, non-dipole DiaSources take part. A moving object leaves a positive source
where it is now; a negative source is where something *was* in the template (a mover there
would be at another position now, and an old epoch's ephemeris is not what we hold), and a
dipole is a subtraction artefact of a static source whose centroid moved, not a mover. So rows
with ``isNegative`` or ``isDipole`` true are never associated (missing flags count as false).

Departures from Rubin: a missing or empty ephemeris is an empty result rather than
``NoWorkFound``; along/cross-track offsets are NaN (not a division by zero) when the predicted
rate is zero; the footprint margin uses the ephemeris' own prediction errors for every format
(Rubin hard-codes 1 arcsec for Sorcha).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...core import Exposure
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task, TaskConfig
from .footprint import footprint_margin_px, in_footprint, pixel_scale_arcsec
from .matching import match_ephemerides
from .sssource import empty_ss_source, ss_source_rows

#: Columns ``ss_ephemeris`` must have; the others are copied when present, else NaN.
REQUIRED_EPHEMERIS_COLUMNS: tuple[str, ...] = ("ssObjectId", "ephRa", "ephDec")
#: Columns ``dia_source`` must have.
REQUIRED_SOURCE_COLUMNS: tuple[str, ...] = ("diaSourceId", "ra", "dec")


@dataclass
class SsoAssociationConfig(TaskConfig):
    """Configuration of :class:`SsoAssociationTask` (defaults are Rubin's).

    Attributes
    ----------
    match_radius_arcsec : float
        Largest angular distance between a DiaSource and a predicted position (inclusive).
        Default 1.0 (Rubin's ``maxDistArcSeconds`` since 2025; it was 2.0).
    max_pixel_margin : int
        Cap (pixels) on the growth of the CCD box by the prediction error. Default 100.
    """

    match_radius_arcsec: float = 1.0
    max_pixel_margin: int = 100

    def validate(self) -> None:
        radius = self.match_radius_arcsec
        if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
            raise ConfigError(
                f"SsoAssociationConfig.match_radius_arcsec must be positive, got {radius!r}"
            )
        margin = self.max_pixel_margin
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ConfigError(
                f"SsoAssociationConfig.max_pixel_margin must be an integer >= 0, got {margin!r}"
            )


@dataclass
class SsoAssociationResult:
    """Output of :meth:`SsoAssociationTask.run`.

    Attributes
    ----------
    ss_source : pandas.DataFrame
        One APDB ``SSSource`` row per associated DiaSource, in DiaSource order.
    unassociated_ephemerides : pandas.DataFrame
        The in-footprint ephemeris rows that got no DiaSource (``ss_ephemeris`` columns).
    n_dia_sources : int
        DiaSources given (all of them, eligible or not).
    n_known_in_footprint : int
        Ephemerides inside the grown CCD box.
    """

    ss_source: pd.DataFrame
    unassociated_ephemerides: pd.DataFrame
    n_dia_sources: int = 0
    n_known_in_footprint: int = 0
    margin_px: int = field(default=0, repr=False)

    def summary(self) -> dict[str, int]:
        """Known objects on the CCD, associations, and DiaSources left for DiaObjects."""
        n_associated = len(self.ss_source)
        return {
            "n_known_in_footprint": self.n_known_in_footprint,
            "n_associated": n_associated,
            "n_unassociated_sources": self.n_dia_sources - n_associated,
            "n_dia_sources": self.n_dia_sources,
        }


class SsoAssociationTask(Task):
    """Associate DiaSources with the predicted positions of known solar-system objects."""

    ConfigClass = SsoAssociationConfig
    config: SsoAssociationConfig

    def run(
        self,
        dia_source: pd.DataFrame,
        ss_ephemeris: pd.DataFrame | None,
        diff_image: Exposure,
        data_id: Mapping[str, Any] | None = None,
    ) -> SsoAssociationResult:
        """Associate the DiaSources of one CCD with the known objects predicted on it.

        Parameters
        ----------
        dia_source : pandas.DataFrame
            DiaSources of the CCD: ``diaSourceId``, ``ra``, ``dec`` (deg), and optionally
            ``isNegative`` and ``isDipole`` (such rows are not associated).
        ss_ephemeris : pandas.DataFrame or None
            Predicted positions of the visit's known objects at the exposure midpoint:
            ``ssObjectId``, ``ephRa``, ``ephDec`` (deg) at least; ``positionErrArcsec``
            (1-sigma) widens the footprint; the other ``ss_ephemeris`` columns are copied into
            ``SSSource``. None or empty: nothing to associate.
        diff_image : Exposure
            The difference image; its WCS and pixel box define the footprint.
        data_id : mapping, optional
            The quantum's data id, for error messages.

        Returns
        -------
        SsoAssociationResult

        Raises
        ------
        TaskError
            The difference image has no WCS, or a required column is missing.
        """
        where = f"sso_association [{format_data_id(data_id)}]"
        if not isinstance(diff_image, Exposure) or diff_image.wcs is None:
            raise TaskError(f"{where}: diff_image must be an Exposure with a WCS")
        _require(dia_source, REQUIRED_SOURCE_COLUMNS, "dia_source", where)
        n_dia = len(dia_source)
        if ss_ephemeris is None or len(ss_ephemeris) == 0:
            columns = [] if ss_ephemeris is None else list(ss_ephemeris.columns)
            return SsoAssociationResult(empty_ss_source(), pd.DataFrame(columns=columns), n_dia)
        _require(ss_ephemeris, REQUIRED_EPHEMERIS_COLUMNS, "ss_ephemeris", where)

        height, width = diff_image.shape
        scale = pixel_scale_arcsec(diff_image.wcs, (width - 1) / 2.0, (height - 1) / 2.0)
        errors = (
            ss_ephemeris["positionErrArcsec"].to_numpy(dtype=np.float64)
            if "positionErrArcsec" in ss_ephemeris.columns
            else np.zeros(0)
        )
        margin = footprint_margin_px(errors, scale, self.config.max_pixel_margin)
        inside, _, _ = in_footprint(
            ss_ephemeris["ephRa"].to_numpy(dtype=np.float64),
            ss_ephemeris["ephDec"].to_numpy(dtype=np.float64),
            diff_image.wcs,
            diff_image.shape,
            margin,
        )
        known = ss_ephemeris.loc[inside].reset_index(drop=True)

        eligible = np.flatnonzero(
            ~(_flag(dia_source, "isNegative") | _flag(dia_source, "isDipole"))
        )
        sources = dia_source.iloc[eligible]
        src_index, eph_index, distance = match_ephemerides(
            sources["ra"].to_numpy(dtype=np.float64),
            sources["dec"].to_numpy(dtype=np.float64),
            known["ephRa"].to_numpy(dtype=np.float64),
            known["ephDec"].to_numpy(dtype=np.float64),
            radius_arcsec=self.config.match_radius_arcsec,
        )
        try:
            ss_source = ss_source_rows(
                sources.iloc[src_index],
                known.iloc[eph_index],
                distance,
                dataset=f"ss_source [{format_data_id(data_id)}]",
            )
        except (ConfigError, ValueError, TypeError) as exc:
            raise TaskError(f"{where}: cannot build SSSource rows: {exc}") from None
        unassociated = known.drop(index=eph_index).reset_index(drop=True)
        return SsoAssociationResult(
            ss_source=ss_source,
            unassociated_ephemerides=unassociated,
            n_dia_sources=n_dia,
            n_known_in_footprint=len(known),
            margin_px=margin,
        )


def _require(frame: Any, columns: tuple[str, ...], name: str, where: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TaskError(f"{where}: {name} must be a DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TaskError(f"{where}: {name} lacks the columns {missing}")


def _flag(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean column with missing values (or a missing column) read as False."""
    if column not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame[column].astype("boolean").fillna(False).to_numpy(dtype=bool)
