"""DiaSource detection and measurement on a difference image (Rubin's ``DetectAndMeasureTask``).

Steps of :meth:`DetectAndMeasureTask.run`:

1. **Detection** (:mod:`.detection`): positive and negative footprints above ``threshold``
   (5 sigma) of the PSF-smoothed significance image, grown, and merged when they touch; one
   peak per sign for each part of a footprint that stands ``peak_prominence`` sigma above the
   saddles to its higher neighbours.
2. **Dipoles** (:mod:`.dipole`): in a merged footprint with peaks of both signs, the nearest
   positive/negative peak pairs (within ``dipole_max_separation_fwhm``) each become one
   DiaSource with ``dipoleFitAttempted``, measured by a two-PSF fit. ``isDipole`` is set when
   the fit converges with ``a > 0 > b`` and both lobes at S/N >= ``dipole_min_lobe_snr``; a
   dipole much narrower than the PSF is one source too, but its lobes are degenerate
   (only flux x separation is measured), so it is not called a dipole.
3. **Centroids and shapes**: adaptive moments (calibration's measurement) on the difference
   image for positive peaks and on the negated image for negative ones; the lobe midpoint of the
   dipole fit for dipoles (whose moments are not measured: ``shape_flag``). A source with
   masked pixels (``psf_bad_mask_planes``) within one FWHM of its centroid is re-centred by a
   PSF fit that leaves them out (:mod:`.centroid`): moments count them as zeros and shift.
4. **Fluxes at the centroid**: forced PSF flux (:func:`.forced.psf_flux_at`) on the
   difference image (``psfFlux``), the science image (``scienceFlux``) and the warped template
   (``templateFlux``); the 12 px circular aperture flux on the difference image.
5. **Flags, coordinates, ids**: pixel flags over the footprint, sky coordinates and errors through
   the WCS, PSF moments, ``bboxSize``; sources whose central 3x3 pixels hold NO_DATA are
   rejected, and so are those whose central 3x3 pixels are *all* SAT, BAD, EDGE or INTRP
   (Rubin's ``badSourceFlags``; counted in ``n_rejected_<plane>_center``); the rest are
   sorted by (y, x) and numbered with
   :func:`apflow.apdb.ids.pack_source_ids`, so a rerun gives the same ids.

Units and conventions: fluxes in nJy (through each image's ``photo_calib``, pixels taken as nJy
without one); ``ra``/``dec`` in degrees, ``raErr`` the error of ``RA cos(Dec)``; moments
(``ixx``..., ``ixxPSF``...) converted from px^2 to arcsec^2 with the local pixel scale (axes stay
the pixel axes); ``dipoleLength`` in arcsec and ``dipoleAngle`` the bearing east of north from
the negative to the positive lobe; ``psfChi2`` the total (not reduced) chi^2 and ``psfLnL`` the
Gaussian log-likelihood of the PSF fit; ``snr = psfFlux / psfFluxErr``; ``apFlux_flag`` is set
for a truncated aperture or a non-finite sum; ``pixelFlags`` (the "flagging failed" bit) is
always False.

Not modelled: ``extendedness`` and ``reliability`` (NaN: there is no star/galaxy or real/bogus
classifier), trailed-source fits (``trail*`` NA, ``trailNdata`` 0), deblending
(``parentDiaSourceId`` NA, ``shape_flag_parent_source`` False), ``shape_flag_no_pixels`` (NA),
and the streak / injection mask planes and glints (their flags NA).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord
from astropy.time import Time
from scipy.spatial import cKDTree

from ...apdb.ids import pack_source_ids
from ...apdb.schema import column_names, conform, empty_frame
from ...core import Exposure, MaskPlanes
from ...core.psf import GAUSSIAN_FWHM_PER_SIGMA
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task, TaskConfig
from ..calibrate.detection import DetectionConfig
from ..calibrate.measurement import MeasurementConfig, adaptive_moments, aperture_flux
from ..forced.stamps import extract_stamps
from .centroid import psf_fit_centroids
from .detection import DiaDetections, detect_both_signs
from .dipole import DipoleFit, fit_dipoles
from .forced import DEFAULT_BAD_MASK_PLANES, PsfFluxAt, psf_flux_at
from .measure import (
    bbox_sizes,
    center_all_flags,
    footprint_boxes,
    footprint_pixel_flags,
    psf_moments,
    sky_positions,
)

_DIA_SOURCE_COLUMNS = frozenset(column_names("DiaSource"))


@dataclasses.dataclass
class DetectAndMeasureConfig(TaskConfig):
    """Configuration of :class:`DetectAndMeasureTask`.

    Attributes
    ----------
    threshold : float
        Detection threshold in standard deviations of the PSF-smoothed difference image, for
        both signs (Rubin's DIA ``thresholdValue`` 5.0).
    n_sigma_for_kernel : float
        Smoothing kernel width in PSF sigmas (Rubin 7.0).
    n_sigma_to_grow : float
        Footprints are grown by this many PSF sigmas (Rubin 2.4) before merging.
    min_peak_separation : float
        Same-sign peaks of one footprint closer than this (px) are merged; 0 means one FWHM.
    peak_prominence : float
        A same-sign peak of a footprint that rises less than this many sigma (of the smoothed
        image) above the saddle to a higher peak is not a source of its own
        (:func:`.detection.prominent_peaks`; apflow: Rubin makes one source per footprint).
        On the simulator's default mini camera (seed 0, visits 1-4) it took the false
        DiaSources from 160 to 99: the negative residual around one bright galaxy had given 21
        on one CCD, one per noise bump, and gave 3. Default 3.0.
    detection_bad_mask_planes : tuple of str
        Pixels set to zero signal and infinite noise before smoothing. SAT is not among them:
        a source with a saturated centre pixel would lose its peak; saturated residuals are
        removed after detection instead (``bad_center_planes``).
    fit_dipoles : bool
        Fit dipole models to footprints with peaks of both signs (default True).
    dipole_min_lobe_snr : float
        Each fitted lobe must have ``|flux| / error`` at least this for ``isDipole``.
    dipole_max_separation_fwhm : float
        Opposite-sign peaks of one merged footprint farther apart than this many PSF FWHMs are
        separate sources, not a dipole candidate. Default 4 (apflow; Rubin makes one source of
        a merged footprint whatever its extent): the positive and negative lobes a bright
        star's subtraction residual leaves 2-4 FWHM apart are one DiaSource, not two. On the
        simulator's default mini camera (2 seeds, 72 CCD-visits) this removed 13% of the false
        DiaSources (162 -> 143) and no true one; farther apart, the lobes are separate
        footprints or resolved sources measured well on their own.
    dipole_max_shift : float
        Pixels each lobe coordinate may move from its detected peak during the fit.
    psf_fit_radius_fwhm : float
        Half-size of the PSF-fit stamps in PSF FWHMs (psfFlux, scienceFlux, templateFlux).
    psf_bad_mask_planes : tuple of str
        Pixels left out of the PSF fits.
    aperture_radius : float
        Radius (px) of ``apFlux`` (Rubin's ``base_CircularApertureFlux_12_0``: 12).
    aperture_bad_mask_planes : tuple of str
        Pixels counted as zero in the aperture sum.
    pixel_flag_radius_fwhm : float
        Footprint pixels within a square of this many FWHMs (half-size) of the centroid are
        examined for the pixel flags.
    refit_masked_centroids : bool
        Re-centre sources with masked pixels within one FWHM of their moments centroid by a
        PSF fit over the good pixels (:mod:`.centroid`). Default True.
    reject_nodata_center : bool
        Drop sources whose central 3x3 pixels hold NO_DATA (or non-finite) pixels: they are
        edges of the template's coverage, not transients. Default True.
    bad_center_planes : tuple of str
        Sources whose central 3x3 pixels *all* carry one of these planes are dropped and
        counted (Rubin's ``badSourceFlags``: ``base_PixelFlags_flag_*CenterAll`` of
        saturated, bad, edge, interpolated and no-data pixels). The difference image's SAT
        plane covers the saturated pixels of both inputs grown by the PSF-matching kernel.
    """

    threshold: float = 5.0
    n_sigma_for_kernel: float = 7.0
    n_sigma_to_grow: float = 2.4
    min_peak_separation: float = 0.0
    peak_prominence: float = 3.0
    detection_bad_mask_planes: tuple[str, ...] = ("BAD", "NO_DATA")
    fit_dipoles: bool = True
    dipole_min_lobe_snr: float = 3.0
    dipole_max_separation_fwhm: float = 4.0
    dipole_max_shift: float = 3.0
    psf_fit_radius_fwhm: float = 2.0
    psf_bad_mask_planes: tuple[str, ...] = DEFAULT_BAD_MASK_PLANES
    aperture_radius: float = 12.0
    aperture_bad_mask_planes: tuple[str, ...] = ("BAD", "NO_DATA")
    pixel_flag_radius_fwhm: float = 3.0
    refit_masked_centroids: bool = True
    reject_nodata_center: bool = True
    bad_center_planes: tuple[str, ...] = ("SAT", "BAD", "EDGE", "INTRP", "NO_DATA")

    def validate(self) -> None:
        if not self.threshold > 0:
            raise ConfigError(f"threshold must be > 0, got {self.threshold}")
        if self.n_sigma_for_kernel <= 0 or self.n_sigma_to_grow < 0:
            raise ConfigError("n_sigma_for_kernel must be > 0 and n_sigma_to_grow >= 0")
        if self.min_peak_separation < 0 or self.dipole_max_shift <= 0:
            raise ConfigError("min_peak_separation must be >= 0 and dipole_max_shift > 0")
        if self.dipole_min_lobe_snr < 0 or not self.dipole_max_separation_fwhm > 0:
            raise ConfigError("dipole_min_lobe_snr must be >= 0 and dipole_max_separation_fwhm > 0")
        if not (self.psf_fit_radius_fwhm > 0 and self.aperture_radius > 0):
            raise ConfigError("psf_fit_radius_fwhm and aperture_radius must be > 0")
        if not self.peak_prominence >= 0:
            raise ConfigError(f"peak_prominence must be >= 0, got {self.peak_prominence}")
        if not self.pixel_flag_radius_fwhm > 0:
            raise ConfigError("pixel_flag_radius_fwhm must be > 0")
        MaskPlanes.bits(
            *self.detection_bad_mask_planes,
            *self.psf_bad_mask_planes,
            *self.aperture_bad_mask_planes,
            *self.bad_center_planes,
        )

    def detection_config(self) -> DetectionConfig:
        """The matched-filter detection settings in calibration's config class."""
        return DetectionConfig(
            threshold=self.threshold,
            n_sigma_for_kernel=self.n_sigma_for_kernel,
            n_sigma_to_grow=self.n_sigma_to_grow,
            min_peak_separation=self.min_peak_separation,
            bad_mask_planes=self.detection_bad_mask_planes,
        )


@dataclasses.dataclass
class DetectAndMeasureResult:
    """Output of :class:`DetectAndMeasureTask`.

    Attributes
    ----------
    dia_source : pandas.DataFrame
        One row per DiaSource with exactly the APDB ``DiaSource`` columns and dtypes (nJy,
        degrees, MJD TAI; moments in arcsec^2), sorted by ``diaSourceId``.
    n_rejected_nodata : int
        Detections dropped because their centre lies on NO_DATA pixels.
    n_rejected_bad_center : dict
        ``{plane: count}`` of the further detections dropped because all their central 3x3
        pixels carry that plane (``bad_center_planes``; a source is counted under the first
        plane that applies).
    n_dipole_fits_failed : int
        Dipole candidates whose fit did not converge to finite lobes of opposite signs.
    n_footprints : int
        Merged footprints.
    psf_sigma : float
        Gaussian sigma (px) of the detection filter.
    """

    dia_source: pd.DataFrame
    n_rejected_nodata: int = 0
    n_rejected_bad_center: dict[str, int] = dataclasses.field(default_factory=dict)
    n_dipole_fits_failed: int = 0
    n_footprints: int = 0
    psf_sigma: float = float("nan")

    def summary(self) -> dict[str, float]:
        """Counts of DiaSources by kind, rejected detections and failed dipole fits.

        Every source is exactly one of ``n_positive``, ``n_negative``, ``n_dipoles`` and
        ``n_unresolved_pairs`` (opposite-sign pairs whose fit did not give two significant
        lobes).
        """
        df = self.dia_source
        dipole = df["isDipole"].fillna(False).to_numpy(bool)
        negative = df["isNegative"].fillna(False).to_numpy(bool)
        pair = df["dipoleFitAttempted"].fillna(False).to_numpy(bool)
        return {
            "n_dia_sources": len(df),
            "n_positive": int((~pair & ~negative).sum()),
            "n_negative": int((~pair & negative).sum()),
            "n_dipoles": int(dipole.sum()),
            "n_unresolved_pairs": int((pair & ~dipole).sum()),
            "n_dipole_fits_attempted": int(pair.sum()),
            "n_dipole_fits_failed": self.n_dipole_fits_failed,
            "n_rejected_nodata": self.n_rejected_nodata,
            **{
                f"n_rejected_{plane.lower()}_center": n
                for plane, n in self.n_rejected_bad_center.items()
            },
            "n_footprints": self.n_footprints,
            "n_psf_flux_flagged": int(df["psfFlux_flag"].fillna(True).sum()),
            "psf_sigma": float(self.psf_sigma),
        }


class DetectAndMeasureTask(Task):
    """Detect positive, negative and dipole DiaSources on a difference image and measure them."""

    ConfigClass = DetectAndMeasureConfig
    config: DetectAndMeasureConfig

    def run(
        self,
        diff_image: Exposure,
        calexp: Exposure,
        template_warped: Exposure,
        data_id: Mapping[str, Any] | None = None,
    ) -> DetectAndMeasureResult:
        """Detect and measure the DiaSources of one (visit, detector).

        Parameters
        ----------
        diff_image : Exposure
            Science minus PSF-matched template, nJy, with variance, mask, WCS, PSF (the
            science PSF) and visit info (visit, band, midpoint MJD TAI, exposure time).
        calexp : Exposure
            The science image (nJy, with PSF) on the same pixel grid.
        template_warped : Exposure
            The template resampled to the science grid, not convolved (nJy, with its PSF).
        data_id : mapping, optional
            ``visit`` and ``detector`` of the quantum; default from ``diff_image``.

        Returns
        -------
        DetectAndMeasureResult

        Raises
        ------
        TaskError
            Missing PSF, WCS or visit info, images of different shapes, or a difference image
            without any finite variance; the message names the data id.
        """
        visit, detector, what = _identify(diff_image, data_id)
        _check_inputs(diff_image, calexp, template_warped, what)
        cfg = self.config
        psf = diff_image.psf
        centre = ((diff_image.width - 1) / 2, (diff_image.height - 1) / 2)
        fwhm = float(psf.fwhm_at(*centre))
        sigma = fwhm / GAUSSIAN_FWHM_PER_SIGMA
        if not (np.isfinite(sigma) and sigma > 0):
            raise TaskError(f"{what}: the difference image's PSF has FWHM {fwhm!r}")
        det = detect_both_signs(
            diff_image, sigma, cfg.detection_config(), peak_prominence=cfg.peak_prominence
        )
        sources, fit, n_failed = self._centroid_sources(diff_image, det, sigma)
        frame, n_rejected, n_bad_center = self._measure(
            diff_image, calexp, template_warped, det, sources, fit, fwhm, visit, detector
        )
        return DetectAndMeasureResult(
            dia_source=frame,
            n_rejected_nodata=n_rejected,
            n_rejected_bad_center=n_bad_center,
            n_dipole_fits_failed=n_failed,
            n_footprints=len(det.bboxes),
            psf_sigma=sigma,
        )

    def _centroid_sources(
        self, diff: Exposure, det: DiaDetections, sigma: float
    ) -> tuple[dict[str, np.ndarray], DipoleFit, int]:
        """Turn peaks into sources: dipole fits, then adaptive moments of the single-sign peaks."""
        cfg = self.config
        n_peaks = len(det)
        single = np.ones(n_peaks, bool)
        if cfg.fit_dipoles:
            max_sep = cfg.dipole_max_separation_fwhm * sigma * GAUSSIAN_FWHM_PER_SIGMA
            pos_idx, neg_idx = _dipole_candidates(det, max_sep)
        else:
            pos_idx = neg_idx = np.zeros(0, np.int64)
        fit = fit_dipoles(
            diff,
            det.x[pos_idx],
            det.y[pos_idx],
            det.x[neg_idx],
            det.y[neg_idx],
            fit_radius_fwhm=cfg.psf_fit_radius_fwhm,
            max_shift=cfg.dipole_max_shift,
            bad_mask_planes=cfg.psf_bad_mask_planes,
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            is_dipole = (
                fit.success
                & (np.abs(fit.pos_flux) >= cfg.dipole_min_lobe_snr * fit.pos_flux_err)
                & (np.abs(fit.neg_flux) >= cfg.dipole_min_lobe_snr * fit.neg_flux_err)
            )
        # Every candidate pair is one DiaSource, as the merged footprint it comes from, whether
        # or not the fit resolves two significant lobes (an unresolved dipole does not).
        single[pos_idx] = single[neg_idx] = False

        idx = np.flatnonzero(single)
        x = det.x[idx].copy()
        y = det.y[idx].copy()
        n = idx.size
        shape = {k: np.full(n, np.nan) for k in ("x_err", "y_err", "ixx", "iyy", "ixy")}
        centroid_flag = np.zeros(n, bool)
        shape_flag = np.zeros(n, bool)
        moments_config = MeasurementConfig()
        for sign in (1, -1):
            rows = np.flatnonzero(det.sign[idx] == sign)
            if rows.size == 0:
                continue
            # Negative sources are measured as positive ones on the negated image.
            image = diff if sign > 0 else dataclasses.replace(diff, image=np.negative(diff.image))
            m = adaptive_moments(image, x[rows], y[rows], np.full(rows.size, sigma), moments_config)
            x[rows], y[rows] = m["x"], m["y"]
            for key in shape:
                shape[key][rows] = m[key]
            centroid_flag[rows] = m["flag_centroid_failed"]
            shape_flag[rows] = m["flag_shape_failed"]
        if cfg.refit_masked_centroids and n:
            self._refit_masked(diff, x, y, shape, centroid_flag, sigma)

        # A pair's centroid is the fitted lobes' midpoint, else the midpoint of its peaks.
        fitted = np.isfinite(fit.x) & np.isfinite(fit.y)
        pair_x = np.where(fitted, fit.x, 0.5 * (det.x[pos_idx] + det.x[neg_idx]))
        pair_y = np.where(fitted, fit.y, 0.5 * (det.y[pos_idx] + det.y[neg_idx]))
        n_pair = pos_idx.size
        nan = np.full(n_pair, np.nan)
        sources: dict[str, np.ndarray] = {
            "x": np.concatenate([x, pair_x]),
            "y": np.concatenate([y, pair_y]),
            "x_err": np.concatenate([shape["x_err"], fit.x_err]),
            "y_err": np.concatenate([shape["y_err"], fit.y_err]),
            "ixx": np.concatenate([shape["ixx"], nan]),
            "iyy": np.concatenate([shape["iyy"], nan]),
            "ixy": np.concatenate([shape["ixy"], nan]),
            "centroid_flag": np.concatenate([centroid_flag, ~fitted]),
            "shape_flag": np.concatenate([shape_flag, np.ones(n_pair, bool)]),
            "sign": np.concatenate([det.sign[idx], np.zeros(n_pair, np.int8)]),
            "parent": np.concatenate([det.parent[idx], det.parent[pos_idx]]),
            "attempted": np.concatenate([np.zeros(n, bool), np.ones(n_pair, bool)]),
            "is_dipole": np.concatenate([np.zeros(n, bool), is_dipole]),
            "pair": np.concatenate([np.full(n, -1), np.arange(n_pair)]),
        }
        return sources, fit, int((~fit.success).sum())

    def _refit_masked(
        self,
        diff: Exposure,
        x: np.ndarray,
        y: np.ndarray,
        shape: dict[str, np.ndarray],
        centroid_flag: np.ndarray,
        sigma: float,
    ) -> None:
        """PSF-fit centroids (in place) of the sources with masked pixels in their core."""
        cfg = self.config
        bad_bits = MaskPlanes.bits(*cfg.psf_bad_mask_planes)
        radius = sigma * GAUSSIAN_FWHM_PER_SIGMA
        half = int(np.ceil(radius))
        xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        mask = extract_stamps(diff.mask, xi, yi, half, 0)
        offsets = np.arange(-half, half + 1)
        core = offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius**2
        rows = np.flatnonzero(np.any(((mask & bad_bits) != 0) & core[None], axis=(1, 2)))
        if rows.size == 0:
            return
        fit = psf_fit_centroids(
            diff, x[rows], y[rows], bad_bits, fit_radius_fwhm=cfg.psf_fit_radius_fwhm
        )
        ok = rows[fit.success]
        x[ok], y[ok] = fit.x[fit.success], fit.y[fit.success]
        shape["x_err"][ok] = fit.x_err[fit.success]
        shape["y_err"][ok] = fit.y_err[fit.success]
        centroid_flag[ok] = False

    def _measure(
        self,
        diff: Exposure,
        calexp: Exposure,
        template: Exposure,
        det: DiaDetections,
        src: dict[str, np.ndarray],
        fit: DipoleFit,
        fwhm: float,
        visit: int,
        detector: int,
    ) -> tuple[pd.DataFrame, int, dict[str, int]]:
        """Fluxes, flags and coordinates of every source; reject, sort, number, conform."""
        cfg = self.config
        x, y = src["x"], src["y"]
        finite = np.isfinite(diff.image) & np.isfinite(diff.variance)
        half = max(3, int(np.ceil(cfg.pixel_flag_radius_fwhm * fwhm)))
        flags = footprint_pixel_flags(det.mask, finite, det.footprints, src["parent"], x, y, half)
        keep = np.ones(x.size, bool)
        if cfg.reject_nodata_center:
            keep = ~flags["nodataCenter"]
        n_rejected = int(x.size - keep.sum())
        n_bad_center = {}
        for plane, all_center in center_all_flags(det.mask, x, y, cfg.bad_center_planes).items():
            n_bad_center[plane] = int((keep & all_center).sum())
            keep &= ~all_center
        order = np.flatnonzero(keep)
        order = order[np.lexsort((x[order], y[order]))]  # ids in raster order of the centroids
        if order.size == 0:
            return empty_frame("DiaSource"), n_rejected, n_bad_center
        src = {k: v[order] for k, v in src.items()}
        flags = {k: v[order] for k, v in flags.items()}
        x, y = src["x"], src["y"]
        n = x.size

        kw = {
            "fit_radius_fwhm": cfg.psf_fit_radius_fwhm,
            "bad_mask_planes": cfg.psf_bad_mask_planes,
        }
        psf_fit = psf_flux_at(diff, x, y, **kw)
        science = psf_flux_at(calexp, x, y, **kw)
        templ = psf_flux_at(template, x, y, **kw)
        aperture = aperture_flux(
            diff,
            x,
            y,
            MeasurementConfig(
                aperture_radius=cfg.aperture_radius,
                aperture_bad_mask_planes=cfg.aperture_bad_mask_planes,
            ),
        )
        ap_flux, ap_err = _to_njy(diff, aperture["ap_instflux"], aperture["ap_instflux_err"])
        sky = sky_positions(diff.wcs, x, y, src["x_err"], src["y_err"])
        scale2 = sky.pixel_scale**2
        psf_ixx, psf_iyy, psf_ixy = psf_moments(diff.psf, x, y, MeasurementConfig())
        boxes = footprint_boxes(det.bboxes, src["parent"])
        contained = (
            (x >= boxes[:, 0]) & (x <= boxes[:, 1]) & (y >= boxes[:, 2]) & (y <= boxes[:, 3])
        )
        info = diff.visit_info
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = psf_fit.flux / psf_fit.flux_err
        columns: dict[str, Any] = {
            "diaSourceId": pack_source_ids(visit, detector, np.arange(n)),
            "visit": np.full(n, visit, np.int64),
            "detector": np.full(n, detector, np.int16),
            "midpointMjdTai": np.full(n, info.mjd),
            "exposureTime": np.full(n, info.exposure_time),
            "ra": sky.ra,
            "raErr": sky.ra_err,
            "dec": sky.dec,
            "decErr": sky.dec_err,
            "ra_dec_Cov": sky.ra_dec_cov,
            "x": x,
            "xErr": src["x_err"],
            "y": y,
            "yErr": src["y_err"],
            "centroid_flag": src["centroid_flag"] | ~np.isfinite(src["x_err"] + src["y_err"]),
            "apFlux": ap_flux,
            "apFluxErr": ap_err,
            "apFlux_flag": aperture["flag_aperture_truncated"] | ~np.isfinite(ap_flux),
            "apFlux_flag_apertureTruncated": aperture["flag_aperture_truncated"],
            "isNegative": src["sign"] < 0,
            "snr": snr,
            "psfFlux": psf_fit.flux,
            "psfFluxErr": psf_fit.flux_err,
            "psfLnL": psf_fit.log_likelihood,
            "psfChi2": psf_fit.chi2,
            "psfNdata": psf_fit.ndata,
            "psfFlux_flag": psf_fit.flag,
            "psfFlux_flag_edge": psf_fit.flag_edge,
            "psfFlux_flag_noGoodPixels": psf_fit.flag_no_good_pixels,
            "trailNdata": np.zeros(n, np.int32),
            **_flux_columns("scienceFlux", science, "forced_PsfFlux"),
            "templateFlux": templ.flux,
            "templateFluxErr": templ.flux_err,
            "ixx": src["ixx"] * scale2,
            "iyy": src["iyy"] * scale2,
            "ixy": src["ixy"] * scale2,
            "ixxPSF": psf_ixx * scale2,
            "iyyPSF": psf_iyy * scale2,
            "ixyPSF": psf_ixy * scale2,
            "shape_flag": src["shape_flag"],
            "shape_flag_not_contained": ~contained,
            "shape_flag_parent_source": np.zeros(n, bool),
            "extendedness": np.full(n, np.nan),
            "reliability": np.full(n, np.nan),
            "band": np.full(n, info.band, dtype=object),
            "isDipole": src["is_dipole"],
            "dipoleFitAttempted": src["attempted"],
            "timeProcessedMjdTai": np.full(n, Time.now().tai.mjd),
            "bboxSize": bbox_sizes(boxes, x, y),
            "pixelFlags": np.zeros(n, bool),
            # The schema has no Center variant of some flags (edge, bad): those are dropped.
            **{
                f"pixelFlags_{name}": value
                for name, value in flags.items()
                if f"pixelFlags_{name}" in _DIA_SOURCE_COLUMNS
            },
        }
        columns.update(_dipole_columns(diff, fit, src["pair"], sky.pixel_scale))
        dataset = f"dia_source [visit={visit}, detector={detector}]"
        frame = conform(pd.DataFrame(columns), "DiaSource", dataset=dataset)
        return frame, n_rejected, n_bad_center


def _identify(diff: Exposure, data_id: Mapping[str, Any] | None) -> tuple[int, int, str]:
    """Visit, detector and a ``dia_source [visit=.., detector=..]`` label for messages."""
    data_id = dict(data_id or {})
    info = diff.visit_info
    visit = data_id.get("visit", info.visit if info is not None else None)
    detector = data_id.get("detector", diff.detector)
    what = f"dia_source [{format_data_id(data_id or {'visit': visit, 'detector': detector})}]"
    if visit is None or detector is None:
        raise TaskError(f"{what}: the difference image has no visit or detector id")
    return int(visit), int(detector), what


def _check_inputs(diff: Exposure, calexp: Exposure, template: Exposure, what: str) -> None:
    """Raise a :class:`TaskError` naming the data id for input that cannot be measured."""
    for name, exposure in (
        ("diff_image", diff),
        ("calexp", calexp),
        ("template_warped", template),
    ):
        if exposure.psf is None:
            raise TaskError(f"{what}: {name} has no PSF model")
        if exposure.shape != diff.shape:
            raise TaskError(
                f"{what}: {name} is {exposure.width}x{exposure.height} px but the difference "
                f"image is {diff.width}x{diff.height}; all three must share the science grid"
            )
    if diff.wcs is None:
        raise TaskError(f"{what}: diff_image has no WCS")
    if diff.visit_info is None or not np.isfinite(diff.visit_info.mjd):
        raise TaskError(f"{what}: diff_image has no visit info with a midpoint MJD")
    if not np.isfinite(diff.variance).any():
        raise TaskError(f"{what}: diff_image has no finite variance plane")


def _dipole_candidates(det: DiaDetections, max_separation: float) -> tuple[np.ndarray, np.ndarray]:
    """Peak indices of (positive, negative) pairs that may be the two lobes of a dipole.

    Pairs must share a merged footprint and lie within ``max_separation`` px; they are taken
    closest first, each peak in at most one pair (a dipole's lobes are each other's nearest
    opposite-sign peaks, while a brighter unrelated neighbour in the same footprint is not).
    """
    pos = np.flatnonzero(det.sign > 0)
    neg = np.flatnonzero(det.sign < 0)
    if pos.size == 0 or neg.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(np.column_stack([det.x[pos], det.y[pos]])).sparse_distance_matrix(
        cKDTree(np.column_stack([det.x[neg], det.y[neg]])), max_separation, output_type="ndarray"
    )
    i, j = pos[pairs["i"]], neg[pairs["j"]]
    same = det.parent[i] == det.parent[j]
    i, j, dist = i[same], j[same], pairs["v"][same]
    order = np.lexsort((i, j, dist))  # ties broken by index: deterministic
    used: set[int] = set()
    chosen = []
    for k in order:
        if i[k] not in used and j[k] not in used:
            used.update((int(i[k]), int(j[k])))
            chosen.append(k)
    chosen = np.array(chosen, dtype=np.int64)
    return i[chosen].astype(np.int64), j[chosen].astype(np.int64)


def _to_njy(exposure: Exposure, flux: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if exposure.photo_calib is None:
        return np.asarray(flux, np.float64), np.asarray(err, np.float64)
    f, e = exposure.photo_calib.instflux_to_njy(flux, err)
    return np.asarray(f, np.float64), np.asarray(e, np.float64)


def _flux_columns(name: str, fit: PsfFluxAt, flag_prefix: str) -> dict[str, np.ndarray]:
    return {
        name: fit.flux,
        f"{name}Err": fit.flux_err,
        f"{flag_prefix}_flag": fit.flag,
        f"{flag_prefix}_flag_edge": fit.flag_edge,
        f"{flag_prefix}_flag_noGoodPixels": fit.flag_no_good_pixels,
    }


def _dipole_columns(
    diff: Exposure, fit: DipoleFit, which: np.ndarray, pixel_scale: np.ndarray
) -> dict[str, np.ndarray]:
    """``dipole*`` columns of the pairs whose fit succeeded; NaN (``dipoleNdata`` 0) elsewhere.

    ``which`` is each source's row in ``fit`` (-1 for single-sign sources). The fitted values
    are reported even when the lobes are not significant enough for ``isDipole``: they are
    the maximum-likelihood values, with their (then large) errors.
    """
    n = which.size
    is_dip = which >= 0
    is_dip[is_dip] = fit.success[which[is_dip]]
    k = which[is_dip]
    out = {
        name: np.full(n, np.nan)
        for name in (
            "dipoleMeanFlux",
            "dipoleMeanFluxErr",
            "dipoleFluxDiff",
            "dipoleFluxDiffErr",
            "dipoleLength",
            "dipoleAngle",
            "dipoleChi2",
        )
    }
    out["dipoleNdata"] = np.zeros(n, np.int32)
    if not is_dip.any():
        return out
    mean, mean_err = _to_njy(diff, fit.mean_flux[k], fit.mean_flux_err[k])
    delta, delta_err = _to_njy(diff, fit.flux_diff[k], fit.flux_diff_err[k])
    separation = np.hypot(fit.pos_x[k] - fit.neg_x[k], fit.pos_y[k] - fit.neg_y[k])
    ra_p, dec_p = diff.wcs.all_pix2world(fit.pos_x[k], fit.pos_y[k], 0)
    ra_n, dec_n = diff.wcs.all_pix2world(fit.neg_x[k], fit.neg_y[k], 0)
    # Bearing east of north from the negative to the positive lobe.
    bearing = SkyCoord(ra_n, dec_n, unit="deg").position_angle(SkyCoord(ra_p, dec_p, unit="deg"))
    out["dipoleMeanFlux"][is_dip] = mean
    out["dipoleMeanFluxErr"][is_dip] = mean_err
    out["dipoleFluxDiff"][is_dip] = delta
    out["dipoleFluxDiffErr"][is_dip] = delta_err
    out["dipoleLength"][is_dip] = separation * pixel_scale[is_dip]
    out["dipoleAngle"][is_dip] = bearing.deg
    out["dipoleChi2"][is_dip] = fit.chi2[k]
    out["dipoleNdata"][is_dip] = fit.ndata[k]
    return out
