"""AstrometryTask: fit a TAN-SIP WCS of one CCD against a reference catalog.

Steps (Rubin's CalibrateImageTask step 10, with a pattern search in place of MatchPessimisticB):

1. Keep usable sources (finite centroids on the image, no bad flag) and the reference objects
   whose positions, through the initial WCS, fall on the image padded by the largest pointing
   error searched.
2. Pattern search on the brightest sources and references (:mod:`.pattern`): rotation, scale and
   offset of the initial WCS, robust to tens of arcsec and a fraction of a degree.
3. Match the bright sources in pixels through that transform and fit a linear TAN WCS.
4. Iterate: match every usable source on the sky through the current WCS, fit TAN-SIP of
   ``fit_order`` with 3-sigma clipping, shrink the match radius to a few times the scatter,
   until the matched set stops changing.
5. Reject the solution if too few stars matched or their mean offset is too large.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from astropy.coordinates import angular_separation
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from ....core import Camera, Detector
from ....errors import AstrometryError, ConfigError, format_data_id
from ...base import Task, TaskConfig
from .distortion import CameraDistortion
from .matching import match_in_pixels, match_on_sky
from .pattern import PatternSolution, find_pattern_transform
from .selection import (
    brightness_order,
    centroid_sigma,
    ref_flux_column,
    refs_on_image,
    source_ids,
    usable_sources,
)
from .tan_sip import TanSipFit, fit_tan_sip, polynomial_terms


@dataclasses.dataclass
class AstrometryConfig(TaskConfig):
    """Configuration of :class:`AstrometryTask` (Rubin defaults quoted where they exist).

    Attributes
    ----------
    fit_order : int
        Total degree of the TAN-SIP polynomial (3: cubic SIP).
    use_camera_distortion : bool
        Remove the camera's radial distortion before fitting when ``run`` receives the camera
        and detector (as Rubin's fit trusts the camera model); the result is still TAN-SIP of
        ``fit_order`` on the real pixels.
    camera_fit_order : int
        Degree fitted to the distortion-corrected pixels, with CRPIX at the optical axis: 1 (a
        plain TAN, 6 numbers) is exact for a right camera model; 2 absorbs small errors of the
        model at the cost of needing 18 stars.
    min_matches_per_coefficient : float
        The degree is lowered until each axis has at least this many matches per polynomial
        coefficient: a cubic (10 coefficients) needs 30 stars, else it follows their noise.
    source_flux_columns : tuple of str
        Brightness columns of the source catalog, first one present wins (instrumental flux or
        S/N; only the ordering matters). Defaults match :class:`MeasureStarsTask`'s columns.
    source_flag_columns : tuple of str
        Boolean source columns that exclude a source when True; absent columns are ignored.
        Defaults: :class:`MeasureStarsTask`'s centroid, edge, saturation and bad-pixel flags.
    source_id_column : str
        Source id column (the DataFrame index when absent).
    ref_flux_column : str
        Reference brightness column; empty: ``<band>_flux``, else the first ``*_flux`` column.
    n_bright_sources : int
        Brightest sources used in the pattern search (Rubin numBrightStars 150).
    ref_oversample : float
        References in the pattern search per bright source, per unit area of the image.
        Above 1 so that a brighter reference limit than the sources' still finds partners.
    max_offset_arcsec : float
        Largest offset of the initial WCS searched at the image, arcsec. Rotation of the focal
        plane about the boresight adds ``angle x distance from the axis``: 0.5 deg at 300 mm of
        LSSTCam is 52", on top of the pointing error (Rubin 250 px; LSSTCam 1500 px).
    max_rotation_deg : float
        Largest rotation error searched (Rubin maxRotationDeg 1.0).
    max_scale_error : float
        Largest relative scale error searched; distortion missing from a TAN initial WCS is
        about 0.5% at the edge of LSSTCam.
    pattern_bin_arcsec : float
        Offset histogram bin, arcsec.
    pattern_min_significance : float
        The winning offset must collect this many Poisson sigma more pairs than chance.
    initial_match_radius_arcsec : float
        Match radius after the pattern search: covers distortion a similarity cannot describe.
    min_match_radius_arcsec : float
        The match radius never shrinks below this, arcsec.
    match_radius_n_sigma : float
        Next match radius = this x the robust scatter of the last fit.
    max_iterations : int
        Match / fit passes after the linear fit (Rubin maxIter 3; more is cheap here).
    n_sigma_clip : float
        Outlier rejection threshold of the fit, robust sigma of the error-normalised residuals.
    centroid_error_floor_pix : float
        Added in quadrature to ``x_err``/``y_err`` (reference-catalog and model errors).
    min_matches : int
        Fewer matched stars raise :class:`~apflow.errors.AstrometryError`.
    max_mean_offset_arcsec : float
        A larger mean source-reference distance after the fit is a failure (Rubin 0.5").
    """

    fit_order: int = 3
    use_camera_distortion: bool = True
    camera_fit_order: int = 1
    min_matches_per_coefficient: float = 3.0
    source_flux_columns: tuple[str, ...] = ("psf_instflux", "ap_instflux", "psf_flux", "flux")
    source_flag_columns: tuple[str, ...] = (
        "flag_centroid_failed",
        "flag_edge",
        "flag_saturated_center",
        "flag_bad",
        "sky_source",
    )
    source_id_column: str = "id"
    ref_flux_column: str = ""
    n_bright_sources: int = 150
    ref_oversample: float = 1.5
    max_offset_arcsec: float = 120.0
    max_rotation_deg: float = 1.0
    max_scale_error: float = 0.01
    pattern_bin_arcsec: float = 2.0
    pattern_min_significance: float = 5.0
    initial_match_radius_arcsec: float = 3.0
    min_match_radius_arcsec: float = 0.5
    match_radius_n_sigma: float = 5.0
    max_iterations: int = 6
    n_sigma_clip: float = 3.0
    centroid_error_floor_pix: float = 0.005
    min_matches: int = 10
    max_mean_offset_arcsec: float = 0.5

    def validate(self) -> None:
        """Reject values the algorithm cannot use."""
        if self.fit_order < 1:
            raise ConfigError(f"AstrometryConfig.fit_order must be >= 1, got {self.fit_order}")
        if self.min_matches < 6:
            # the linear fit after the pattern search has 6 coefficients
            raise ConfigError(f"AstrometryConfig.min_matches must be >= 6, got {self.min_matches}")
        if self.min_matches_per_coefficient < 2:
            raise ConfigError("AstrometryConfig.min_matches_per_coefficient must be >= 2")
        for name in ("max_offset_arcsec", "pattern_bin_arcsec", "initial_match_radius_arcsec"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"AstrometryConfig.{name} must be > 0")


@dataclasses.dataclass
class AstrometryResult:
    """Output of :meth:`AstrometryTask.run`.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Fitted TAN-SIP WCS (CRPIX at the image centre, AP/BP inverse included).
    sources : pandas.DataFrame
        The input catalog with ``ra``, ``dec`` (ICRS degrees) from the fitted WCS.
    matches : pandas.DataFrame
        One row per matched pair: ``source_id``, ``ref_id``, ``x``, ``y`` (pixels), ``ra``,
        ``dec`` (source, through the fitted WCS), ``ref_ra``, ``ref_dec`` (degrees),
        ``separation_arcsec`` and ``used`` (kept by the clipping of the final fit).
    n_matches : int
        Matches used in the final fit.
    offset_mean_arcsec, offset_std_arcsec, offset_median_arcsec : float
        Distance statistics of the used matches (Rubin SFM_ASTROM_OFFSET_MEAN/STD/MEDIAN).
    scatter_arcsec : float
        Robust 1-D scatter of the fit residuals, arcsec.
    initial_to_final_arcsec : float
        How far the image centre moved between the initial and the fitted WCS, arcsec.
    fit_order : int
        Polynomial degree fitted to the stars (to distortion-corrected pixels when
        ``used_camera_distortion``).
    used_camera_distortion : bool
        Whether the camera's distortion model was removed before the fit.
    n_iterations : int
        Match / fit passes run after the linear fit.
    inverse_max_error_pix : float
        Largest error of the AP/BP inverse over the image, pixels.
    pattern : PatternSolution
        The coarse transform found by the pattern search.
    """

    wcs: WCS
    sources: pd.DataFrame
    matches: pd.DataFrame
    n_matches: int
    offset_mean_arcsec: float
    offset_std_arcsec: float
    offset_median_arcsec: float
    scatter_arcsec: float
    initial_to_final_arcsec: float
    fit_order: int
    used_camera_distortion: bool
    n_iterations: int
    inverse_max_error_pix: float
    pattern: PatternSolution

    def summary(self) -> dict[str, Any]:
        """Small JSON numbers for the engine's report and provenance."""
        return {
            "astrometry_matches_count": self.n_matches,
            "astrom_offset_mean": self.offset_mean_arcsec,
            "astrom_offset_std": self.offset_std_arcsec,
            "astrom_offset_median": self.offset_median_arcsec,
            "astrom_scatter": self.scatter_arcsec,
            "initial_to_final_wcs": self.initial_to_final_arcsec,
            "astrom_fit_order": self.fit_order,
            "astrom_used_camera_distortion": self.used_camera_distortion,
            "pattern_rotation_deg": self.pattern.rotation_deg,
            "pattern_scale": self.pattern.scale,
            "pattern_offset_pix": list(self.pattern.offset_pix),
        }


class AstrometryTask(Task):
    """Match a source catalog to a reference catalog and fit a TAN-SIP WCS."""

    ConfigClass = AstrometryConfig
    config: AstrometryConfig

    def run(
        self,
        sources: pd.DataFrame,
        ref_cat: pd.DataFrame,
        wcs: WCS,
        image_shape: tuple[int, int],
        band: str | None = None,
        camera: Camera | None = None,
        detector: Detector | None = None,
        data_id: Mapping[str, Any] | None = None,
    ) -> AstrometryResult:
        """Fit the WCS of one image.

        Parameters
        ----------
        sources : pandas.DataFrame
            Detected sources: ``x``, ``y`` (0-based pixel centroids); optional ``x_err``,
            ``y_err`` (pixels, used as weights), a brightness column
            (``config.source_flux_columns``), flag columns (``config.source_flag_columns``) and
            an id column (``config.source_id_column``).
        ref_cat : pandas.DataFrame
            Reference objects: ``id``, ``ra``, ``dec`` (ICRS degrees) and ``<band>_flux`` (nJy,
            for the brightness ordering).
        wcs : astropy.wcs.WCS
            Initial WCS of the image (TAN from the boresight is enough).
        image_shape : tuple of int
            ``(height, width)`` in pixels.
        band : str, optional
            Band of the image, to pick the reference flux column.
        camera, detector : Camera, Detector, optional
            When both are given (and ``config.use_camera_distortion``), the camera's radial
            distortion is removed before fitting ``camera_fit_order`` (see :mod:`.distortion`).
        data_id : mapping, optional
            Data id named in error messages.

        Returns
        -------
        AstrometryResult

        Raises
        ------
        AstrometryError
            No reference object overlaps the image, too few usable sources or matches, no
            significant pattern, or a mean offset above ``max_mean_offset_arcsec`` after the fit.
        """
        cfg = self.config
        where = f"astrometry [{format_data_id(data_id)}]"
        pixel_scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0  # arcsec/px

        usable = usable_sources(
            sources, image_shape, cfg.source_flag_columns, cfg.source_flux_columns
        )
        if len(usable) < cfg.min_matches:
            raise AstrometryError(
                f"{where}: only {len(usable)} usable sources (need {cfg.min_matches})"
            )
        max_offset_pix = cfg.max_offset_arcsec / pixel_scale
        refs, ref_xy = refs_on_image(ref_cat, wcs, image_shape, max_offset_pix, pixel_scale)
        if len(refs) < cfg.min_matches:
            raise AstrometryError(
                f"{where}: {len(refs)} reference objects overlap the image through the initial "
                f'WCS (within {cfg.max_offset_arcsec}"; need {cfg.min_matches}): '
                "wrong pointing or reference catalog"
            )
        distortion = None
        if cfg.use_camera_distortion and camera is not None and detector is not None:
            distortion = CameraDistortion(camera, detector)
        xy = usable[["x", "y"]].to_numpy(dtype=float)
        if distortion is not None:
            xy = distortion.undistort(xy)
        sigma_pix = centroid_sigma(usable, cfg.centroid_error_floor_pix)
        ref_ra = refs["ra"].to_numpy(dtype=float)
        ref_dec = refs["dec"].to_numpy(dtype=float)

        pattern = self._pattern(xy, refs, ref_xy, image_shape, pixel_scale, band, where)
        # Linear fit from bright sources matched through the pattern transform.
        n_bright = min(cfg.n_bright_sources, len(xy))
        src_idx, ref_idx, _ = match_in_pixels(
            xy[:n_bright], pattern.apply(ref_xy), cfg.initial_match_radius_arcsec / pixel_scale
        )
        self._check_count(where, len(src_idx), "after the pattern search")
        crpix = None if distortion is None else distortion.optical_axis_crpix
        fit = fit_tan_sip(
            xy[src_idx, 0],
            xy[src_idx, 1],
            ref_ra[ref_idx],
            ref_dec[ref_idx],
            image_shape,
            order=1,
            sigma_pix=None if sigma_pix is None else sigma_pix[src_idx],
            n_sigma_clip=cfg.n_sigma_clip,
            crpix=crpix,
        )
        max_order = cfg.fit_order if distortion is None else cfg.camera_fit_order
        fit, src_idx, ref_idx, n_iterations = self._refine(
            fit, xy, sigma_pix, ref_ra, ref_dec, image_shape, max_order, crpix, where
        )
        final = (
            fit
            if distortion is None
            else distortion.to_real_pixels(fit.wcs, image_shape, cfg.fit_order)
        )

        matches = _match_table(usable, refs, src_idx, ref_idx, final.wcs, fit.used)
        matches.insert(0, "source_id", source_ids(usable.iloc[src_idx], cfg.source_id_column))
        offsets = matches["separation_arcsec"].to_numpy()[fit.used]
        self._check_count(where, len(offsets), "after outlier rejection")
        mean_offset = float(np.mean(offsets))
        if mean_offset > cfg.max_mean_offset_arcsec:
            raise AstrometryError(
                f'{where}: mean offset {mean_offset:.3f}" of {len(offsets)} matches exceeds '
                f'{cfg.max_mean_offset_arcsec}"'
            )
        return AstrometryResult(
            wcs=final.wcs,
            sources=_with_coordinates(sources, final.wcs),
            matches=matches,
            n_matches=len(offsets),
            offset_mean_arcsec=mean_offset,
            offset_std_arcsec=float(np.std(offsets)),
            offset_median_arcsec=float(np.median(offsets)),
            scatter_arcsec=fit.scatter_arcsec,
            initial_to_final_arcsec=_centre_shift_arcsec(wcs, final.wcs, image_shape),
            fit_order=fit.order,
            used_camera_distortion=distortion is not None,
            n_iterations=n_iterations,
            inverse_max_error_pix=final.inverse_max_error_pix,
            pattern=pattern,
        )

    def _pattern(
        self,
        xy: np.ndarray,
        refs: pd.DataFrame,
        ref_xy: np.ndarray,
        image_shape: tuple[int, int],
        pixel_scale: float,
        band: str | None,
        where: str,
    ) -> PatternSolution:
        """Pattern search on the brightest sources and references; raise if not significant."""
        cfg = self.config
        height, width = image_shape
        max_offset_pix = cfg.max_offset_arcsec / pixel_scale
        n_bright = min(cfg.n_bright_sources, len(xy))
        # As many references per unit area as bright sources (times the oversampling).
        padded_area = (width + 2 * max_offset_pix) * (height + 2 * max_offset_pix)
        n_ref = int(np.ceil(n_bright * cfg.ref_oversample * padded_area / (width * height)))
        ref_order = brightness_order(refs, ref_flux_column(refs, cfg.ref_flux_column, band))
        pattern = find_pattern_transform(
            xy[:n_bright],
            ref_xy[ref_order[:n_ref]],
            ((width - 1) / 2.0, (height - 1) / 2.0),
            max_offset_pix,
            cfg.max_rotation_deg,
            cfg.max_scale_error,
            cfg.pattern_bin_arcsec / pixel_scale,
        )
        chance = max(pattern.background, 1.0)
        threshold = pattern.background + cfg.pattern_min_significance * np.sqrt(chance)
        if pattern.n_peak < max(threshold, cfg.min_matches):
            raise AstrometryError(
                f"{where}: pattern search found no consistent offset ({pattern.n_peak} pairs, "
                f"chance level {pattern.background:.1f})"
            )
        return pattern

    def _refine(
        self,
        fit: TanSipFit,
        xy: np.ndarray,
        sigma_pix: np.ndarray | None,
        ref_ra: np.ndarray,
        ref_dec: np.ndarray,
        image_shape: tuple[int, int],
        max_order: int,
        crpix: tuple[float, float] | None,
        where: str,
    ) -> tuple[TanSipFit, np.ndarray, np.ndarray, int]:
        """Match on the sky and refit, shrinking the radius, until the matches stop changing."""
        cfg = self.config
        radius = cfg.initial_match_radius_arcsec
        previous: tuple[np.ndarray, np.ndarray] | None = None
        n_iterations = 0
        while n_iterations < max(cfg.max_iterations, 1):
            n_iterations += 1
            radius = max(
                cfg.min_match_radius_arcsec,
                min(radius, cfg.match_radius_n_sigma * fit.scatter_arcsec),
            )
            ra, dec = fit.wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
            src_idx, ref_idx, _ = match_on_sky(ra, dec, ref_ra, ref_dec, radius)
            self._check_count(where, len(src_idx), f'within {radius:.2f}"')
            fit = fit_tan_sip(
                xy[src_idx, 0],
                xy[src_idx, 1],
                ref_ra[ref_idx],
                ref_dec[ref_idx],
                image_shape,
                order=_affordable_order(len(src_idx), max_order, cfg.min_matches_per_coefficient),
                sigma_pix=None if sigma_pix is None else sigma_pix[src_idx],
                n_sigma_clip=cfg.n_sigma_clip,
                crpix=crpix,
                crval=tuple(fit.wcs.wcs.crval),
            )
            pairs = (src_idx, ref_idx)
            if previous is not None and _same_pairs(previous, pairs):
                break
            previous = pairs
        return fit, src_idx, ref_idx, n_iterations

    def _check_count(self, where: str, n: int, stage: str) -> None:
        if n < self.config.min_matches:
            raise AstrometryError(
                f"{where}: only {n} matched stars {stage} (need {self.config.min_matches})"
            )


def _affordable_order(n_matches: int, order: int, per_coefficient: float) -> int:
    """Highest degree <= ``order`` with ``per_coefficient`` matches per polynomial coefficient."""
    while order > 1 and per_coefficient * len(polynomial_terms(order)) > n_matches:
        order -= 1
    return order


def _same_pairs(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _match_table(
    usable: pd.DataFrame,
    refs: pd.DataFrame,
    src_idx: np.ndarray,
    ref_idx: np.ndarray,
    wcs: WCS,
    used: np.ndarray,
) -> pd.DataFrame:
    matched = usable.iloc[src_idx]
    x = matched["x"].to_numpy(dtype=float)
    y = matched["y"].to_numpy(dtype=float)
    ra, dec = wcs.all_pix2world(x, y, 0)
    ref_ra = refs["ra"].to_numpy(dtype=float)[ref_idx]
    ref_dec = refs["dec"].to_numpy(dtype=float)[ref_idx]
    separation = np.degrees(
        angular_separation(*np.radians([ra, dec]), *np.radians([ref_ra, ref_dec]))
    )
    return pd.DataFrame(
        {
            "ref_id": refs["id"].to_numpy()[ref_idx],
            "x": x,
            "y": y,
            "ra": ra,
            "dec": dec,
            "ref_ra": ref_ra,
            "ref_dec": ref_dec,
            "separation_arcsec": separation * 3600.0,
            "used": used,
        }
    )


def _with_coordinates(sources: pd.DataFrame, wcs: WCS) -> pd.DataFrame:
    out = sources.copy()
    ra, dec = wcs.all_pix2world(
        sources["x"].to_numpy(dtype=float), sources["y"].to_numpy(dtype=float), 0
    )
    out["ra"] = ra
    out["dec"] = dec
    return out


def _centre_shift_arcsec(initial: WCS, final: WCS, image_shape: tuple[int, int]) -> float:
    """Distance between the sky positions of the image centre through two WCSs, arcsec."""
    centre = [[(image_shape[1] - 1) / 2.0, (image_shape[0] - 1) / 2.0]]
    a = np.radians(initial.all_pix2world(centre, 0)[0])
    b = np.radians(final.all_pix2world(centre, 0)[0])
    return float(np.degrees(angular_separation(*a, *b)) * 3600.0)
