"""CalibrateImageTask: one CCD from post-ISR counts to a calibrated exposure (issue 5, steps 1-9).

Helpers live beside it: :mod:`.aperture_to_total` (the fraction of light inside the 12 px
aperture), :mod:`.star_selection` (extendedness, the ``stars`` catalog), :mod:`.sky_frame`
(an optional sky frame scaled on the CCD), and ``background_bundle`` in :mod:`.background`
(the ``calexp_background`` dataset).

The chain (Rubin's ``CalibrateImageTask.run``)::

    snap combine -> [sky frame] -> background -> detection -> background with sources masked
    -> measurement -> PSF model -> PSF fluxes -> aperture correction -> aperture-to-total
    -> astrometry (TAN-SIP) -> photometric zero point -> summary statistics -> pixels in nJy

Departures from Rubin, each for a reason:

- **Aperture-to-total correction** (:mod:`.aperture_to_total`): the zero point is that of
  total fluxes, the one reference catalogs quote, not of the flux inside 12 px.
- **The input PSF is dropped.** A ``post_isr`` exposure may carry a PSF (the simulator attaches
  the true one); calibration determines its own, as it must on real data.
- **Sky frames** (optional input): a detector's sky frame is scaled to the CCD alone
  (:func:`apply_sky_frame`) and subtracted before the background. The better correction fits
  one scale per visit over all CCDs (:mod:`apflow.tasks.sky`'s ``SkyFrameScaleTask`` and
  ``SubtractSkyFrameTask``, stages of a workflow that then feeds calibrate its output); leave
  ``sky_frame`` out then. Without sky frames a CCD is still calibrated: on the simulator's
  default data (2% fixed sky pattern on 60-300 px scales, ~10 PSF stars per 1k x 1k CCD)
  every CCD succeeds, with zero points scattered by ~11 mmag rms about the truth (few PSF
  stars and the 1.5% reference errors; see tests/tasks/calibrate/test_calibrate_default_sim.py).
- **Few PSF stars.** Below ``psf.pixel_min_stars`` fit stars the PSF is an analytic Moffat
  of smoothly varying FWHM and ellipticity (:mod:`.psf.analytic`); its aperture correction
  is then the model's prediction when the stars measure it less precisely than
  ``apcorr_max_error`` (:meth:`CalibrateImageTask._aperture_correction`), and the ``stars``
  catalog's PSF flux errors include the model's own error (``psf_model_error``).

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

from ...core import Camera, Detector, Exposure, MaskPlanes, PhotoCalib, Psf
from ...core.psf import poly2d_n_terms
from ...errors import ConfigError, TaskError, format_data_id
from ...io import ArrayBundle
from ..base import Task, TaskConfig, _coerce
from .apcorr import (
    ApertureCorrectionConfig,
    ApertureCorrectionTask,
    apply_aperture_correction,
    model_aperture_correction,
)
from .aperture_to_total import apply_aperture_to_total, measure_aperture_to_total
from .astrometry import AstrometryConfig, AstrometryTask
from .background import (
    BackgroundConfig,
    BackgroundModel,
    SubtractBackgroundTask,
    background_bundle,
    residual_sky_rms,
)
from .detection import DetectionConfig, DetectSourcesTask
from .measurement import MeasurementConfig, MeasureStarsTask
from .photometry import PhotometryConfig, PhotometryTask, calibrate_catalog
from .psf import MoffatFluxError, PixelPsf, PsfModelConfig, PsfModelResult, PsfModelTask
from .sky_frame import apply_sky_frame
from .snaps import SnapCombineConfig, SnapCombineTask
from .star_selection import classify_extendedness, select_stars
from .summary import SummaryStatsConfig, compute_summary_stats


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
        First background pass, before anything is masked. Bins of 32 px (Rubin 128). The
        simulator's fixed sky pattern of 2% of the sky, when no sky frame removed it, leaves
        0-2.2 counts rms beyond the noise with 32 px bins now that its scales are 60-300 px;
        its earlier 40-250 px version left 14-18 counts and made 600-1200 spurious
        detections on some 1k x 1k CCDs. ``bin_size=16`` follows finer structure but moved
        the zero point of star-rich CCDs by 2-3 mmag.
    detection : DetectionConfig
        5 sigma (Rubin's star detection threshold) with the smoothing kernel of
        ``initial_psf_fwhm``.
    final_background : BackgroundConfig
        Second pass with the detections masked (replaces the first): 32 px bins, for the same
        reason, and each footprint grown first in proportion to its size
        (``detected_grow_scale`` 1: by its semi-major axis less 8 px, at most 32 px; Rubin
        masks DETECTED only, grown by 2.4 PSF sigmas). A bright galaxy's 5-sigma footprint
        ends where its exponential wing is still ~15-30 nJy/px; the light beyond it (~10^4
        nJy for a 2e5 nJy galaxy of 2.8" half-light radius) went into the bins around it, and
        the calexp kept a negative halo: against the simulator's true sky on the demo data
        (seeds 0 and 3, visits 1-4, 9 CCDs each) -5.9 and -2.5 nJy/px mean 10-20 px from
        galaxies of 1e5-3e5 nJy, -2.7 and -1.3 at 20-40 px, -9.7 and -5.5 for the worst
        galaxy, which made negative DiaSources. Grown, these means are within 0.5 nJy/px and
        no object of > 3e4 nJy has worse than -2 nJy/px 20-150 px away. Stars' steep Moffat
        wings leave little beyond their footprints; the offset spares the footprints of faint
        stars (a <= 8 px), whose growth filled bins near them from their neighbours: without
        a sky frame the 2% sky pattern then moved their PSF fluxes (offset 5 px: flux pulls
        at S/N 30-100 1.13-1.25 instead of 1.08; 8 px: 1.09). Cost: +0.15-0.2 s CPU per
        LSSTCam CCD. With 16 px bins, also grow every footprint (``detected_grow``, 6 px) so
        that the wings of faint stars stay out of the small bins.
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
    psf_model_error : bool
        Add the Moffat PSF model's own error (:class:`~.psf.MoffatFluxError`: its fit's
        parameter covariance and the fit stars' FWHM scatter beyond it), less the part the
        zero point absorbs, to the PSF flux errors of the ``stars`` catalog. A model fitted
        to 6-20 stars has FWHM errors of ~1.4% rms at the stars, which move their PSF fluxes
        by as much: without it the flux pulls at S/N 30-100 on the simulator's sparse CCDs
        had a standard deviation of 1.29, with it 1.08. Default True (no effect with the
        pixel model).
    residual_sky_error : bool
        Add the error of a residual sky structure (:func:`~.background.residual_sky_rms`,
        measured on the CCD) to the PSF and aperture flux errors of the ``stars`` catalog
        (not to those the zero point is fitted with). Default True.
    apcorr_max_error : float
        With an analytic (Moffat) PSF model, a measured aperture correction less precise
        than this (1-sigma, at the CCD centre) is replaced by the model's prediction.
        Default 0.003.
    apcorr_model_error : float
        Error assigned to the model's prediction (its profile error). Default 0.003.
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
    final_background: BackgroundConfig = _sub(
        BackgroundConfig, bin_size=32, detected_grow_scale=1.0
    )
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
    psf_model_error: bool = True
    residual_sky_error: bool = True
    apcorr_max_error: float = 0.003
    apcorr_model_error: float = 0.003
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
    timings : dict
        Wall seconds per step, in the order they ran (``snap_combine``, ``sky_frame``,
        ``background``, ``detection``, ``final_background``, ``measurement``, ``psf``,
        ``psf_flux``, ``residual_sky``, ``aperture_correction``, ``aperture_to_total``,
        ``astrometry``, ``photometry``, ``finish``); also in ``summary()["timings"]``.
    cpu_timings : dict
        CPU seconds of this process per step (the wall time an unshared core would take, for
        benchmarks on a busy machine).
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
    cpu_timings: dict[str, float] = dataclasses.field(default_factory=dict)

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
        # per step, for operators looking for the slow part of a slow CCD (a dozen floats)
        out["timings"] = {step: round(seconds, 3) for step, seconds in self.timings.items()}
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
            footprints=detection.footprints,
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
        if isinstance(psf.psf, PixelPsf):
            order = _affordable_order(n_psf, psf.psf.order, cfg.psf_stars_per_term)
            if order < psf.psf.order:
                # few stars: a lower degree, whose corners are not an extrapolation of noise
                psf_config = dataclasses.replace(cfg.psf, order=order, model="pixel")
                psf = run.step("psf", PsfModelTask(psf_config).run, state.exposure, state.stars)
        state.exposure, state.psf_stars = psf.exposure, psf.psf_stars
        state.psf_flux_error = psf.flux_error
        state.metadata["psf_model"] = {
            "type": psf.psf.kind,
            "order": _psf_order(psf.psf),
            "n_used": int(psf.stars["calib_psf_used"].sum()),
            "n_reserved": int(psf.stars["calib_psf_reserved"].sum()),
            "reserved_chi2_dof": psf.reserved_chi2_dof,
            "selection": dict(psf.selection_counts),
        }
        psf_only = dataclasses.replace(
            cfg.measurement, measure_moments=False, measure_aperture=False
        )
        measured = run.step("psf_flux", MeasureStarsTask(psf_only).run, psf.exposure, psf.stars)
        if cfg.residual_sky_error:
            rms = run.step("residual_sky", residual_sky_rms, psf.exposure)
            centre = psf.psf.compute_kernel_image(
                (psf.exposure.width - 1) / 2, (psf.exposure.height - 1) / 2
            )
            state.metadata["residual_sky"] = {
                "rms": rms,
                "psf_n_eff": 1.0 / float(np.sum(centre**2)),
            }
        apcorr_config = dataclasses.replace(
            cfg.aperture_correction,
            order=_affordable_order(
                int(psf.stars["calib_psf_used"].sum()),
                cfg.aperture_correction.order,
                cfg.apcorr_stars_per_term,
            ),
        )
        state.exposure, stars = run.step(
            "aperture_correction", self._aperture_correction, psf, measured.stars, apcorr_config
        )
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

    def _aperture_correction(
        self, psf: PsfModelResult, stars: pd.DataFrame, config: ApertureCorrectionConfig
    ) -> tuple[Exposure, pd.DataFrame]:
        """Measured aperture correction, or the Moffat model's when the stars leave it loose.

        Ten PSF stars of S/N 20-100 measure ``ap / psf`` to 1-3% on a 1k x 1k CCD (a residual
        sky of a few counts per pixel sums to hundreds of counts in a 12 px aperture), which
        went straight into the zero point. An analytic model fitted to the same stars
        predicts the ratio (:func:`~.apcorr.model_aperture_correction`) to
        ``apcorr_model_error``; it replaces the measurement when that is less precise.
        """
        cfg = self.config
        exposure = psf.exposure
        try:
            measured = ApertureCorrectionTask(config).run(exposure, stars)
        except TaskError:
            if isinstance(psf.psf, PixelPsf):
                raise
            measured, measured_err = None, math.inf
        else:
            measured_err = measured.summary()["apcorr_center_err"]
        if isinstance(psf.psf, PixelPsf) or measured_err <= cfg.apcorr_max_error:
            assert measured is not None
            return measured.exposure, measured.stars
        model = model_aperture_correction(
            psf.psf,
            exposure.width,
            exposure.height,
            cfg.measurement.aperture_radius,
            cfg.apcorr_model_error,
        )
        corrected = apply_aperture_correction(stars, model, config.propagate_error)
        corrected["calib_apcorr_used"] = False
        info = {
            **model.to_dict(),
            "source": "psf_model",
            "measured": None if measured is None else measured.aperture_correction.to_dict(),
        }
        return dataclasses.replace(
            exposure, metadata={**exposure.metadata, "aperture_correction": info}
        ), corrected

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
        start, cpu_start = time.perf_counter(), time.process_time()
        exposure, calib = state.exposure, state.photo_calib
        stats = compute_summary_stats(
            dataclasses.replace(exposure, photo_calib=calib),
            state.background,
            state.psf_stars,
            state.astrometry_summary,
            calib,
            cfg.summary,
        )
        stars = select_stars(state.stars, cfg.star_min_snr, cfg.stars_unresolved_only)
        if "residual_sky" in state.metadata:
            stars = _add_residual_sky_error(
                stars, state.metadata["residual_sky"], cfg.measurement.aperture_radius
            )
        if cfg.psf_model_error and state.psf_flux_error is not None:
            stars = _add_psf_model_error(
                stars, state.psf_flux_error, state.stars, state.photom_matches, cfg.measurement
            )
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
            stars = calibrate_catalog(
                stars, calib, [c for c in ("psf_instflux", "ap_instflux") if c in stars]
            )
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
        run.add("finish", time.perf_counter() - start, time.process_time() - cpu_start)
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
            cpu_timings=dict(run.cpu_timings),
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
    psf_flux_error: MoffatFluxError | None = None
    failure: dict[str, str] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def _add_residual_sky_error(
    stars: pd.DataFrame, residual_sky: Mapping[str, float], aperture_radius: float
) -> pd.DataFrame:
    """Add the residual sky structure's error to the catalog's PSF and aperture flux errors.

    A sky offset ``b`` under a star moves its PSF flux by ``n_eff b`` (``n_eff = 1 / sum P^2``,
    the PSF's effective area, for the fit's uniform weights; times the aperture and
    aperture-to-total corrections applied since) and its aperture flux by ``A b`` (``A`` the
    aperture's area); ``b`` scatters by :func:`~.background.residual_sky_rms`. Without a sky
    frame the simulator's 2% pattern leaves 5-18 counts per pixel on some CCDs: hundreds of
    counts per PSF flux, more than the photon noise of an S/N 30 star.

    It is added to the published catalog only, after the star selection and the zero point:
    those use the photon noise, as Rubin's do, so that the selection (S/N >= 10) and the
    number of calibrators do not shrink on exactly the CCDs that need them.
    """
    rms = float(residual_sky["rms"])
    if rms <= 0:
        return stars
    out = stars.copy()
    scale = np.ones(len(out))
    if "psf_apcorr" in out:
        scale *= out["psf_apcorr"].to_numpy(np.float64)
    if "psf_aperture_fraction" in out:
        scale /= out["psf_aperture_fraction"].to_numpy(np.float64)
    psf_term = float(residual_sky["psf_n_eff"]) * rms * scale
    out["psf_instflux_err"] = np.hypot(out["psf_instflux_err"].to_numpy(np.float64), psf_term)
    if "ap_instflux_err" in out:
        area = math.pi * aperture_radius**2
        out["ap_instflux_err"] = np.hypot(out["ap_instflux_err"].to_numpy(np.float64), area * rms)
    return out


def _add_psf_model_error(
    stars: pd.DataFrame,
    flux_error: MoffatFluxError,
    measured: pd.DataFrame,
    photom_matches: pd.DataFrame | None,
    measurement: MeasurementConfig,
) -> pd.DataFrame:
    """Add the PSF model's error, less what the zero point absorbs, to ``psf_instflux_err``.

    The zero point is the inverse-variance weighted mean of its stars' ``ref - inst`` mags,
    so it takes up their weighted mean flux gradient ``r`` (same weights); a star's
    calibrated flux keeps ``(g - r)' C (g - r)`` (:meth:`MoffatFluxError.fractional_error`).
    Without a zero point the whole error is added. Like the residual sky's, it is added to
    the published catalog only: the star selection and the zero point use the photon noise.
    """
    size = flux_error.psf.default_size(
        (flux_error.psf.width - 1) / 2, (flux_error.psf.height - 1) / 2
    )
    options = {"size": size, "fit_local_sky": measurement.psf_fit_local_sky}
    reference = None
    if photom_matches is not None and photom_matches["used"].any():
        used = photom_matches[photom_matches["used"]]
        where = measured.set_index("id").loc[used["source_id"].to_numpy(), ["x", "y"]]
        weight = 1.0 / (
            used["inst_mag_err"].to_numpy(np.float64) ** 2
            + used["ref_mag_err"].to_numpy(np.float64) ** 2
        )
        gradient = flux_error.gradient(
            where["x"].to_numpy(np.float64), where["y"].to_numpy(np.float64), **options
        )
        reference = np.average(gradient, axis=0, weights=weight)
    fraction = flux_error.fractional_error(
        stars["x"].to_numpy(np.float64),
        stars["y"].to_numpy(np.float64),
        reference=reference,
        **options,
    )
    out = stars.copy()
    flux = out["psf_instflux"].to_numpy(np.float64)
    out["psf_instflux_err"] = np.hypot(
        out["psf_instflux_err"].to_numpy(np.float64), np.abs(flux) * fraction
    )
    return out


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


def _psf_order(psf: Psf) -> int:
    """Degree of the PSF model's variation over the CCD (of its FWHM for an analytic model)."""
    if isinstance(psf, PixelPsf):
        return psf.order
    coeffs = len(getattr(psf, "fwhm_coeffs", (0.0,)))
    return next(order for order in range(10) if poly2d_n_terms(order) >= coeffs)


class _Run:
    """Times each step and remembers which one is running (named in a failure)."""

    def __init__(self) -> None:
        self.current = ""
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}

    def step(self, name: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.current = name
        start, cpu_start = time.perf_counter(), time.process_time()
        result = func(*args, **kwargs)
        self.add(name, time.perf_counter() - start, time.process_time() - cpu_start)
        return result

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + wall
        self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + cpu


def _mask_fractions(mask: np.ndarray) -> dict[str, float]:
    """Fraction of the pixels with each mask plane set (Rubin's ``<plane>_mask_fraction``)."""
    # One pass over the image for the flagged pixels (a minority), then one per plane over
    # those: 4x faster than a pass per plane on a 4k x 4k CCD.
    flagged = mask[mask != 0]
    return {
        name: float(np.count_nonzero(flagged & MaskPlanes.bits(name)) / mask.size)
        for name in MaskPlanes.to_dict()
    }
