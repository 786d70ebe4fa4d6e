"""Exposure summary statistics (Rubin's ComputeExposureSummaryStatsTask, the core fields).

Computed at the end of calibration, before the pixels are converted to nJy, from the exposure
(image, mask, variance, WCS, PSF, photometric calibration, visit info), its background model,
the PSF stars and the astrometric fit. Every value is a plain float, int, str or list, and a
quantity that cannot be computed (no PSF, no WCS, unknown band...) is ``None``, so the dict is
strict JSON (no NaN).

Effective exposure time (Neilsen et al. 2016, as in Rubin):

    t_eff = (A_fid / A_psf) * (B_fid / (B / t)) * 10^(0.8 (zp - 2.5 log10 t - zp_fid)) * t

with ``A`` the PSF effective area (noise-equivalent area, px^2), ``B`` the sky level (counts/px),
``zp`` the zero point (AB mag of one count) and ``t`` the exposure time (s). The fiducial area is
that of a Gaussian of the fiducial sigma, ``4 pi sigma_fid^2``, so for Gaussian PSFs this is
Rubin's ``(sigma_fid / sigma)^2`` term.

5-sigma point-source depth (SMTN-002 / LSE-40, as Rubin's ``compute_magnitude_limit``): the source
counts ``C`` with ``C / sqrt(C / g + sigma_pix^2 A_psf) = 5`` where ``sigma_pix`` is the measured
per-pixel noise (sky plus read noise, counts) and ``g`` the gain; ``mag_lim = zp - 2.5 log10 C``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from astropy.stats import sigma_clipped_stats
from scipy.stats import norm

from ...core import Exposure, MaskPlanes, PhotoCalib
from ...errors import ConfigError
from ..base import Task, TaskConfig
from .astrometry.tan_sip import tangent_plane_wcs

# Fiducial values of LSSTCam from Rubin's obs_lsst configuration, derived from SMTN-002
# (v2024-03-06, syseng_throughput v1.9): PSF sigma in pixels, zero point of a 1 s exposure
# (AB mag of 1 count/s) and sky background in counts/s/px.
LSSTCAM_FIDUCIAL_PSF_SIGMA = {"u": 1.72, "g": 1.63, "r": 1.56, "i": 1.51, "z": 1.47, "y": 1.44}
LSSTCAM_FIDUCIAL_ZERO_POINT = {
    "u": 25.96,
    "g": 27.95,
    "r": 27.80,
    "i": 27.61,
    "z": 27.22,
    "y": 26.26,
}
LSSTCAM_FIDUCIAL_SKY_BACKGROUND = {
    "u": 0.90,
    "g": 9.20,
    "r": 19.62,
    "i": 31.51,
    "z": 47.26,
    "y": 53.91,
}


@dataclasses.dataclass
class SummaryStatsConfig(TaskConfig):
    """Configuration of :func:`compute_summary_stats` (Rubin defaults where they exist).

    Attributes
    ----------
    sigma_clip : float
        Clipping threshold of the pixel statistics, sigma (Rubin 3.0).
    clip_iterations : int
        Clipping iterations (Rubin 2).
    bad_mask_planes : tuple of str
        Pixels excluded from the pixel statistics (Rubin NO_DATA, SUSPECT; BAD and SAT added
        because they carry no sky information either).
    max_pixels : int
        The pixel statistics use a regular subsample of at most this many pixels: the noise of
        a million pixels is known to 0.1%, and a 16 Mpx CCD costs 16x more.
    snr_limit : float
        Signal-to-noise of the limiting magnitude (Rubin 5).
    gain : float
        Electrons per count, for the source shot noise of the limiting magnitude.
    psf_star_column : str
        Boolean column of ``psf_stars`` marking stars used in the PSF model (Rubin
        ``calib_psf_used``); without it every row counts.
    fiducial_psf_sigma, fiducial_zero_point, fiducial_sky_background : dict of str to float
        Per-band references of the effective exposure time: PSF sigma (px), zero point of a
        1 s exposure (mag), sky (counts/s/px). Defaults: LSSTCam's (see module constants).
    max_effective_transparency : float
        Upper bound on the zero-point factor of t_eff (Rubin: inf).
    """

    sigma_clip: float = 3.0
    clip_iterations: int = 2
    bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "SUSPECT")
    max_pixels: int = 1_000_000
    snr_limit: float = 5.0
    gain: float = 1.0
    psf_star_column: str = "calib_psf_used"
    fiducial_psf_sigma: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(LSSTCAM_FIDUCIAL_PSF_SIGMA)
    )
    fiducial_zero_point: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(LSSTCAM_FIDUCIAL_ZERO_POINT)
    )
    fiducial_sky_background: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(LSSTCAM_FIDUCIAL_SKY_BACKGROUND)
    )
    max_effective_transparency: float = math.inf

    def updated(self, **overrides: Any) -> SummaryStatsConfig:
        """Copy with fields replaced; the per-band dicts take ``field.band`` keys.

        ``--config calibrate.summary.fiducial_zero_point.r=26.6`` sets one band (a string value
        is converted to float); ``fiducial_zero_point={"r": 26.6}`` (a mapping, or its JSON
        text from the command line) sets the bands it names and keeps the others.

        Raises
        ------
        ConfigError
            On an unknown field, a dotted key of a field that is not a dict, or a value that
            does not convert.
        """
        plain: dict[str, Any] = {}
        dicts: dict[str, dict[str, float]] = {}
        for key, value in overrides.items():
            head, dot, band = key.partition(".")
            current = getattr(self, head, None)
            if not isinstance(current, dict):
                if dot:
                    raise ConfigError(f"SummaryStatsConfig.{head} is not a per-band dict")
                plain[key] = value
                continue
            entries = dicts.setdefault(head, dict(current))
            if dot:
                entries[band] = _band_value(key, value)
            else:
                if isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except json.JSONDecodeError:
                        raise ConfigError(
                            f"SummaryStatsConfig.{key}: {value!r} is not a JSON object"
                        ) from None
                if not isinstance(value, Mapping):
                    raise ConfigError(f"SummaryStatsConfig.{key} needs a mapping of band -> value")
                entries.update({str(b): _band_value(f"{key}.{b}", v) for b, v in value.items()})
        new = super().updated(**plain)
        return dataclasses.replace(new, **dicts) if dicts else new

    def validate(self) -> None:
        """Reject values the statistics cannot use."""
        if not (self.sigma_clip > 0 and self.snr_limit > 0 and self.gain > 0):
            raise ConfigError("SummaryStatsConfig: sigma_clip, snr_limit and gain must be > 0")
        if self.max_pixels < 1:
            raise ConfigError("SummaryStatsConfig.max_pixels must be >= 1")
        MaskPlanes.bits(*self.bad_mask_planes)  # raises on an unknown plane name


def _band_value(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"SummaryStatsConfig.{key}: cannot convert {value!r} to float") from None


@dataclasses.dataclass
class SummaryStatsResult:
    """Output of :meth:`SummaryStatsTask.run`: ``stats``, the dict of :func:`compute_summary_stats`."""

    stats: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The statistics themselves (already small and JSON-serialisable)."""
        return dict(self.stats)


class SummaryStatsTask(Task):
    """Task wrapper of :func:`compute_summary_stats`."""

    ConfigClass = SummaryStatsConfig
    config: SummaryStatsConfig

    def run(
        self,
        exposure: Exposure,
        background: Any = None,
        psf_stars: pd.DataFrame | None = None,
        astrometry: Mapping[str, Any] | None = None,
        photo_calib: PhotoCalib | None = None,
    ) -> SummaryStatsResult:
        """Compute the summary statistics; see :func:`compute_summary_stats`."""
        return SummaryStatsResult(
            compute_summary_stats(
                exposure, background, psf_stars, astrometry, photo_calib, self.config
            )
        )


def compute_summary_stats(
    exposure: Exposure,
    background: Any = None,
    psf_stars: pd.DataFrame | None = None,
    astrometry: Mapping[str, Any] | None = None,
    photo_calib: PhotoCalib | None = None,
    config: SummaryStatsConfig | None = None,
) -> dict[str, Any]:
    """Summary statistics of a calibrated exposure.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure in counts, with (when available) ``wcs``, ``psf``,
        ``photo_calib`` and ``visit_info``.
    background : BackgroundModel, numpy.ndarray or float, optional
        The subtracted sky in counts/px: a model with binned ``values`` (Rubin: median of the
        binned background), a background image, or a level.
    psf_stars : pandas.DataFrame, optional
        PSF stars; ``n_psf_star`` counts the rows with ``config.psf_star_column`` set.
    astrometry : mapping, optional
        :meth:`AstrometryResult.summary` (keys ``astrom_offset_mean``, ``astrom_offset_std``,
        ``astrometry_matches_count``).
    photo_calib : PhotoCalib, optional
        Calibration of the counts; default ``exposure.photo_calib``.
    config : SummaryStatsConfig, optional
        Defaults when omitted.

    Returns
    -------
    dict
        ``exp_time`` (s), ``band``, ``airmass``; ``psf_sigma``, ``psf_fwhm`` (px), ``psf_area``
        (px^2), ``n_psf_star``; ``ra``, ``dec`` (centre, deg), ``ra_corners``,
        ``dec_corners`` (outer pixel-edge corners (min x, min y), (max x, min y),
        (max x, max y), (min x, max y), deg), ``pixel_scale`` (arcsec/px at the centre);
        ``zero_point``, ``zero_point_err`` (AB mag of one count); ``sky_bg`` (counts/px),
        ``sky_noise`` (counts, clipped pixel std corrected for the clipping), ``mean_var`` (counts^2, clipped mean
        variance); ``astrom_offset_mean``, ``astrom_offset_std`` (arcsec),
        ``n_astrom_matches``; ``eff_time`` (s) and its ``eff_time_psf_sigma_scale``,
        ``eff_time_sky_bg_scale``, ``eff_time_zero_point_scale`` factors; ``mag_lim`` (AB).
        Values that cannot be computed are ``None``.
    """
    cfg = config if config is not None else SummaryStatsConfig()
    visit = exposure.visit_info
    stats: dict[str, Any] = {
        "exp_time": visit.exposure_time if visit else math.nan,
        "band": visit.band if visit and visit.band else None,
        "airmass": visit.airmass if visit else math.nan,
    }
    stats.update(_psf_stats(exposure, psf_stars, cfg))
    stats.update(_wcs_stats(exposure))
    calib = photo_calib if photo_calib is not None else exposure.photo_calib
    stats["zero_point"] = calib.zero_point if calib is not None else math.nan
    stats["zero_point_err"] = calib.zero_point_err if calib is not None else math.nan
    stats["sky_bg"] = _sky_level(background)
    stats.update(_pixel_stats(exposure, cfg))
    astrometry = astrometry or {}
    stats["astrom_offset_mean"] = astrometry.get("astrom_offset_mean", math.nan)
    stats["astrom_offset_std"] = astrometry.get("astrom_offset_std", math.nan)
    stats["n_astrom_matches"] = astrometry.get("astrometry_matches_count", 0)
    stats.update(_effective_time(stats, cfg))
    stats["mag_lim"] = _magnitude_limit(stats, cfg)
    return {key: _json_value(value) for key, value in stats.items()}


def _psf_stats(
    exposure: Exposure, psf_stars: pd.DataFrame | None, cfg: SummaryStatsConfig
) -> dict[str, Any]:
    if psf_stars is None:
        n_psf = 0
    elif cfg.psf_star_column in psf_stars.columns:
        n_psf = int(psf_stars[cfg.psf_star_column].to_numpy(dtype=bool).sum())
    else:
        n_psf = len(psf_stars)
    if exposure.psf is None:
        return {
            "psf_sigma": math.nan,
            "psf_fwhm": math.nan,
            "psf_area": math.nan,
            "n_psf_star": n_psf,
        }
    x, y = (exposure.width - 1) / 2.0, (exposure.height - 1) / 2.0
    kernel = exposure.psf.compute_kernel_image(x, y)
    # Effective (noise-equivalent) area of a normalised PSF: (sum p)^2 / sum p^2 (meas_base).
    area = float(kernel.sum() ** 2 / np.sum(kernel**2))
    return {
        "psf_sigma": exposure.psf.sigma_at(x, y),
        "psf_fwhm": exposure.psf.fwhm_at(x, y),
        "psf_area": area,
        "n_psf_star": n_psf,
    }


def _wcs_stats(exposure: Exposure) -> dict[str, Any]:
    wcs = exposure.wcs
    if wcs is None:
        nan4 = [math.nan] * 4
        return {
            "ra": math.nan,
            "dec": math.nan,
            "ra_corners": nan4,
            "dec_corners": nan4,
            "pixel_scale": math.nan,
        }
    width, height = exposure.width, exposure.height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    corner_x = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    corner_y = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    ra_corners, dec_corners = wcs.all_pix2world(corner_x, corner_y, 0)
    ra, dec = wcs.all_pix2world([cx], [cy], 0)
    # Area of the pixel at the centre, from its corners projected on the tangent plane (arcsec).
    px = cx + np.array([-0.5, 0.5, 0.5, -0.5])
    py = cy + np.array([-0.5, -0.5, 0.5, 0.5])
    plane = tangent_plane_wcs(float(ra[0]), float(dec[0]), unit_deg=1.0 / 3600.0)
    u, v = plane.wcs_world2pix(*wcs.all_pix2world(px, py, 0), 0)
    area = 0.5 * abs(np.dot(u, np.roll(v, -1)) - np.dot(v, np.roll(u, -1)))
    return {
        "ra": float(ra[0]),
        "dec": float(dec[0]),
        "ra_corners": [float(r) for r in ra_corners],
        "dec_corners": [float(d) for d in dec_corners],
        "pixel_scale": float(np.sqrt(area)),
    }


def _sky_level(background: Any) -> float:
    if background is None:
        return math.nan
    values = np.asarray(getattr(background, "values", background), dtype=float)
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


def _pixel_stats(exposure: Exposure, cfg: SummaryStatsConfig) -> dict[str, float]:
    stride = max(1, int(math.ceil(math.sqrt(exposure.image.size / cfg.max_pixels))))
    image = exposure.image[::stride, ::stride]
    variance = exposure.variance[::stride, ::stride]
    good = (exposure.mask[::stride, ::stride] & MaskPlanes.bits(*cfg.bad_mask_planes)) == 0
    pixels = image[good & np.isfinite(image)]
    variances = variance[good & np.isfinite(variance)]
    clip = {"sigma": cfg.sigma_clip, "maxiters": cfg.clip_iterations}
    sky_noise = sigma_clipped_stats(pixels, **clip)[2] if pixels.size else math.nan
    # Clipping a Gaussian at +-k sigma narrows it (1.3% at k = 3): undo that so that the noise,
    # and the depth computed from it, are unbiased. (Rubin's STDEVCLIP leaves the bias in.)
    k = cfg.sigma_clip
    inside = 2.0 * norm.cdf(k) - 1.0
    sky_noise /= math.sqrt(1.0 - 2.0 * k * norm.pdf(k) / inside)
    mean_var = sigma_clipped_stats(variances, **clip)[0] if variances.size else math.nan
    return {"sky_noise": float(sky_noise), "mean_var": float(mean_var)}


def _effective_time(stats: Mapping[str, Any], cfg: SummaryStatsConfig) -> dict[str, float]:
    band, exp_time = stats["band"], stats["exp_time"]
    nan = math.nan
    psf_scale = sky_scale = zp_scale = nan
    if band in cfg.fiducial_psf_sigma:
        psf_scale = 4.0 * math.pi * cfg.fiducial_psf_sigma[band] ** 2 / stats["psf_area"]
    # A zero or negative sky (an over-subtracted background) has no meaningful t_eff.
    if band in cfg.fiducial_sky_background and exp_time > 0 and stats["sky_bg"] > 0:
        sky_scale = cfg.fiducial_sky_background[band] / (stats["sky_bg"] / exp_time)
    if band in cfg.fiducial_zero_point and exp_time > 0:
        zero_point_per_second = stats["zero_point"] - 2.5 * math.log10(exp_time)
        zp_scale = min(
            10 ** (0.8 * (zero_point_per_second - cfg.fiducial_zero_point[band])),
            cfg.max_effective_transparency,
        )
    return {
        "eff_time": psf_scale * sky_scale * zp_scale * exp_time,
        "eff_time_psf_sigma_scale": psf_scale,
        "eff_time_sky_bg_scale": sky_scale,
        "eff_time_zero_point_scale": zp_scale,
    }


def _magnitude_limit(stats: Mapping[str, Any], cfg: SummaryStatsConfig) -> float:
    area, noise, zero_point = stats["psf_area"], stats["sky_noise"], stats["zero_point"]
    if not all(np.isfinite([area, noise, zero_point])):
        return math.nan
    snr_sq = cfg.snr_limit**2
    # C^2 = snr^2 (C / g + noise^2 A), solved for the positive root.
    counts = 0.5 * (
        snr_sq / cfg.gain + math.sqrt(snr_sq**2 / cfg.gain**2 + 4 * snr_sq * noise**2 * area)
    )
    return zero_point - 2.5 * math.log10(counts)


def _json_value(value: Any) -> Any:
    """Plain Python value with NaN/inf as None (strict JSON)."""
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
