"""ForcedPhotTask: forced photometry of a deep-coadd patch at reference positions.

Per (tract, patch, band): the ``coadd_ref`` sources (one catalog for every band) are placed on the
``deep_coadd`` through its WCS and measured at those fixed positions -- Rubin's
``ForcedPhotCoaddTask`` with its default plugins (PixelFlags, TransformedCentroid/Shape,
CircularApertureFlux, PsfFlux, LocalBackground, InputCount, Variance) plus a measured centroid,
and with one improvement: blended sources get a joint PSF fit (:mod:`.blends`) instead of
noise replacement.

Output ``forced_src``: one row per reference source, in the reference order, keyed by ``id``.
Fluxes are in nJy through the coadd's ``photo_calib`` (a coadd without one is taken to be in nJy
already); pixel quantities are in the coadd's 0-based pixel frame. Column names follow Rubin's
DP1 ``Source``/``ForcedSource`` tables (``psfFlux``, ``ap03Flux``, ``pixelFlags_edge`` ...):

============================================  ================================================
``id``, ``coord_ra``, ``coord_dec``           reference id and position (deg)
``band``; ``tract``, ``patch`` (if in data id) data id of the measurement
``x``, ``y``; ``coord_flag``                  reference position in pixels; bad ra/dec
``shape_xx/yy/xy``, ``shape_flag``            reference moments in pixel^2 (if given)
``psfFlux``, ``psfFluxErr`` (nJy)             PSF flux; ``_flag``, ``_flag_edge``,
                                              ``_flag_noGoodPixels``, ``_flag_blendTooLarge``,
                                              ``_flag_blendSingular``, ``_nBlend``, ``_area``
                                              (pixels), ``_npixels``, ``_chi2``;
                                              ``_background`` (nJy/pixel) if fitted
``invalidPsfFlag``                            the coadd has no PSF model
``apNNFlux``, ``apNNFluxErr`` (nJy)           exact circular apertures, radius NN pixels
                                              (``ap04p5`` = 4.5); ``_flag``,
                                              ``_flag_apertureTruncated``
``localBackground_instFlux``/``Err``          clipped mean and scatter per pixel (nJy), and
                                              ``_nPixels``, ``_flag``, ``_flag_noGoodPixels``,
                                              ``_flag_noPsf``
``centroid_x/y``, ``centroid_xErr/yErr``      measured centroid (pixels), ``centroid_flag``
``pixelFlags_offimage``, ``pixelFlags_<p>``   mask plane ``p`` in the footprint, and
``pixelFlags_<p>Center``                      in the central 3x3 pixels
``inputCount``, ``_flag``, ``_flag_noInputs`` coadd inputs at the centre
``variance_value`` (nJy^2), ``_flag``,        median variance near the source
``_flag_emptyFootprint``
============================================  ================================================

Aperture fluxes are sums over the available pixels: an aperture that runs off the image or onto
missing pixels keeps its (partial) sum and is flagged. Input count: ``run(input_count=...)``
takes a per-pixel map; else ``metadata["input_count"]`` (an integer for the whole patch, or a
2-D list); else ``inputCount`` is 0 and flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...core import Exposure, MaskPlanes, PhotoCalib
from ...core.psf import GAUSSIAN_FWHM_PER_SIGMA
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task, TaskConfig
from .apertures import DEFAULT_RADII, circular_aperture_sums
from .background import local_background
from .blends import blend_groups, psf_fluxes
from .catalog import (
    aperture_column,
    aperture_columns,
    assemble,
    background_columns,
    empty_psf_columns,
    psf_columns,
    scatter,
    stamp_columns,
)
from .flags import input_count_at
from .measure import StampSettings, measure_stamps
from .reference import ReferencePositions, transform_reference
from .stamps import fwhm_at


@dataclass
class ForcedPhotConfig(TaskConfig):
    """Configuration of :class:`ForcedPhotTask` (defaults are Rubin's unless marked apflow).

    Attributes
    ----------
    aperture_radii : tuple of float
        Circular-aperture radii in pixels. Default: Rubin's ten, 3 to 70.
    aperture_backend : {"auto", "numba", "numpy"}
        Implementation of the exact apertures; same results, ``numba`` (the ``auto`` choice when
        installed) is 2-3x faster. Default "auto".
    aperture_tile_size : int
        Pixels per side of the tiles whose prefix sums are built at once. Default 1024.
    psf_fit_radius_fwhm : float
        Half-width of the PSF-fit stamp in PSF FWHM (Rubin: the whole PSF image). The template is
        not renormalised to the stamp, so this only drops pixels that hold < 1% of sum(P^2).
        Default 2.0 (apflow).
    psf_bad_mask_planes : tuple of str
        Pixels left out of the PSF fit (Rubin: none; dropping saturated cores helps).
        Default ("BAD", "SAT", "NO_DATA") (apflow).
    psf_cell_size : int
        Spacing (pixels) of the kernels of a position-dependent, non-Gaussian PSF, interpolated
        bilinearly in between. Default 256 (apflow).
    blend_link_fwhm : float
        Sources closer than this many FWHM (directly or in a chain) are fitted jointly.
        Default 3.0 (apflow).
    blend_max_members : int
        Larger groups fall back to single-source fits, flagged ``psfFlux_flag_blendTooLarge``.
        Default 10 (apflow).
    blend_max_condition : float
        Groups whose unit-diagonal normal matrix is worse conditioned fall back too, flagged
        ``psfFlux_flag_blendSingular``. Default 1e4 (apflow).
    fit_background : bool
        Fit a flat background with the PSF fluxes (costs S/N on background-subtracted coadds).
        Default False.
    centroid_iterations : int
        Re-centred Gaussian-weighted moment steps of the measured centroid. Default 3 (apflow).
    centroid_max_shift : float
        Pixels: a measured centroid farther from the reference is a failure. Default 2.0.
    local_background_inner, local_background_outer : float
        Annulus radii of the local background in PSF sigma. Default 7.0 and 15.0.
    local_background_clip : float
        Clipping threshold in standard deviations. Default 3.0.
    local_background_iterations : int
        Clipping passes. Default 3.
    local_background_bad_mask_planes : tuple of str
        Planes excluded from the local background. Default ("BAD", "SAT", "NO_DATA").
    footprint_radius_sigma : float
        Radius (PSF sigma) of the footprint of the 'anywhere' pixel flags. Default 3.0.
    variance_radius_sigma : float
        Radius (PSF sigma) of the region whose median variance is ``variance_value``.
        Default 5.0.
    variance_exclude_mask_planes : tuple of str
        Planes excluded from ``variance_value``.
        Default ("DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT").
    chunk_size : int
        Sources per block of stamps (memory against vectorisation). Default 2048 (apflow).
    """

    aperture_radii: tuple[float, ...] = DEFAULT_RADII
    aperture_backend: str = "auto"
    aperture_tile_size: int = 1024
    psf_fit_radius_fwhm: float = 2.0
    psf_bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")
    psf_cell_size: int = 256
    blend_link_fwhm: float = 3.0
    blend_max_members: int = 10
    blend_max_condition: float = 1e4
    fit_background: bool = False
    centroid_iterations: int = 3
    centroid_max_shift: float = 2.0
    local_background_inner: float = 7.0
    local_background_outer: float = 15.0
    local_background_clip: float = 3.0
    local_background_iterations: int = 3
    local_background_bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")
    footprint_radius_sigma: float = 3.0
    variance_radius_sigma: float = 5.0
    variance_exclude_mask_planes: tuple[str, ...] = ("DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT")
    chunk_size: int = 2048

    def validate(self) -> None:
        radii = np.asarray(self.aperture_radii, dtype=float)
        if radii.size == 0 or not np.all(np.isfinite(radii) & (radii > 0)):
            raise ConfigError(f"aperture_radii must be positive pixels, got {self.aperture_radii}")
        if len({aperture_column(r) for r in radii}) != radii.size:
            raise ConfigError(f"aperture_radii must be distinct, got {self.aperture_radii}")
        if self.aperture_backend not in ("auto", "numba", "numpy"):
            raise ConfigError(
                f"aperture_backend must be auto, numba or numpy: {self.aperture_backend!r}"
            )
        positive = {
            "aperture_tile_size": self.aperture_tile_size,
            "psf_fit_radius_fwhm": self.psf_fit_radius_fwhm,
            "psf_cell_size": self.psf_cell_size,
            "blend_link_fwhm": self.blend_link_fwhm,
            "blend_max_members": self.blend_max_members,
            "blend_max_condition": self.blend_max_condition,
            "centroid_iterations": self.centroid_iterations,
            "centroid_max_shift": self.centroid_max_shift,
            "local_background_clip": self.local_background_clip,
            "local_background_iterations": self.local_background_iterations,
            "footprint_radius_sigma": self.footprint_radius_sigma,
            "variance_radius_sigma": self.variance_radius_sigma,
            "chunk_size": self.chunk_size,
        }
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"ForcedPhotConfig.{name} must be positive, got {value!r}")
        if not 0 <= self.local_background_inner < self.local_background_outer:
            raise ConfigError(
                "local_background_inner must be >= 0 and < local_background_outer, got "
                f"{self.local_background_inner} and {self.local_background_outer}"
            )
        for name in (
            "psf_bad_mask_planes",
            "local_background_bad_mask_planes",
            "variance_exclude_mask_planes",
        ):
            try:
                MaskPlanes.bits(*getattr(self, name))
            except KeyError as exc:
                raise ConfigError(f"ForcedPhotConfig.{name}: {exc.args[0]}") from None


@dataclass
class ForcedPhotResult:
    """Output of :meth:`ForcedPhotTask.run`.

    Attributes
    ----------
    forced_src : pandas.DataFrame
        One row per reference source (columns in the module docstring).
    """

    forced_src: pd.DataFrame

    def summary(self) -> dict[str, int]:
        """Small numbers for the engine's report: sources, measured, off image, blended."""
        df = self.forced_src
        if df.empty:
            return {"n_sources": 0, "n_on_image": 0, "n_blended": 0, "n_psf_flux_ok": 0}
        return {
            "n_sources": len(df),
            "n_on_image": int((~df["pixelFlags_offimage"]).sum()),
            "n_blended": int((df["psfFlux_nBlend"] > 1).sum()),
            "n_psf_flux_ok": int((~df["psfFlux_flag"]).sum()),
        }


class ForcedPhotTask(Task):
    """Forced photometry of a deep-coadd patch at the positions of a reference catalog."""

    ConfigClass = ForcedPhotConfig
    config: ForcedPhotConfig

    def run(
        self,
        deep_coadd: Exposure,
        coadd_ref: pd.DataFrame,
        data_id: Mapping[str, Any] | None = None,
        input_count: np.ndarray | None = None,
    ) -> ForcedPhotResult:
        """Measure every ``coadd_ref`` source on ``deep_coadd``.

        Parameters
        ----------
        deep_coadd : Exposure
            Coadd patch with image, mask, variance, WCS, and (for PSF fluxes) a PSF model.
        coadd_ref : pandas.DataFrame
            Reference catalog: ``id``, ``ra``, ``dec`` (+ optional ``shape_xx/yy/xy``, arcsec^2).
        data_id : mapping, optional
            The quantum's data id (``tract``, ``patch``, ``band``), copied into the output.
        input_count : numpy.ndarray, optional
            ``(height, width)`` number of coadd inputs per pixel.

        Returns
        -------
        ForcedPhotResult

        Raises
        ------
        TaskError
            On an unusable reference catalog or coadd (the message names the problem and the
            data id). Bad rows (NaN positions) are flagged, not raised.
        """
        where = f"forced_phot [{format_data_id(data_id)}]"
        if not isinstance(deep_coadd, Exposure):
            raise TaskError(
                f"{where}: deep_coadd must be an Exposure, got {type(deep_coadd).__name__}"
            )
        try:
            ref = transform_reference(coadd_ref, deep_coadd.wcs)
            counts_map = _input_count_map(deep_coadd, input_count)
            columns = self._measure(deep_coadd, ref, counts_map)
        except TaskError as exc:
            raise TaskError(f"{where}: {exc}") from None
        return ForcedPhotResult(
            assemble(columns, ref, _band_of(deep_coadd, data_id), data_id, self.config)
        )

    def _measure(
        self, exposure: Exposure, ref: ReferencePositions, counts_map: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        cfg = self.config
        n = ref.ids.size
        height, width = exposure.shape
        x, y = ref.x, ref.y
        on_image = (
            np.isfinite(x) & np.isfinite(y)
            & (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
        )  # fmt: skip
        cal = exposure.photo_calib or PhotoCalib(1.0)
        out: dict[str, np.ndarray] = {"on_image": on_image}

        nodata = exposure.mask_of("NO_DATA")
        apertures = circular_aperture_sums(
            exposure.image,
            exposure.variance,
            x,
            y,
            cfg.aperture_radii,
            missing=nodata,
            backend=cfg.aperture_backend,
            tile_size=cfg.aperture_tile_size,
        )
        out.update(aperture_columns(apertures, cfg.aperture_radii, cal))

        idx = np.flatnonzero(on_image)
        xi = np.rint(x[idx]).astype(np.int64)
        yi = np.rint(y[idx]).astype(np.int64)
        count, count_flag, no_inputs = input_count_at(counts_map, xi, yi)
        out["inputCount"] = scatter(n, idx, count, 0, np.int32)
        out["inputCount_flag"] = scatter(n, idx, count_flag, True, bool)
        out["inputCount_flag_noInputs"] = scatter(n, idx, no_inputs, False, bool)

        psf = exposure.psf
        out["invalidPsfFlag"] = np.full(n, psf is None)
        if psf is None or idx.size == 0:
            out.update(empty_psf_columns(n))
            return out
        fwhm = fwhm_at(psf, x[idx], y[idx])
        if not np.all(np.isfinite(fwhm) & (fwhm > 0)):
            raise TaskError("the coadd PSF model has a non-positive FWHM at a reference position")
        sigma = fwhm / GAUSSIAN_FWHM_PER_SIGMA
        fwhm_max, sigma_max = float(fwhm.max()), float(sigma.max())
        half = max(
            2,
            math.ceil(cfg.psf_fit_radius_fwhm * fwhm_max),
            math.ceil(cfg.footprint_radius_sigma * sigma_max),
            math.ceil(cfg.variance_radius_sigma * sigma_max),
        )
        labels, sizes = blend_groups(x[idx], y[idx], cfg.blend_link_fwhm * fwhm_max)
        joint = (sizes >= 2) & (sizes <= cfg.blend_max_members)
        settings = StampSettings(
            half=half,
            psf_bad_bits=MaskPlanes.bits(*cfg.psf_bad_mask_planes),
            variance_exclude_bits=MaskPlanes.bits(*cfg.variance_exclude_mask_planes),
            footprint_radius_sigma=cfg.footprint_radius_sigma,
            variance_radius_sigma=cfg.variance_radius_sigma,
            centroid_iterations=cfg.centroid_iterations,
            centroid_max_shift=cfg.centroid_max_shift,
            psf_cell_size=cfg.psf_cell_size,
            chunk_size=cfg.chunk_size,
        )
        stamps = measure_stamps(exposure, x[idx], y[idx], sigma, joint, labels, settings)
        fit = psf_fluxes(
            stamps.sums,
            stamps.group_stamps,
            joint,
            sizes,
            cfg.blend_max_members,
            cfg.fit_background,
            cfg.blend_max_condition,
        )
        out.update(psf_columns(n, idx, fit, stamps, cal, cfg.fit_background))
        out.update(stamp_columns(n, idx, x[idx], y[idx], stamps, cal))

        excluded = exposure.mask_of(*cfg.local_background_bad_mask_planes)
        excluded |= ~np.isfinite(exposure.image)
        background = local_background(
            exposure.image,
            excluded,
            x[idx],
            y[idx],
            cfg.local_background_inner * sigma,
            cfg.local_background_outer * sigma,
            cfg.local_background_clip,
            cfg.local_background_iterations,
        )
        out.update(background_columns(n, idx, background, cal))
        return out


def _input_count_map(exposure: Exposure, input_count: Any) -> np.ndarray | None:
    """The per-pixel input-count map from the argument or the coadd metadata, or None."""
    source = "input_count argument"
    if input_count is None:
        input_count = exposure.metadata.get("input_count")
        source = 'metadata["input_count"]'
    if input_count is None:
        return None
    if np.isscalar(input_count):
        if not float(input_count).is_integer() or int(input_count) < 0:
            raise TaskError(f"{source} must be a non-negative integer, got {input_count!r}")
        return np.broadcast_to(np.int32(input_count), exposure.shape)
    arr = np.asarray(input_count)
    if arr.shape != exposure.shape or not np.issubdtype(arr.dtype, np.number):
        raise TaskError(
            f"{source} must be a number or an {exposure.shape} numeric map, got shape {arr.shape}"
        )
    return arr


def _band_of(exposure: Exposure, data_id: Mapping[str, Any] | None) -> str:
    if data_id and "band" in data_id:
        return str(data_id["band"])
    if "band" in exposure.metadata:
        return str(exposure.metadata["band"])
    if exposure.visit_info is not None:
        return exposure.visit_info.band
    return ""
