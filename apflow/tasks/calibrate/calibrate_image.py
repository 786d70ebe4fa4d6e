"""CalibrateImageTask: one CCD from post-ISR counts to a calibrated exposure (issue 5, steps 1-9).

The chain (Rubin's ``CalibrateImageTask.run``)::

    snap combine -> [sky frame] -> background -> detection -> background with sources masked
    -> measurement -> PSF model -> PSF fluxes -> aperture correction -> aperture-to-total
    -> astrometry (TAN-SIP) -> photometric zero point -> summary statistics -> pixels in nJy

Departures from Rubin, each for a reason:

- **Aperture-to-total correction.** Rubin calibrates the flux inside its 12 px calibration
  aperture against the reference catalog, so the light in the PSF wings beyond 12 px ends up in
  the zero point (1-2% for a 1" Moffat PSF of 0.2" pixels). Here a Moffat profile fitted to the
  PSF model measures the fraction of a point source's light inside the aperture, and PSF fluxes
  are divided by it before the zero point is fitted: the zero point is then that of total
  fluxes, the one reference catalogs quote. ``ap_instflux`` keeps meaning "flux inside 12 px".
- **The input PSF is dropped.** A ``post_isr`` exposure may carry a PSF (the simulator attaches
  the true one); calibration determines its own, as it must on real data.
- **Sky frames** (optional input): a detector's sky frame is scaled to the CCD alone
  (:func:`apply_sky_frame`) and subtracted before the background. The better correction fits
  one scale per visit over all CCDs (:mod:`apflow.tasks.sky`'s ``SkyFrameScaleTask`` and
  ``SubtractSkyFrameTask``, stages of a workflow that then feeds calibrate its output); leave
  ``sky_frame`` out then. A fixed sky pattern left in the image (the simulator's is 2% of the
  sky on 40-250 px scales) is detected as sources and biases the zero point by tens of mmag.

Failures (:class:`~apflow.errors.TaskError` and its subclasses ``PsfError``,
``AstrometryError``, ``PhotometryError``) stop the chain where they happen, as Rubin's
``AlgorithmError`` does. What was computed before stays valid and is returned in a
:class:`CalibrateImageResult` whose ``failure`` names the error: e.g. after an astrometric
failure the calexp is in counts with the PSF model but no WCS, and ``stars`` have instrumental
fluxes and NaN coordinates. With ``raise_on_failure`` (the default) the original exception is
re-raised carrying that result as ``exc.partial_outputs``, so the engine can write the partial
outputs on the worker and still report the quantum as failed (Rubin's
``AnnotatedPartialOutputsError``). The engine must drop the attribute (``del
exc.partial_outputs``) before the exception leaves the worker: it holds pixels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sep
from scipy.optimize import least_squares

from ...core import Camera, Detector, Exposure, MaskPlanes, MoffatPsf, PhotoCalib, Psf
from ...core.psf import poly2d_n_terms
from ...errors import ConfigError, TaskError, format_data_id
from ...io import ArrayBundle
from ..base import Task, TaskConfig, _coerce
from .apcorr import ApertureCorrectionConfig, ApertureCorrectionTask
from .astrometry import AstrometryConfig, AstrometryTask
from .background import (
    BackgroundConfig,
    BackgroundModel,
    SubtractBackgroundTask,
    estimate_background,
)
from .detection import DetectionConfig, DetectSourcesTask
from .measurement import MeasurementConfig, MeasureStarsTask
from .photometry import PhotometryConfig, PhotometryTask, calibrate_catalog
from .psf import PsfModelConfig, PsfModelTask
from .psf.pixel_psf import normalized_coordinates, polynomial_terms
from .snaps import SnapCombineConfig, SnapCombineTask
from .summary import SummaryStatsConfig, compute_summary_stats

#: ``calexp_background`` bundle kind (``attrs["kind"]``).
BACKGROUND_KIND = "calexp_background"


def _sub(factory: Any, **overrides: Any) -> Any:
    return dataclasses.field(default_factory=lambda: factory(**overrides))


@dataclasses.dataclass
class CalibrateImageConfig(TaskConfig):
    """Configuration of :class:`CalibrateImageTask`: the subtasks' configs plus a few of its own.

    Overrides address a subtask field with a dot, ``astrometry.fit_order=2`` (command line:
    ``--config calibrate.astrometry.fit_order=2``), or give a mapping per subtask in a workflow
    file (``config: {astrometry: {fit_order: 2}}``).

    Attributes
    ----------
    snap_combine : SnapCombineConfig
    background : BackgroundConfig
        First background pass, before anything is masked. Bins of 32 px (Rubin 128): a
        fixed-pattern sky (fringes, 60-250 px) that no sky frame removed otherwise leaves
        residuals above the detection threshold, which merge into huge footprints. Without
        such a pattern 32 and 128 px give the same accuracy on simulated CCDs.
    detection : DetectionConfig
        5 sigma (Rubin's star detection threshold) with the smoothing kernel of
        ``initial_psf_fwhm``.
    final_background : BackgroundConfig
        Second pass with the detections masked (replaces the first): 32 px bins, for the same
        reason. Stars' wings are masked (footprints grown by 2.4 sigma), so they do not leak in.
    measurement : MeasurementConfig
        Centroids, shapes, 12 px aperture fluxes and flags of every detection.
    psf : PsfModelConfig
        PSF stars need an aperture S/N of 20 (Rubin's PSFEx default 50 leaves a 1k x 1k CCD at
        high latitude with a handful of stars).
    aperture_correction : ApertureCorrectionConfig
        Fitted on the PSF stars with an aperture S/N of 20, without Rubin's final median
        shift: the unweighted median of the faint stars' noisy ratios moved the correction by
        0.1-0.3% on simulated CCDs, where the weighted fit is right to 0.1%.
    astrometry : AstrometryConfig
    photometry : PhotometryConfig
        Zero point from ``psf_instflux`` (aperture-corrected, and total when
        ``aperture_to_total``); sources sharing a footprint (``flag_blended``) are left out,
        since without a deblender their neighbours' light biases their fluxes high.
    summary : SummaryStatsConfig
    initial_psf_fwhm : float
        FWHM (px) of the detection kernel before a PSF is known (Rubin's simple PSF: 4 px).
    psf_stars_per_term : float
        The degree of the PSF model's variation over the CCD is lowered until each polynomial
        term has this many PSF stars. The determiner alone keeps 3 per term; on simulated
        1k x 1k CCDs with 60-110 PSF stars a quadratic then put 2-5% FWHM errors in the
        corners, a linear model < 1.5%; a 4k x 4k CCD (120+ stars) keeps the quadratic.
        Default 20.
    apcorr_stars_per_term : float
        The same for the aperture correction's polynomial. Default 8.
    aperture_to_total : bool
        Divide PSF fluxes by the PSF's fraction of light inside the calibration aperture so the
        zero point refers to total fluxes (see module docstring). Default True.
    aperture_to_total_grid : int
        The fraction is measured on a ``n x n`` grid over the CCD and fitted by a polynomial
        of degree ``min(2, n - 1)``. Default 3.
    star_min_snr : float
        Minimum PSF-flux S/N of a source in ``stars`` (Rubin's star selector: 10).
    star_max_size_excess : float
        A source is extended (``extendedness`` 1) when its adaptive-moment size exceeds the
        PSF stars' size at its S/N by more than this fraction plus three times the size's
        noise (~ 1 / S/N). Default 0.05.
    stars_unresolved_only : bool
        Keep only point sources (extendedness 0) in ``stars`` (Rubin's ``doUnresolved``).
    calibrate_pixels : bool
        Convert the calexp and its background to nJy (Rubin ``do_calibrate_pixels``, default
        True; DRP sets False).
    raise_on_failure : bool
        Re-raise an algorithm failure (carrying the partial result as ``partial_outputs``);
        False returns the partial result with ``failure`` set.
    band : str
        Band of the image; empty means ``visit_info.band``.
    """

    snap_combine: SnapCombineConfig = _sub(SnapCombineConfig)
    background: BackgroundConfig = _sub(BackgroundConfig, bin_size=32)
    detection: DetectionConfig = _sub(DetectionConfig)
    final_background: BackgroundConfig = _sub(BackgroundConfig, bin_size=32)
    measurement: MeasurementConfig = _sub(MeasurementConfig)
    psf: PsfModelConfig = _sub(PsfModelConfig, min_snr=20.0)
    aperture_correction: ApertureCorrectionConfig = _sub(
        ApertureCorrectionConfig, min_snr=20.0, final_median_shift=False
    )
    astrometry: AstrometryConfig = _sub(AstrometryConfig)
    photometry: PhotometryConfig = _sub(
        PhotometryConfig, flag_columns=(*PhotometryConfig().flag_columns, "flag_blended")
    )
    summary: SummaryStatsConfig = _sub(SummaryStatsConfig)
    initial_psf_fwhm: float = 4.0
    psf_stars_per_term: float = 20.0
    apcorr_stars_per_term: float = 8.0
    aperture_to_total: bool = True
    aperture_to_total_grid: int = 3
    star_min_snr: float = 10.0
    star_max_size_excess: float = 0.05
    stars_unresolved_only: bool = True
    calibrate_pixels: bool = True
    raise_on_failure: bool = True
    band: str = ""

    def validate(self) -> None:
        """Validate every subtask config and the task's own fields."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, TaskConfig):
                try:
                    value.validate()
                except ConfigError as exc:
                    raise ConfigError(f"CalibrateImageConfig.{field.name}: {exc}") from None
        if not self.initial_psf_fwhm > 0:
            raise ConfigError("CalibrateImageConfig.initial_psf_fwhm must be > 0")
        if self.aperture_to_total_grid < 1:
            raise ConfigError("CalibrateImageConfig.aperture_to_total_grid must be >= 1")
        if self.star_min_snr < 0 or self.star_max_size_excess < 0:
            raise ConfigError("CalibrateImageConfig: star_min_snr and star_max_size_excess >= 0")

    def updated(self, **overrides: Any) -> CalibrateImageConfig:
        """Copy with fields replaced; ``"sub.field"`` keys and mappings reach subtask configs.

        Raises
        ------
        ConfigError
            On an unknown field or a value that does not convert.
        """
        own: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            head, dot, rest = key.partition(".")
            if dot:
                nested.setdefault(head, {})[rest] = value
            elif isinstance(getattr(self, key, None), TaskConfig) and isinstance(value, Mapping):
                nested.setdefault(key, {}).update(value)
            else:
                own[key] = value
        names = {f.name for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for key, value in own.items():
            if key not in names:
                raise ConfigError(
                    f"CalibrateImageConfig has no field {key!r}; fields: {', '.join(sorted(names))}"
                )
            if isinstance(getattr(self, key), TaskConfig):
                if not isinstance(value, type(getattr(self, key))):
                    raise ConfigError(f"CalibrateImageConfig.{key} needs a mapping of its fields")
                values[key] = value
            else:
                values[key] = _coerce("CalibrateImageConfig", key, value, getattr(self, key))
        for key, fields in nested.items():
            sub = getattr(self, key, None)
            if not isinstance(sub, TaskConfig):
                raise ConfigError(f"CalibrateImageConfig has no subtask config {key!r}")
            try:
                values[key] = sub.updated(**fields)
            except ConfigError as exc:
                raise ConfigError(f"CalibrateImageConfig.{key}: {exc}") from None
        new = dataclasses.replace(self, **values)
        new.validate()
        return new


@dataclasses.dataclass
class CalibrateImageResult:
    """Output of :class:`CalibrateImageTask` (the workflow's datasets are its attributes).

    Attributes
    ----------
    calexp : Exposure or None
        Background-subtracted exposure with its PSF model, fitted TAN-SIP WCS and, once
        calibrated, image and variance in nJy with ``photo_calib = PhotoCalib(1, relative
        error)``. ``metadata`` holds ``photo_calib_counts`` (the nJy-per-count calibration
        applied), ``zero_point``, ``summary_stats``, ``aperture_correction``,
        ``aperture_to_total``, ``sky_correction``, ``BUNIT`` ("nJy" or "count"), the
        per-plane ``mask_fractions``, ``psf_model`` (degree, star counts, reserved-star
        chi^2), ``timings`` (s per step) and ``failure`` (None on success).
    calexp_background : ArrayBundle or None
        The subtracted background (nJy once calibrated): arrays ``values``, ``sigma``,
        ``n_pixels`` (bins), ``x_centers``, ``y_centers``; attrs ``kind``, ``width``,
        ``height``, ``interpolation``, ``units``. :func:`background_model` rebuilds the model.
    stars : pandas.DataFrame or None
        Point sources with PSF S/N >= ``star_min_snr``: positions (``x``, ``y``, ``ra``,
        ``dec``), measurements in counts, ``psf_flux_njy``/``psf_flux_err_njy``/``psf_mag``/
        ``psf_mag_err`` (total flux) and ``ap_*`` (12 px aperture) when calibrated, flags,
        ``extendedness``, ``calib_psf_*``/``calib_astrometry_used``/``calib_photometry_used``.
    psf_stars : pandas.DataFrame or None
        The PSF candidates (see :class:`~apflow.tasks.calibrate.psf.PsfModelResult`).
    astrom_matches, photom_matches : pandas.DataFrame or None
        Source-reference matches of the astrometric and photometric fits.
    summary_stats : dict
        :func:`~apflow.tasks.calibrate.summary.compute_summary_stats` (strict JSON).
    failure : dict or None
        ``{"type", "message", "step"}`` of the algorithm failure that stopped the chain.
    """

    calexp: Exposure | None
    calexp_background: ArrayBundle | None
    stars: pd.DataFrame | None
    psf_stars: pd.DataFrame | None
    astrom_matches: pd.DataFrame | None
    photom_matches: pd.DataFrame | None
    summary_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    failure: dict[str, str] | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Small JSON numbers for the engine's report and provenance."""
        stats = self.summary_stats
        keys = (
            "zero_point",
            "zero_point_err",
            "psf_fwhm",
            "n_psf_star",
            "astrom_offset_mean",
            "n_astrom_matches",
            "sky_bg",
            "sky_noise",
            "mag_lim",
            "eff_time",
        )
        out: dict[str, Any] = {key: stats.get(key) for key in keys}
        out["n_stars"] = 0 if self.stars is None else len(self.stars)
        out["n_photom_matches"] = (
            0 if self.photom_matches is None else int(self.photom_matches["used"].sum())
        )
        out["failure"] = None if self.failure is None else self.failure["type"]
        out["seconds"] = round(sum(self.timings.values()), 3)
        return out


class CalibrateImageTask(Task):
    """Calibrate one CCD: background, PSF, aperture correction, astrometry, photometry, nJy."""

    ConfigClass = CalibrateImageConfig
    config: CalibrateImageConfig

    def run(
        self,
        exposures: Exposure | Sequence[Exposure],
        ref_cat: pd.DataFrame,
        sky_frame: Exposure | None = None,
        camera: Camera | None = None,
        detector: Detector | None = None,
        data_id: Mapping[str, Any] | None = None,
    ) -> CalibrateImageResult:
        """Calibrate a post-ISR exposure (or its two snaps).

        Parameters
        ----------
        exposures : Exposure or sequence of Exposure
            ``post_isr`` in counts with an initial WCS, or the two snaps of a visit.
        ref_cat : pandas.DataFrame
            Reference stars: ``id``, ``ra``, ``dec`` (deg), ``<band>_flux`` and
            ``<band>_fluxErr`` (nJy).
        sky_frame : Exposure or ArrayBundle, optional
            Sky frame of the detector (``sky_frame`` or ``sky_frame_binned``), subtracted with
            a scale fitted on this CCD (:func:`apply_sky_frame`).
        camera, detector : Camera, Detector, optional
            Give the astrometric fit the camera's distortion model.
        data_id : mapping, optional
            Named in error messages.

        Returns
        -------
        CalibrateImageResult

        Raises
        ------
        TaskError
            (or its subclasses) on an algorithm failure when ``raise_on_failure``, with the
            partial :class:`CalibrateImageResult` as ``exc.partial_outputs``; and always when
            the input itself is unusable (snap count, no background).
        """
        cfg = self.config
        run = _Run()
        exposure = run.step("snap_combine", SnapCombineTask(cfg.snap_combine).run, exposures)
        exposure = dataclasses.replace(exposure.exposure, psf=None, photo_calib=None)
        band = cfg.band or (exposure.visit_info.band if exposure.visit_info else "")
        exposure, sky_info = run.step("sky_frame", apply_sky_frame, exposure, sky_frame)
        initial_wcs = exposure.wcs

        first = run.step("background", SubtractBackgroundTask(cfg.background).run, exposure)
        detection = run.step(
            "detection",
            DetectSourcesTask(cfg.detection).run,
            first.exposure,
            psf_fwhm=cfg.initial_psf_fwhm,
        )
        background = run.step(
            "final_background",
            SubtractBackgroundTask(cfg.final_background).run,
            detection.exposure,
            previous_background=first.background,
        )
        exposure = dataclasses.replace(background.exposure, wcs=None)
        stars = run.step(
            "measurement", MeasureStarsTask(cfg.measurement).run, exposure, detection.sources
        ).stars
        state = _State(exposure=exposure, stars=stars, background=background.background)
        state.metadata["sky_correction"] = sky_info
        try:
            self._characterise(run, state)
            self._fit_astrometry(run, state, ref_cat, initial_wcs, band, camera, detector, data_id)
            self._fit_photometry(run, state, ref_cat, band, data_id)
        except TaskError as exc:
            error = _with_data_id(exc, data_id, run.current)
            state.failure = {"type": type(exc).__name__, "message": str(error), "step": run.current}
            result = self._finish(run, state)
            if not cfg.raise_on_failure:
                return result
            error.partial_outputs = result  # type: ignore[attr-defined]
            if error is exc:
                raise
            raise error from exc
        return self._finish(run, state)

    def _characterise(self, run: _Run, state: _State) -> None:
        cfg = self.config
        psf = run.step("psf", PsfModelTask(cfg.psf).run, state.exposure, state.stars)
        n_psf = int(psf.stars["calib_psf_used"].sum())
        order = _affordable_order(n_psf, psf.psf.order, cfg.psf_stars_per_term)
        if order < psf.psf.order:
            # few stars: a lower degree, whose corners are not an extrapolation of noise
            psf_config = dataclasses.replace(cfg.psf, order=order)
            psf = run.step("psf", PsfModelTask(psf_config).run, state.exposure, state.stars)
        state.exposure, state.psf_stars = psf.exposure, psf.psf_stars
        state.metadata["psf_model"] = {
            "order": psf.psf.order,
            "n_used": int(psf.stars["calib_psf_used"].sum()),
            "n_reserved": int(psf.stars["calib_psf_reserved"].sum()),
            "reserved_chi2_dof": psf.reserved_chi2_dof,
            "selection": dict(psf.selection_counts),
        }
        psf_only = dataclasses.replace(
            cfg.measurement, measure_moments=False, measure_aperture=False
        )
        measured = run.step("psf_flux", MeasureStarsTask(psf_only).run, psf.exposure, psf.stars)
        apcorr_config = dataclasses.replace(
            cfg.aperture_correction,
            order=_affordable_order(
                int(psf.stars["calib_psf_used"].sum()),
                cfg.aperture_correction.order,
                cfg.apcorr_stars_per_term,
            ),
        )
        apcorr = run.step(
            "aperture_correction",
            ApertureCorrectionTask(apcorr_config).run,
            psf.exposure,
            measured.stars,
        )
        state.exposure, stars = apcorr.exposure, apcorr.stars
        if cfg.aperture_to_total:
            correction = run.step(
                "aperture_to_total",
                measure_aperture_to_total,
                psf.psf,
                cfg.measurement.aperture_radius,
                cfg.aperture_to_total_grid,
            )
            stars = apply_aperture_to_total(stars, correction)
            state.metadata["aperture_to_total"] = correction.to_dict()
        state.stars = classify_extendedness(stars, psf.psf, cfg.star_max_size_excess)

    def _fit_astrometry(
        self,
        run: _Run,
        state: _State,
        ref_cat: pd.DataFrame,
        initial_wcs: Any,
        band: str,
        camera: Camera | None,
        detector: Detector | None,
        data_id: Mapping[str, Any] | None,
    ) -> None:
        if initial_wcs is None:
            raise TaskError(f"calibrate [{format_data_id(data_id)}]: the exposure has no WCS")
        astrometry = run.step(
            "astrometry",
            AstrometryTask(self.config.astrometry).run,
            state.stars,
            ref_cat,
            initial_wcs,
            state.exposure.shape,
            band=band,
            camera=camera,
            detector=detector,
            data_id=data_id,
        )
        state.exposure = dataclasses.replace(state.exposure, wcs=astrometry.wcs)
        matches = astrometry.matches
        used_ids = set(matches.loc[matches["used"], "source_id"])
        stars = astrometry.sources
        stars["calib_astrometry_used"] = stars["id"].isin(used_ids).to_numpy()
        state.stars, state.astrom_matches = stars, matches
        state.astrometry_summary = astrometry.summary()

    def _fit_photometry(
        self,
        run: _Run,
        state: _State,
        ref_cat: pd.DataFrame,
        band: str,
        data_id: Mapping[str, Any] | None,
    ) -> None:
        photometry = run.step(
            "photometry",
            PhotometryTask(self.config.photometry).run,
            state.stars,
            ref_cat,
            band,
            data_id=data_id,
        )
        matches = photometry.matches
        used_ids = set(matches.loc[matches["used"], "source_id"])
        state.stars["calib_photometry_used"] = state.stars["id"].isin(used_ids).to_numpy()
        state.photom_matches = matches
        state.photo_calib = photometry.photo_calib

    def _finish(self, run: _Run, state: _State) -> CalibrateImageResult:
        """Summary statistics, selection of the star catalog, conversion to nJy."""
        cfg = self.config
        start = time.perf_counter()
        exposure, calib = state.exposure, state.photo_calib
        stats = compute_summary_stats(
            dataclasses.replace(exposure, photo_calib=calib),
            state.background,
            state.psf_stars,
            state.astrometry_summary,
            calib,
            cfg.summary,
        )
        stars = _select_stars(state.stars, cfg)
        if "ra" not in stars:
            stars["ra"] = np.nan
            stars["dec"] = np.nan
        background = state.background
        metadata = {
            **exposure.metadata,
            **state.metadata,
            "summary_stats": stats,
            "mask_fractions": _mask_fractions(exposure.mask),
            "failure": state.failure,
        }
        if calib is not None:
            stars = calibrate_catalog(stars, calib, _flux_columns(stars))
            metadata["photo_calib_counts"] = calib.to_dict()
            metadata["zero_point"] = calib.zero_point
        if calib is not None and cfg.calibrate_pixels:
            scale = calib.calibration_mean
            exposure = dataclasses.replace(
                exposure,
                image=(exposure.image * np.float32(scale)).astype(np.float32),
                variance=(exposure.variance * np.float32(scale**2)).astype(np.float32),
                photo_calib=PhotoCalib(1.0, calib.calibration_err / scale),
            )
            background = background.scaled(scale)
            metadata["BUNIT"] = "nJy"
        else:
            metadata["BUNIT"] = "count"
        run.timings["finish"] = time.perf_counter() - start
        metadata["timings"] = {k: round(v, 4) for k, v in run.timings.items()}
        return CalibrateImageResult(
            calexp=dataclasses.replace(exposure, metadata=metadata),
            calexp_background=background_bundle(background, metadata["BUNIT"]),
            stars=stars.reset_index(drop=True),
            psf_stars=state.psf_stars,
            astrom_matches=state.astrom_matches,
            photom_matches=state.photom_matches,
            summary_stats=stats,
            failure=state.failure,
            timings=dict(run.timings),
        )


@dataclasses.dataclass
class _State:
    """What the chain has produced so far (what a failure leaves valid)."""

    exposure: Exposure
    stars: pd.DataFrame
    background: BackgroundModel
    psf_stars: pd.DataFrame | None = None
    astrom_matches: pd.DataFrame | None = None
    photom_matches: pd.DataFrame | None = None
    astrometry_summary: dict[str, Any] | None = None
    photo_calib: PhotoCalib | None = None
    failure: dict[str, str] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def _with_data_id(exc: TaskError, data_id: Mapping[str, Any] | None, step: str) -> TaskError:
    """The error itself if its message names the data id, else one of the same type that does."""
    where = format_data_id(data_id)
    if not data_id or where in str(exc):
        return exc
    try:
        return type(exc)(f"calibrate [{where}] {step}: {exc}")
    except TypeError:  # a subclass with another signature: keep it as it is
        return exc


def _affordable_order(n_stars: int, order: int, per_term: float) -> int:
    """Highest degree <= ``order`` with at least ``per_term`` stars per polynomial term."""
    while order > 0 and n_stars < per_term * poly2d_n_terms(order):
        order -= 1
    return order


class _Run:
    """Times each step and remembers which one is running (named in a failure)."""

    def __init__(self) -> None:
        self.current = ""
        self.timings: dict[str, float] = {}

    def step(self, name: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.current = name
        start = time.perf_counter()
        result = func(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        return result


# -- aperture-to-total correction -------------------------------------------------------------


@dataclasses.dataclass
class ApertureToTotal:
    """Fraction of a point source's light inside the calibration aperture, over the CCD.

    Attributes
    ----------
    coeffs : numpy.ndarray
        Polynomial (terms of :func:`~apflow.tasks.calibrate.psf.polynomial_terms`) of the
        fraction in coordinates normalised to [-1, 1].
    order, width, height : int
    radius : float
        Aperture radius, px.
    beta : float
        Index of the Moffat fitted to the PSF model.
    grid_x, grid_y, grid_fraction, grid_fwhm : numpy.ndarray
        Where the fraction was measured, its value and the Moffat FWHM there (px).
    """

    coeffs: np.ndarray
    order: int
    width: int
    height: int
    radius: float
    beta: float
    grid_x: np.ndarray
    grid_y: np.ndarray
    grid_fraction: np.ndarray
    grid_fwhm: np.ndarray

    def fraction(self, x: Any, y: Any) -> np.ndarray:
        """Fraction of the total light inside ``radius`` at pixel positions (x, y)."""
        x = np.asarray(x, np.float64)
        u, v = normalized_coordinates(x.ravel(), np.ravel(y), self.width, self.height)
        return (polynomial_terms(u, v, self.order) @ self.coeffs).reshape(x.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the calexp's metadata)."""
        return {
            "type": "polynomial_aperture_fraction",
            "definition": "fraction of a point source's total flux inside radius (Moffat fit)",
            "radius": float(self.radius),
            "order": int(self.order),
            "beta": float(self.beta),
            "width": int(self.width),
            "height": int(self.height),
            "coeffs": [float(c) for c in self.coeffs],
            "grid_x": [float(v) for v in self.grid_x],
            "grid_y": [float(v) for v in self.grid_y],
            "grid_fraction": [float(v) for v in self.grid_fraction],
            "grid_fwhm": [float(v) for v in self.grid_fwhm],
        }


def measure_aperture_to_total(psf: Psf, radius: float, grid: int = 3) -> ApertureToTotal:
    """Fraction of a point source's light inside a circular aperture, from the PSF model.

    A PSF model stamp spans about +-3.5 FWHM and is normalised over it, so the light beyond
    (1-2% for a beta = 3.5 Moffat at 12 px) is not in the model. A pixel-integrated elliptical
    Moffat (FWHM, beta, e1, e2 free) is fitted to the model image at the CCD centre; elsewhere
    on the ``grid`` its FWHM is scaled by the model's FWHM there (beta and ellipticity barely
    change the fraction across a CCD). The fraction is the profile's exact-overlap aperture
    sum (as ``sep.sum_circle`` measures the stars) over its total flux.

    Parameters
    ----------
    psf : Psf
        PSF model with ``width``/``height`` attributes (CCD size), e.g. a ``PixelPsf``.
    radius : float
        Aperture radius, px.
    grid : int
        Positions per axis.
    """
    width, height = int(psf.width), int(psf.height)  # type: ignore[attr-defined]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    along_x = np.linspace(0, width - 1, grid) if grid > 1 else np.array([cx])
    along_y = np.linspace(0, height - 1, grid) if grid > 1 else np.array([cy])
    gx, gy = (a.ravel() for a in np.meshgrid(along_x, along_y))
    centre = _fit_moffat(psf.compute_kernel_image(cx, cy))
    scale = centre.fwhm / psf.fwhm_at(cx, cy)
    fwhm = np.array([scale * psf.fwhm_at(x, y) for x, y in zip(gx, gy, strict=True)])
    fraction = np.array(
        [_moffat_fraction(dataclasses.replace(centre, fwhm=float(f)), radius) for f in fwhm]
    )
    order = min(2, grid - 1)
    u, v = normalized_coordinates(gx, gy, width, height)
    coeffs, *_ = np.linalg.lstsq(polynomial_terms(u, v, order), fraction, rcond=None)
    return ApertureToTotal(
        coeffs=coeffs,
        order=order,
        width=width,
        height=height,
        radius=float(radius),
        beta=float(centre.beta),
        grid_x=gx,
        grid_y=gy,
        grid_fraction=fraction,
        grid_fwhm=fwhm,
    )


def apply_aperture_to_total(stars: pd.DataFrame, correction: ApertureToTotal) -> pd.DataFrame:
    """Divide ``psf_instflux`` (aperture-corrected) and its error by the aperture fraction.

    Adds ``psf_aperture_fraction``; ``ap_instflux`` is left as the flux inside the aperture.
    """
    fraction = correction.fraction(stars["x"].to_numpy(), stars["y"].to_numpy())
    out = stars.copy()
    out["psf_aperture_fraction"] = fraction
    out["psf_instflux"] = stars["psf_instflux"].to_numpy() / fraction
    out["psf_instflux_err"] = stars["psf_instflux_err"].to_numpy() / fraction
    return out


def _fit_moffat(kernel: np.ndarray) -> MoffatPsf:
    """Pixel-integrated elliptical Moffat of least squares to a centred PSF image."""
    size = kernel.shape[0]
    data = kernel / kernel.sum()
    peak = data.max()
    # starting FWHM from the area above half maximum
    fwhm0 = max(2.0 * math.sqrt(np.count_nonzero(data > 0.5 * peak) / math.pi), 1.5)

    def model(params: np.ndarray) -> np.ndarray:
        fwhm, beta, e1, e2 = _moffat_parameters(params)
        return MoffatPsf(fwhm=fwhm, e1=e1, e2=e2, beta=beta).compute_kernel_image(0.0, 0.0, size)

    def residual(params: np.ndarray) -> np.ndarray:
        image = model(params)
        amplitude = float(np.sum(image * data) / np.sum(image * image))
        return (amplitude * image - data).ravel()

    start = np.array([math.log(fwhm0), math.log(3.5 - 1.0), 0.0, 0.0])
    solution = least_squares(residual, start, x_scale=[0.1, 0.3, 0.02, 0.02], xtol=1e-10)
    fwhm, beta, e1, e2 = _moffat_parameters(solution.x)
    return MoffatPsf(fwhm=fwhm, e1=e1, e2=e2, beta=beta)


def _moffat_parameters(params: np.ndarray) -> tuple[float, float, float, float]:
    # log parameters keep FWHM > 0 and beta > 1; |e| is capped well below 1
    e1, e2 = float(params[2]), float(params[3])
    norm = math.hypot(e1, e2)
    if norm > 0.5:
        e1, e2 = 0.5 * e1 / norm, 0.5 * e2 / norm
    return math.exp(params[0]), 1.0 + math.exp(params[1]), e1, e2


def _moffat_fraction(moffat: MoffatPsf, radius: float, order: int = 5) -> float:
    """Exact-overlap circular aperture sum of a pixel-integrated Moffat over its total flux.

    The pixels are integrated by Gauss-Legendre quadrature (as :mod:`apflow.core.psf` renders
    them) without normalising the stamp, and divided by the profile's analytic integral
    ``pi alpha^2 / (beta - 1)`` (the shape matrix has unit determinant).
    """
    half = int(math.ceil(radius)) + 1
    nodes, weights = np.polynomial.legendre.leggauss(order)
    coords = (np.arange(-half, half + 1)[:, None] + 0.5 * nodes[None, :]).ravel()
    u, v = np.meshgrid(coords, coords)
    e1, e2 = moffat.e1, moffat.e2
    norm = math.sqrt(1.0 - e1 * e1 - e2 * e2)
    r_sq = ((1.0 - e1) * u * u - 2.0 * e2 * u * v + (1.0 + e1) * v * v) / norm
    profile = (1.0 + r_sq / moffat.alpha**2) ** (-moffat.beta)
    w = np.tile(weights, 2 * half + 1) * 0.5  # a pixel is [-0.5, 0.5]: half the [-1, 1] weights
    size = 2 * half + 1
    image = (profile * np.outer(w, w)).reshape(size, order, size, order).sum(axis=(1, 3))
    inside, _, _ = sep.sum_circle(image, [float(half)], [float(half)], radius, subpix=0)
    total = math.pi * moffat.alpha**2 / (moffat.beta - 1.0)
    return float(inside[0] / total)


# -- star catalog ----------------------------------------------------------------------------


def classify_extendedness(
    stars: pd.DataFrame, psf: Psf, max_size_excess: float = 0.05
) -> pd.DataFrame:
    """Add ``size_ratio`` and ``extendedness`` (0 point source, 1 extended, NaN unmeasured).

    The adaptive-moment size ``sqrt((ixx + iyy) / 2)`` is divided by the PSF's
    Gaussian-equivalent sigma at the source; the ratio of a point source is a constant of the
    PSF's profile, measured as the median over the PSF stars (``calib_psf_used``). A source is
    extended when its ratio exceeds that by more than ``max_size_excess`` plus three times the
    ratio's noise, taken as ``ratio / (S/N)``.
    """
    out = stars.copy()
    sigma = psf_sigma_field(psf, stars["x"].to_numpy(), stars["y"].to_numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        size = np.sqrt(0.5 * (stars["ixx"].to_numpy() + stars["iyy"].to_numpy()))
        ratio = size / sigma
        snr = stars["psf_instflux"].to_numpy() / stars["psf_instflux_err"].to_numpy()
    reference = ratio[stars["calib_psf_used"].to_numpy(bool)] if "calib_psf_used" in stars else []
    point = float(np.nanmedian(reference)) if len(reference) else float(np.nanmedian(ratio))
    noise = point / np.maximum(np.nan_to_num(snr, nan=1.0), 1.0)
    excess = ratio / point - 1.0
    extended = np.where(
        np.isfinite(ratio), (excess > max_size_excess + 3.0 * noise / point).astype(float), np.nan
    )
    out["size_ratio"] = ratio / point
    out["extendedness"] = extended
    return out


def psf_sigma_field(psf: Psf, x: np.ndarray, y: np.ndarray, grid: int = 3) -> np.ndarray:
    """Gaussian-equivalent PSF sigma at many positions from a ``grid x grid`` polynomial fit.

    ``fwhm_at`` of a pixel model costs an FFT; the PSF varies smoothly, so it is evaluated on a
    small grid only.
    """
    width = int(getattr(psf, "width", 0) or max(np.max(x, initial=0.0) + 1, 1))
    height = int(getattr(psf, "height", 0) or max(np.max(y, initial=0.0) + 1, 1))
    gx, gy = (
        a.ravel()
        for a in np.meshgrid(np.linspace(0, width - 1, grid), np.linspace(0, height - 1, grid))
    )
    sigma = np.array([psf.sigma_at(float(a), float(b)) for a, b in zip(gx, gy, strict=True)])
    order = min(2, grid - 1)
    coeffs, *_ = np.linalg.lstsq(
        polynomial_terms(*normalized_coordinates(gx, gy, width, height), order), sigma, rcond=None
    )
    u, v = normalized_coordinates(np.asarray(x), np.asarray(y), width, height)
    return polynomial_terms(u, v, order) @ coeffs


def _select_stars(stars: pd.DataFrame, cfg: CalibrateImageConfig) -> pd.DataFrame:
    """The ``stars`` catalog: sources with S/N >= star_min_snr (point sources only).

    The S/N is the PSF flux's, or the aperture flux's when the chain stopped before a PSF.
    """
    column = "psf_instflux"
    if column not in stars or not np.isfinite(stars[column].to_numpy(dtype=float)).any():
        column = "ap_instflux"
    flux = stars[column].to_numpy(dtype=float)
    err = stars[f"{column}_err"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.isfinite(flux) & (err > 0) & (flux / err >= cfg.star_min_snr)
    if cfg.stars_unresolved_only and "extendedness" in stars:
        keep &= stars["extendedness"].to_numpy(dtype=float) == 0.0
    return stars[keep].copy()


def _flux_columns(stars: pd.DataFrame) -> list[str]:
    return [c for c in ("psf_instflux", "ap_instflux") if c in stars]


# -- pixels, background, sky frame ---------------------------------------------------------


def background_bundle(background: BackgroundModel, units: str) -> ArrayBundle:
    """The ``calexp_background`` dataset: the binned model as named arrays."""
    arrays = {
        "values": np.asarray(background.values, np.float64),
        "sigma": np.asarray(background.sigma, np.float64),
        "n_pixels": np.asarray(background.n_pixels, np.int64),
        "x_centers": np.asarray(background.x_centers, np.float64),
        "y_centers": np.asarray(background.y_centers, np.float64),
    }
    attrs = {
        "kind": BACKGROUND_KIND,
        "width": int(background.width),
        "height": int(background.height),
        "interpolation": background.interpolation,
        "units": units,
    }
    return ArrayBundle(arrays, attrs)


def background_model(bundle: Mapping[str, np.ndarray] | ArrayBundle) -> BackgroundModel:
    """Rebuild the :class:`BackgroundModel` of a ``calexp_background`` bundle."""
    attrs = getattr(bundle, "attrs", {})
    if attrs.get("kind", BACKGROUND_KIND) != BACKGROUND_KIND:
        raise TaskError(f"expected a {BACKGROUND_KIND} bundle, got kind {attrs.get('kind')!r}")
    return BackgroundModel(
        values=np.asarray(bundle["values"], np.float64),
        sigma=np.asarray(bundle["sigma"], np.float64),
        n_pixels=np.asarray(bundle["n_pixels"], np.int64),
        x_centers=np.asarray(bundle["x_centers"], np.float64),
        y_centers=np.asarray(bundle["y_centers"], np.float64),
        width=int(attrs["width"]),
        height=int(attrs["height"]),
        interpolation=str(attrs.get("interpolation", "akima")),
    )


def apply_sky_frame(
    exposure: Exposure, sky_frame: Exposure | ArrayBundle | None, bin_size: int = 32
) -> tuple[Exposure, dict[str, Any]]:
    """Subtract a detector's sky frame, scaled to this CCD alone.

    The sky module's correction fits one scale per visit over all its CCDs (a gather) before
    calibration. A single CCD can still fit its own: the image's clipped means in
    ``bin_size`` bins ``v`` are modelled as a plane ``L(x, y)`` (the smooth sky) plus
    ``s f N``, with ``f`` the frame's bin means and ``N`` its normaliser (``L`` itself for a
    ``"local"`` frame, the CCD's median level for a ``"visit_scale"`` one), by least squares
    with 3-sigma clipping of the stars' bins. :func:`apflow.tasks.sky.subtract_sky_frame` then
    removes ``s f N``.

    Parameters
    ----------
    exposure : Exposure
        Counts, nothing subtracted yet.
    sky_frame : Exposure or ArrayBundle or None
        The ``sky_frame`` exposure (fraction of the sky) or a ``sky_frame_binned`` bundle.
    bin_size : int
        Bin of the fit, px.

    Returns
    -------
    exposure : Exposure
        The corrected exposure (the input itself when there is no frame).
    info : dict
        ``applied``, and ``scale``, ``normalization``, ``n_bins``, ``rms`` (fraction of the sky)
        when applied.

    Raises
    ------
    TaskError
        If the frame's shape differs from the exposure's or the fit has too few bins.
    """
    if sky_frame is None:
        return exposure, {"applied": False, "reason": "no sky frame given"}
    from ..sky import subtract_sky_frame, upsample_bins

    if isinstance(sky_frame, Exposure):
        frame, attrs = sky_frame.image, sky_frame.metadata
    else:
        attrs = dict(getattr(sky_frame, "attrs", {}))
        binned = np.asarray(sky_frame["sky"], np.float64)
        frame = upsample_bins(binned, exposure.shape, int(attrs["bin_size"]))
    if frame.shape != exposure.shape:
        raise TaskError(f"sky frame of shape {frame.shape} for an exposure of {exposure.shape}")
    normalization = str(attrs.get("normalization", "visit_scale"))
    config = BackgroundConfig(bin_size=bin_size)
    image_bins = estimate_background(exposure.image, exposure.mask, config)
    frame_bins = estimate_background(np.asarray(frame, np.float32), None, config).values
    x, y = np.meshgrid(image_bins.x_centers, image_bins.y_centers)
    u, v = normalized_coordinates(x.ravel(), y.ravel(), exposure.width, exposure.height)
    values, f = image_bins.values.ravel(), frame_bins.ravel()
    measured = (image_bins.n_pixels.ravel() > 0) & np.isfinite(f)
    keep = measured.copy()
    level = np.full(values.shape, float(np.median(values[measured])))
    for _ in range(4):
        design = np.column_stack([np.ones_like(u), u, v, f * level])
        coeffs, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coeffs
        if normalization == "local":
            level = design[:, :3] @ coeffs[:3]
        q25, q75 = np.percentile(residual[keep], [25.0, 75.0])
        keep = measured & (np.abs(residual) <= 3.0 * 0.741 * (q75 - q25))
    if keep.sum() < 10:
        raise TaskError(f"sky frame: only {int(keep.sum())} usable {bin_size}-px bins to fit")
    scale = float(coeffs[3])
    if normalization == "local":
        fy, fx = np.mgrid[0 : exposure.height, 0 : exposure.width]
        pu, pv = normalized_coordinates(fx, fy, exposure.width, exposure.height)
        normalizer: np.ndarray | float = (coeffs[0] + coeffs[1] * pu + coeffs[2] * pv).astype(
            np.float32
        )
    else:
        normalizer = float(level[0])
    corrected = subtract_sky_frame(exposure, np.asarray(frame), scale, normalizer)
    rms = float(np.sqrt(np.mean(residual[keep] ** 2)) / np.median(level))
    info = {
        "applied": True,
        "scale": scale,
        "normalization": normalization,
        "n_bins": int(keep.sum()),
        "rms": rms,
    }
    return corrected, info


def _mask_fractions(mask: np.ndarray) -> dict[str, float]:
    """Fraction of the pixels with each mask plane set (Rubin's ``<plane>_mask_fraction``)."""
    return {
        name: float(np.count_nonzero(mask & MaskPlanes.bits(name)) / mask.size)
        for name in MaskPlanes.to_dict()
    }
