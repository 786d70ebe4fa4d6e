"""SubtractImagesTask: PSF-matched difference image of a calexp against a template.

Per (visit, detector) -- Rubin's ``AlardLuptonSubtractTask`` fed by ``GetTemplateTask``:

1. **Warp** the template patches onto the calexp's pixel grid, with a margin of the kernel
   half-width (:mod:`.warp`: flux-conserving Lanczos-5, variance, mask, NO_DATA, PSF).
2. **Choose the direction.** Normally the template has the better seeing and is convolved to
   the science PSF: ``diff = science - (K * template + b)`` with the science PSF. When the
   science is sharper (``convolve="auto"`` compares the FWHMs at the detector centre), the
   science is convolved instead: ``diff = (K * science + b) - template``, whose PSF is the
   (warped) template's. Transients stay positive either way.
3. **Fit the kernel** (:mod:`.candidates`, :mod:`.basis`, :mod:`.kernel_fit`): Alard-Lupton
   basis sized by the matching sigma ``sqrt(sigma_ref^2 - sigma_conv^2)``, spatially varying
   coefficients (of a degree the number of usable stamps supports) with a constant kernel sum,
   least squares on candidate stamps with rejection of bad stamps (a fraction of the fainter
   candidates may be held back to judge the fit; none by default). Too few stamps for any
   spatial variation: a constant kernel is fitted and ``diffim_kernel_fallback`` is recorded;
   fewer than ``min_stamps``: TaskError.
4. **Convolve and subtract** (:mod:`.convolve`). Variance ``var_sci + K^2 * var_tmpl`` (or
   ``K^2 * var_sci + var_tmpl``), where the warped template enters through its
   uncorrelated-equivalent variance when it is the convolved image (:mod:`.warp`, step 4).
   Mask: OR of the science mask and the convolved image's mask grown by the kernel footprint
   (DETECTED and DETECTED_NEGATIVE are cleared: they describe the inputs, not the difference);
   SAT is grown by the kernel half-width on both images' pixels, so a saturated star's
   residual lies on SAT pixels and DetectAndMeasure drops the sources centred there.
   Pixels without template are NO_DATA, pixels whose kernel footprint reaches missing data are
   EDGE; both are NaN in image and variance.
5. **Metrics** (:mod:`.metrics`) in ``diff_image.metadata`` (keys ``diffim_*``).

Outputs: ``diff_image`` (nJy, ``photo_calib`` 1 nJy per unit with the calexp's error) and
``template_warped`` (the warped, *unconvolved* template in nJy with its PSF, for cutouts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core import Exposure, MaskPlanes, PhotoCalib, Psf
from ...core.psf import GAUSSIAN_FWHM_PER_SIGMA
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task, TaskConfig
from .background import BackgroundSettings, difference_background
from .basis import alard_lupton_basis, matching_sigmas
from .candidates import CandidateSettings, select_candidates
from .convolve import convolve_with_solution, grow_mask
from .kernel_fit import (
    FitSettings,
    KernelFit,
    KernelSolution,
    TooFewStampsError,
    fit_kernel,
    kernel_stamps,
)
from .metrics import kernel_sum_statistics, sky_statistics, star_residuals
from .psf_transform import warped_psf
from .warp import warp_planes

_DETECTION_BITS = MaskPlanes.bits("DETECTED", "DETECTED_NEGATIVE")
_SATURATED_BITS = MaskPlanes.bits("SAT")


@dataclass
class SubtractImagesConfig(TaskConfig):
    """Configuration of :class:`SubtractImagesTask` (Rubin ``ip_diffim`` defaults unless marked).

    Attributes
    ----------
    convolve : {"auto", "template", "science"}
        Which image is convolved; ``auto`` convolves the one with the smaller PSF FWHM at the
        detector centre (apflow; Rubin's ``mode="auto"``). Default "auto".
    kernel_sigma_factors : tuple of float
        Basis Gaussian sigmas in units of the matching sigma. Rubin uses 0.5, 1, 2 (via
        ``alardGaussBeta=2``); apflow's wider set matches Moffat wings better (on the test
        scenes the kernel sum moves from 0.995 to 0.999 of the truth and the stars' residual
        aperture flux from 0.5% to 0.03%). Default (0.7, 1.5, 3.0).
    kernel_degrees : tuple of int
        Polynomial degree of each Gaussian (Rubin ``alardDegGauss``). Default (4, 2, 2).
    kernel_min_sigma : float
        Smallest basis sigma, pixels (Rubin ``alardMinSig``). Default 0.7.
    kernel_size_fwhm : float
        Kernel side in units of the larger PSF FWHM (Rubin ``kernelSizeFwhmScaling``).
        Default 6.0.
    kernel_size_min, kernel_size_max : int
        Bounds of the kernel side, pixels (Rubin ``kernelSizeMin/Max``). Default 21, 35.
    spatial_kernel_order : int
        Degree of the kernel's spatial polynomials (Rubin ``spatialKernelOrder``). Default 2.
    fit_background : bool
        Fit a differential background with the kernel (Rubin ``fitForBackground``; both inputs
        are background-subtracted). Biased here: the stamps sit on bright stars, where a
        constant is nearly degenerate with the widest basis functions, so the fit turns any
        mismatch of the PSF wings into a pedestal that it extrapolates over the CCD (on the
        simulator the empty-sky mean of ``diff / sigma`` moved from <= 0.004 to 0.01-0.02,
        i.e. ~0.15 sigma on every PSF flux). ``subtract_background`` measures the background
        where it is sky instead. Default False.
    spatial_background_order : int
        Degree of the differential background when fitted (Rubin ``spatialBgOrder``). Default 1.
    constant_kernel_sum : bool
        Hold the kernel sum (photometric scale) constant across the detector: only the
        flux-carrying basis function's weight has no spatial terms (apflow). Both images are
        calibrated to nJy, so the scale between them is a constant (the calibration error);
        a free spatial sum only absorbs noise and, on 1k x 1k CCDs, swung between 0.6 and
        1.1 of the truth, biasing the flux of every variable by that fraction of its template
        flux. Default True.
    subtract_background : bool
        Measure the difference's residual background in bins with its sources masked and
        subtract it (:mod:`.background`; apflow, as Rubin's ``DetectAndMeasureTask`` does on the
        difference). Default True.
    background_bin_size : int
        Bin side (pixels) of that background. It follows the difference of the two inputs'
        large-scale backgrounds (calibration's 128 px bins, the template's coadd sky). Finer
        bins do not remove a fringe-like sky pattern of ~60 px period (which needs a sky frame
        before calibration): they alias it and, on the simulator, raised the false DiaSources
        per 1k x 1k CCD from 2-9 (no background, sky-frame-corrected calexps) to 4-11 (64 px)
        and 8-20 (32 px), while 128 px left them at 4-8. Default 128.
    background_mask_threshold : float
        Pixels whose PSF-matched significance in the difference exceeds this (either sign)
        are masked before the background is measured. Default 3.0.
    background_mask_grow_fwhm : float
        Growth of those pixels and of the static sources' footprints, science FWHM.
        Default 1.0.
    background_iterations : int
        Mask-and-measure passes. Default 2.
    stamp_half_fwhm : float
        Half-side of the fit stamps in units of the larger PSF FWHM (apflow). Default 3.0.
    detection_threshold : float
        Per-pixel S/N of the template footprints searched for candidates (apflow). Default 5.0.
    candidate_min_snr : float
        Minimum template peak S/N of a kernel candidate (apflow). Default 50.0.
    isolation_fraction : float
        A neighbouring peak in the fit stamp above this fraction of the candidate's peak rejects
        the candidate (apflow). Default 0.3.
    max_area_ratio : float
        Maximum flux/peak of a candidate relative to a point source's (apflow). Default 1.5.
    candidate_grid, candidates_per_cell : int
        Candidates are the brightest ``candidates_per_cell`` of each cell of a
        ``candidate_grid`` square grid (Rubin ``sizeCellX/Y`` and ``nStarPerCell`` in spirit).
        Default 8 and 5.
    reserve_fraction : float
        Fraction of candidates kept out of the fit to measure its quality (apflow; Rubin's
        Alard-Lupton fit uses every candidate). When set, they come from the fainter half of
        the candidates (:func:`reserved_candidates`). Reserving costs the fit where it matters:
        the brightest stars are the ones whose kernel errors leave residuals above the noise,
        and on the simulator's 1k x 1k CCDs (30-40 candidates) the lost stamps can drop the
        kernel's spatial degree (``stamps_per_spatial_term``). On its default mini camera
        (visits 1-4), reserving 15% (formerly starting with the second-brightest star) left
        the reserved bright stars with stamp chi^2 of 1.3-5 per pixel against 0.9-1.0 when
        fitted; with no reserve the false DiaSources fell from 86 to 68 (seed 0) and 57 to 41
        (seed 3), with 15% from the fainter half they were 73 and 50. Default 0.0.
    candidate_clean_radius_fwhm, candidate_edge_margin_fwhm : float
        A kernel candidate needs a clean core: no masked pixel (``bad_mask_planes``) of either
        image within ``candidate_clean_radius_fwhm`` FWHMs (of the larger PSF) of its peak, and
        the detector edge at least ``candidate_edge_margin_fwhm`` FWHMs away (apflow). Masked
        pixels farther out, those whose kernel footprint reaches the convolved image's masked
        or missing pixels, and the part of the stamp beyond the detector get no weight in the
        fit. Rubin rejects a candidate with any masked pixel in its stamp; here, with
        calibration's 6 px EDGE border and the simulator's bad columns, that kept candidates
        ~30 px from the edges and from bad columns, and the kernel unconstrained (held at the
        stamps' box) over the outer 30-200 px of the 1k x 1k CCDs, where bright stars then
        kept residual lobes. The edge needs the wider margin: a star cut by it loses the light
        that pins the kernel's asymmetric terms, a masked column only one column (on the
        diffim tests' scene a margin of 1 FWHM admits a bright star, stamp S/N 2900, 6 px from
        the edge, which drags the spatial fit: 43 of 81 stamps survive instead of 62). On the
        default mini camera (visits 1-4, no reserve) the false DiaSources went from 68 / 41
        (seeds 0 / 3) with the whole stamp to 50 / 26 with 2 FWHM for both, 47 / 25 with 1.5
        and 47 / 19 with 1 and 1.5 (the defaults; 1 for both also gave 47 / 19 there but
        failed the tests' scene). Defaults 1.0 and 1.5.
    clip_sigma : float
        Robust clipping threshold on stamp residual statistics and kernel sums. Default 3.0.
    max_residual_rms, max_residual_mean : float
        Stamps whose normalised residual rms / |mean| exceed these (and the clipped limit) are
        rejected (Rubin ``candidateResidualStdMax``, ``candidateResidualMeanMax``).
        Default 1.5 and 0.25.
    clip_iterations : int
        Fit-and-reject passes of the spatial model (Rubin ``maxSpatialIterations``). Default 3.
    kernel_scale_tolerance : float
        Stamps whose flux scale under the common kernel differs from the median by more than
        ``clip_sigma`` times ``hypot(photon-noise error, kernel_scale_tolerance)`` are dropped
        as variable sources before the spatial fit (apflow; Rubin clips the noisier per-stamp
        kernel sums only, which on the simulator's variable-rich CCDs let variables pull the
        kernel sum by up to 5%; with this clipping it stayed within 1.7%). The tolerance allows
        for the kernel's shape errors across the detector. Default 0.01.
    clamp_spatial_kernel : bool
        Beyond the box of the stamps used in the fit the kernel is held at its value on the
        box's edge, not extrapolated (apflow). Kernel stars rarely lie within ~30 px of a CCD
        edge (their stamp and the kernel must fit), and on the simulator's 1k x 1k CCDs the box
        can stop 200 px short of it; a 500k nJy star 23 px from the edge then kept residual
        lobes of -12/+10 sigma per pixel with the extrapolated kernel and -9/+7 with the held
        one. It did not change the number of false DiaSources on the default mini camera.
        Default True.
    min_stamps : int
        Fewer usable stamps is an error. Default 3.
    stamps_per_spatial_term : float
        The kernel's spatial degree is the highest (up to ``spatial_kernel_order``) with at
        least this many usable stamps per polynomial term: 30 stamps for a linear variation,
        60 for a quadratic one (apflow; Rubin fixes the degree, but its 4k x 4k CCDs give
        hundreds of stamps). Below 30 the kernel is spatially constant and
        ``diffim_kernel_fallback`` is recorded. Default 10.
    min_template_coverage : float
        A covered fraction of the detector at or below this is an error. Default 0.0 (error
        only when no template overlaps).
    bad_mask_planes : tuple of str
        Planes that exclude pixels from the kernel fit and a star from the candidates.
        Default ("BAD", "SAT", "NO_DATA", "EDGE", "CR", "INTRP", "SUSPECT").
    warp_grid_spacing : int
        Node spacing (pixels) of the exactly transformed coordinate map. Default 64.
    warp_lanczos_order : int
        Order of the Lanczos kernel that resamples the template. Rubin warps with Lanczos-3;
        on a sharp template (FWHM 2.5 pixels) its phase-dependent blur dominates the residuals
        of bright stars (normalised rms 1.42 -> 1.17 on the test scene with Lanczos-5) for
        about twice the warping time. Default 5 (apflow).
    convolution_block : int
        Output block side of the FFT convolution. Default 512.
    metric_radius_fwhm : float
        Radius of the star residual discs, science FWHM. Default 2.0.
    sky_margin_fwhm : float
        Growth of detected footprints excluded from the empty-sky statistics, FWHM.
        Default 3.0.
    """

    convolve: str = "auto"
    kernel_sigma_factors: tuple[float, ...] = (0.7, 1.5, 3.0)
    kernel_degrees: tuple[int, ...] = (4, 2, 2)
    kernel_min_sigma: float = 0.7
    kernel_size_fwhm: float = 6.0
    kernel_size_min: int = 21
    kernel_size_max: int = 35
    spatial_kernel_order: int = 2
    fit_background: bool = False
    spatial_background_order: int = 1
    constant_kernel_sum: bool = True
    subtract_background: bool = True
    background_bin_size: int = 128
    background_mask_threshold: float = 3.0
    background_mask_grow_fwhm: float = 1.0
    background_iterations: int = 2
    stamp_half_fwhm: float = 3.0
    detection_threshold: float = 5.0
    candidate_min_snr: float = 50.0
    isolation_fraction: float = 0.3
    max_area_ratio: float = 1.5
    candidate_grid: int = 8
    candidates_per_cell: int = 5
    reserve_fraction: float = 0.0
    candidate_clean_radius_fwhm: float = 1.0
    candidate_edge_margin_fwhm: float = 1.5
    clip_sigma: float = 3.0
    max_residual_rms: float = 1.5
    max_residual_mean: float = 0.25
    clip_iterations: int = 3
    kernel_scale_tolerance: float = 0.01
    clamp_spatial_kernel: bool = True
    min_stamps: int = 3
    stamps_per_spatial_term: float = 10.0
    min_template_coverage: float = 0.0
    bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "EDGE", "CR", "INTRP", "SUSPECT")
    warp_grid_spacing: int = 64
    warp_lanczos_order: int = 5
    convolution_block: int = 512
    metric_radius_fwhm: float = 2.0
    sky_margin_fwhm: float = 3.0

    def validate(self) -> None:
        name = type(self).__name__
        if self.convolve not in ("auto", "template", "science"):
            raise ConfigError(
                f"{name}.convolve must be auto, template or science: {self.convolve!r}"
            )
        if len(self.kernel_sigma_factors) != len(self.kernel_degrees) or not self.kernel_degrees:
            raise ConfigError(
                f"{name}: kernel_sigma_factors {self.kernel_sigma_factors} and kernel_degrees "
                f"{self.kernel_degrees} must be non-empty and of equal length"
            )
        if any(d < 0 for d in self.kernel_degrees) or any(
            f <= 0 for f in self.kernel_sigma_factors
        ):
            raise ConfigError(f"{name}: kernel degrees must be >= 0 and sigma factors > 0")
        if not 3 <= self.kernel_size_min <= self.kernel_size_max:
            raise ConfigError(
                f"{name}: need 3 <= kernel_size_min <= kernel_size_max, got "
                f"{self.kernel_size_min}, {self.kernel_size_max}"
            )
        for field in ("spatial_kernel_order", "spatial_background_order"):
            if not 0 <= getattr(self, field) <= 4:
                raise ConfigError(f"{name}.{field} must be in 0..4, got {getattr(self, field)}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise ConfigError(f"{name}.reserve_fraction must be in [0, 1): {self.reserve_fraction}")
        if not (math.isfinite(self.kernel_scale_tolerance) and self.kernel_scale_tolerance >= 0):
            raise ConfigError(
                f"{name}.kernel_scale_tolerance must be >= 0, got {self.kernel_scale_tolerance!r}"
            )
        if not 0.0 <= self.min_template_coverage < 1.0:
            raise ConfigError(
                f"{name}.min_template_coverage must be in [0, 1): {self.min_template_coverage}"
            )
        positive = (
            "kernel_min_sigma", "kernel_size_fwhm", "stamp_half_fwhm", "detection_threshold",
            "candidate_min_snr", "isolation_fraction", "max_area_ratio", "candidate_grid",
            "candidates_per_cell", "candidate_clean_radius_fwhm",
            "candidate_edge_margin_fwhm", "clip_sigma",
            "max_residual_rms", "max_residual_mean",
            "clip_iterations", "min_stamps", "stamps_per_spatial_term", "warp_grid_spacing",
            "warp_lanczos_order", "background_bin_size", "background_mask_threshold",
            "background_iterations",
            "convolution_block", "metric_radius_fwhm", "sky_margin_fwhm",
        )  # fmt: skip
        for field in positive:
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}.{field} must be positive, got {value!r}")
        try:
            MaskPlanes.bits(*self.bad_mask_planes)
        except KeyError as exc:
            raise ConfigError(f"{name}.bad_mask_planes: {exc.args[0]}") from None


@dataclass
class SubtractImagesResult:
    """Output of :meth:`SubtractImagesTask.run`.

    Attributes
    ----------
    diff_image : Exposure
        The difference image (nJy) with its PSF; metrics in ``metadata`` (``diffim_*``).
    template_warped : Exposure
        The template resampled onto the calexp grid, not convolved (nJy, per-pixel variance,
        warped PSF).
    kernel : KernelSolution
        The fitted PSF-matching kernel (not stored by the engine).
    """

    diff_image: Exposure
    template_warped: Exposure
    kernel: KernelSolution

    def summary(self) -> dict[str, float | int | None]:
        """Small numbers for the engine's report (None for a metric without stars, such as
        the reserved stamps' residuals when none are reserved)."""
        meta = self.diff_image.metadata
        keys = (
            "template_coverage", "kernel_sum", "kernel_sum_min", "kernel_sum_max",
            "n_stamps_used", "n_stamps_rejected", "n_stamps_reserved", "residual_rms_used",
            "residual_rms_reserved", "sky_mean", "sky_std", "convolved_science",
            "kernel_fallback",
        )  # fmt: skip
        values = {key: meta[f"diffim_{key}"] for key in keys}
        # NaN is not JSON
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in values.items()
        }


class SubtractImagesTask(Task):
    """PSF-matched image subtraction of a calexp and its template (Alard-Lupton)."""

    ConfigClass = SubtractImagesConfig
    config: SubtractImagesConfig

    def run(
        self,
        calexp: Exposure,
        template: Sequence[Exposure] | Exposure,
        data_id: Mapping[str, Any] | None = None,
    ) -> SubtractImagesResult:
        """Difference ``calexp`` against the template patches.

        Parameters
        ----------
        calexp : Exposure
            Background-subtracted science exposure in nJy with WCS and PSF.
        template : list of Exposure or Exposure
            Template patches (nJy, WCS, PSF, variance, mask) that may overlap the calexp.
            Patches whose ``metadata["band"]`` differs from the calexp's band are ignored.
        data_id : mapping, optional
            The quantum's data id, used in error messages.

        Returns
        -------
        SubtractImagesResult

        Raises
        ------
        TaskError
            When no template overlaps the calexp, the inputs lack a WCS or PSF, or too few
            kernel stamps can be used; the message names the data id.
        """
        where = f"subtract_images [{format_data_id(data_id)}]"
        templates = [template] if isinstance(template, Exposure) else list(template)
        _check_inputs(where, calexp, templates)
        templates = _same_band(where, calexp, templates)
        try:
            return self._run(calexp, templates, where)
        except TooFewStampsError as exc:
            raise TaskError(f"{where}: PSF matching failed: {exc}") from None

    def _run(self, calexp: Exposure, templates: list[Exposure], where: str) -> SubtractImagesResult:
        cfg = self.config
        height, width = calexp.shape
        sci_psf = calexp.psf
        tmpl_psf = warped_psf(calexp.wcs, calexp.shape, templates)
        if tmpl_psf is None:
            raise TaskError(f"{where}: no template patch (of {len(templates)}) overlaps the calexp")
        fwhm_sci = _fwhm_grid(sci_psf, width, height)
        fwhm_tmpl = _fwhm_grid(tmpl_psf, width, height)
        convolve_science = cfg.convolve == "science" or (
            cfg.convolve == "auto" and _centre(fwhm_sci) < _centre(fwhm_tmpl)
        )
        fwhm_max = max(float(fwhm_sci.max()), float(fwhm_tmpl.max()))
        size = int(math.ceil(cfg.kernel_size_fwhm * fwhm_max)) | 1
        half = min(max(size, cfg.kernel_size_min | 1), cfg.kernel_size_max | 1) // 2

        ext_shape = (height + 2 * half, width + 2 * half)
        planes = warp_planes(
            calexp.wcs, ext_shape, templates, xy0=(-half, -half),
            grid_spacing=cfg.warp_grid_spacing, lanczos_order=cfg.warp_lanczos_order,
        )  # fmt: skip
        inner = (slice(half, half + height), slice(half, half + width))
        no_data = int(MaskPlanes.NO_DATA)
        coverage = float(np.mean((planes.mask[inner] & no_data) == 0))
        if coverage <= cfg.min_template_coverage:
            raise TaskError(
                f"{where}: no template overlaps the calexp (covered fraction {coverage:.3f} of "
                f"{len(templates)} template patch(es))"
            )
        template_warped = Exposure(
            image=planes.image[inner],
            mask=planes.mask[inner],
            variance=planes.variance[inner],
            wcs=calexp.wcs,
            psf=tmpl_psf,
            photo_calib=PhotoCalib(1.0),
            detector=calexp.detector,
            metadata={
                "template_coverage": coverage,
                "units": "nJy",
                "n_template_patches": len(templates),
            },
        )
        calib = calexp.photo_calib.calibration_mean if calexp.photo_calib else 1.0
        sci_image = calexp.image.astype(np.float32) * np.float32(calib)
        sci_var = calexp.variance.astype(np.float32) * np.float32(calib * calib)

        if convolve_science:
            conv_image = _pad(sci_image, half, 0.0)
            conv_var = _pad(sci_var, half, 0.0)
            conv_mask = _pad(calexp.mask, half, no_data)
            ref_image, ref_var = template_warped.image, template_warped.variance
            fwhm_ref, fwhm_conv = _centre(fwhm_tmpl), _centre(fwhm_sci)
        else:
            conv_image, conv_var = planes.image, planes.variance_uncorrelated
            conv_mask = planes.mask
            ref_image, ref_var = sci_image, sci_var
            fwhm_ref, fwhm_conv = _centre(fwhm_sci), _centre(fwhm_tmpl)
        # missing pixels enter the convolution as 0; the grown mask flags what they touch
        conv_image = np.nan_to_num(conv_image, nan=0.0, posinf=0.0, neginf=0.0)
        conv_var = np.nan_to_num(conv_var, nan=0.0, posinf=0.0, neginf=0.0)
        sigma_match = math.sqrt(max(fwhm_ref**2 - fwhm_conv**2, 0.0)) / GAUSSIAN_FWHM_PER_SIGMA
        basis = alard_lupton_basis(
            half,
            matching_sigmas(sigma_match, cfg.kernel_sigma_factors, cfg.kernel_min_sigma),
            cfg.kernel_degrees,
        )

        bad_bits = MaskPlanes.bits(*cfg.bad_mask_planes)
        tmpl_bad = ((template_warped.mask & bad_bits) != 0) | ~np.isfinite(template_warped.image)
        sci_bad = ((calexp.mask & bad_bits) != 0) | ~np.isfinite(sci_image)
        centre = (0.5 * (width - 1), 0.5 * (height - 1))
        psf_area = 1.0 / float(tmpl_psf.compute_kernel_image(*centre).max())
        stamp_half = max(3, int(math.ceil(cfg.stamp_half_fwhm * fwhm_max)))
        candidates = select_candidates(
            template_warped.image, template_warped.variance, tmpl_bad, sci_image, sci_bad,
            psf_area, stamp_half, half,
            CandidateSettings(
                cfg.detection_threshold, cfg.candidate_min_snr, cfg.isolation_fraction,
                cfg.max_area_ratio, cfg.candidate_grid, cfg.candidates_per_cell,
                int(math.ceil(cfg.candidate_clean_radius_fwhm * fwhm_max)),
                int(math.ceil(cfg.candidate_edge_margin_fwhm * fwhm_max)),
            ),
        )  # fmt: skip
        reserved = reserved_candidates(candidates.x.size, cfg.reserve_fraction)
        fit_x, fit_y = candidates.x[~reserved], candidates.y[~reserved]
        if fit_x.size < cfg.min_stamps:
            raise TaskError(
                f"{where}: only {fit_x.size} usable kernel candidates (of "
                f"{candidates.n_detected} template footprints), need {cfg.min_stamps}"
            )
        # stamps may run off the detector: a reference pixel whose kernel footprint reaches
        # the convolved image's missing or bad pixels (beyond the edge when the science is
        # convolved, beyond the template's coverage) is left out of the fit
        conv_invalid = grow_mask((conv_mask & (bad_bits | no_data)) != 0, half)[inner]
        convolved, reference, weights = kernel_stamps(
            conv_image, conv_var, ref_image, ref_var, tmpl_bad | sci_bad | conv_invalid,
            fit_x, fit_y, stamp_half, half, basis,
        )  # fmt: skip
        fit = fit_kernel(
            basis, convolved, reference, weights, fit_x.astype(float), fit_y.astype(float),
            width, height,
            FitSettings(
                cfg.spatial_kernel_order, cfg.fit_background, cfg.spatial_background_order,
                cfg.constant_kernel_sum,
                cfg.clip_sigma, cfg.max_residual_rms, cfg.max_residual_mean,
                cfg.clip_iterations, cfg.min_stamps, cfg.stamps_per_spatial_term,
                cfg.kernel_scale_tolerance, cfg.clamp_spatial_kernel,
            ),
        )  # fmt: skip
        del convolved, reference, weights
        model, model_var = convolve_with_solution(
            conv_image, conv_var, fit.solution, block=cfg.convolution_block
        )
        grown = grow_mask(conv_mask & ~_DETECTION_BITS, half)[inner]
        if convolve_science:
            diff = model - template_warped.image
            variance = model_var + template_warped.variance
            mask = grown | template_warped.mask
            psf: Psf = tmpl_psf
        else:
            diff = sci_image - model
            variance = sci_var + model_var
            mask = grown | calexp.mask
            psf = sci_psf
        # The unconvolved image's saturated pixels are grown by the kernel too: the other image
        # was matched to a PSF whose core is missing there, so the residual reaches as far as
        # the kernel does (the convolved image's SAT is grown above, with its other planes).
        mask |= grow_mask(mask & _SATURATED_BITS, half)
        mask = mask & ~_DETECTION_BITS
        missing = (template_warped.mask & no_data) != 0
        runs_off = ((grown & no_data) != 0) & ~missing
        if convolve_science:
            missing |= (calexp.mask & no_data) != 0
            runs_off &= ~missing
        mask = mask.astype(np.int32, copy=False)
        mask[runs_off] = (mask[runs_off] & ~no_data) | int(MaskPlanes.EDGE)
        mask[missing] |= no_data
        invalid = missing | runs_off
        diff = diff.astype(np.float32, copy=False)
        variance = variance.astype(np.float32, copy=False)
        diff[invalid] = np.nan
        variance[invalid] = np.nan

        calib_err = calexp.photo_calib.calibration_err / calib if calexp.photo_calib else 0.0
        diff_image = Exposure(
            image=diff,
            mask=mask,
            variance=variance,
            wcs=calexp.wcs,
            psf=psf,
            photo_calib=PhotoCalib(1.0, calib_err),
            visit_info=calexp.visit_info,
            detector=calexp.detector,
            metadata={"units": "nJy"},
        )
        background_meta = self._subtract_background(
            diff_image, candidates.footprints | ((calexp.mask & _DETECTION_BITS) != 0),
            bad_bits, psf.fwhm_at(*centre),
        )  # fmt: skip
        diff_image.metadata.update(background_meta)
        diff_image.metadata.update(
            self._metrics(
                diff_image, candidates, reserved, fit, bad_bits, _centre(fwhm_sci),
                coverage, convolve_science, sigma_match, fwhm_sci, fwhm_tmpl, calexp.mask,
            )
        )  # fmt: skip
        return SubtractImagesResult(diff_image, template_warped, fit.solution)

    def _subtract_background(
        self, diff: Exposure, sources: np.ndarray, bad_bits: int, fwhm: float
    ) -> dict[str, Any]:
        """Remove the difference's residual background in place; its statistics (nJy)."""
        cfg = self.config
        if not cfg.subtract_background:
            return {"diffim_background_subtracted": 0}
        grow = max(1, int(math.ceil(cfg.background_mask_grow_fwhm * fwhm)))
        background, masked = difference_background(
            diff, grow_mask(sources, grow) != 0, bad_bits | int(MaskPlanes.NO_DATA),
            fwhm / GAUSSIAN_FWHM_PER_SIGMA,
            BackgroundSettings(
                cfg.background_bin_size, cfg.background_mask_threshold, grow,
                cfg.background_iterations,
            ),
        )  # fmt: skip
        diff.image -= background.image()
        values = background.values
        noise = float(np.nanmedian(background.sigma))
        return {
            "diffim_background_subtracted": 1,
            "diffim_background_bin_size": cfg.background_bin_size,
            "diffim_background_mean": float(values.mean()),
            "diffim_background_rms": float(values.std()),
            "diffim_background_min": float(values.min()),
            "diffim_background_max": float(values.max()),
            # in units of the per-pixel noise: what detection sees
            "diffim_background_rms_sigma": float(values.std() / noise) if noise > 0 else 0.0,
            "diffim_background_masked_fraction": float(masked.mean()),
        }

    def _metrics(
        self,
        diff: Exposure,
        candidates: Any,
        reserved: np.ndarray,
        fit: KernelFit,
        bad_bits: int,
        fwhm: float,
        coverage: float,
        convolve_science: bool,
        sigma_match: float,
        fwhm_sci: np.ndarray,
        fwhm_tmpl: np.ndarray,
        science_mask: np.ndarray,
    ) -> dict[str, Any]:
        cfg = self.config
        solution = fit.solution
        with np.errstate(invalid="ignore", divide="ignore"):
            z = diff.image / np.sqrt(diff.variance)
        radius = cfg.metric_radius_fwhm * fwhm
        fit_idx = np.flatnonzero(~reserved)
        used_idx = fit_idx[fit.used]
        rejected_idx = fit_idx[~fit.used]
        res_idx = np.flatnonzero(reserved)
        used = star_residuals(z, candidates.x[used_idx], candidates.y[used_idx], radius)
        held = star_residuals(z, candidates.x[res_idx], candidates.y[res_idx], radius)
        sources = candidates.footprints | ((science_mask & _DETECTION_BITS) != 0)
        excluded = grow_mask(sources, int(math.ceil(cfg.sky_margin_fwhm * fwhm))) != 0
        excluded |= (diff.mask & (bad_bits | int(MaskPlanes.NO_DATA))) != 0
        sky = sky_statistics(z, excluded)
        gx, gy = np.meshgrid(
            np.linspace(0, solution.width - 1, 9), np.linspace(0, solution.height - 1, 9)
        )
        ksum = kernel_sum_statistics(solution.kernel_sum(gx, gy))
        return {
            "diffim_template_coverage": coverage,
            "diffim_convolved_science": int(convolve_science),
            "diffim_fwhm_science": _centre(fwhm_sci),
            "diffim_fwhm_template": _centre(fwhm_tmpl),
            "diffim_sigma_match": sigma_match,
            "diffim_kernel_size": 2 * solution.basis.half + 1,
            "diffim_kernel_n_basis": solution.basis.size,
            "diffim_kernel_spatial_order": solution.spatial_order,
            "diffim_background_order": solution.background_order,
            "diffim_kernel_fallback": int(fit.spatially_constant_fallback),
            "diffim_kernel_sum": ksum["centre"],
            "diffim_kernel_sum_min": ksum["min"],
            "diffim_kernel_sum_max": ksum["max"],
            "diffim_kernel_sum_std": ksum["std"],
            "diffim_background_centre": float(
                solution.background_at(0.5 * (solution.width - 1), 0.5 * (solution.height - 1))
            ),
            "diffim_n_detected": candidates.n_detected,
            "diffim_n_candidates": int(candidates.x.size),
            "diffim_n_stamps_used": int(used_idx.size),
            "diffim_n_stamps_rejected": int(rejected_idx.size),
            "diffim_n_stamps_reserved": int(res_idx.size),
            "diffim_residual_rms_used": used["rms"],
            "diffim_residual_mean_used": used["mean"],
            "diffim_residual_rms_reserved": held["rms"],
            "diffim_residual_mean_reserved": held["mean"],
            "diffim_residual_radius": radius,
            "diffim_sky_mean": sky["mean"],
            "diffim_sky_std": sky["std"],
            "diffim_sky_n_pixels": sky["n"],
            "diffim_sky_clipped_fraction": sky["clipped_fraction"],
        }


def _check_inputs(where: str, calexp: Exposure, templates: list[Exposure]) -> None:
    if not isinstance(calexp, Exposure):
        raise TaskError(f"{where}: calexp must be an Exposure, got {type(calexp).__name__}")
    if calexp.wcs is None or calexp.psf is None:
        raise TaskError(f"{where}: the calexp needs a WCS and a PSF model")
    if not templates:
        raise TaskError(f"{where}: no template patches given")
    for i, tmpl in enumerate(templates):
        if not isinstance(tmpl, Exposure):
            raise TaskError(f"{where}: template {i} is a {type(tmpl).__name__}, not an Exposure")
        if tmpl.wcs is None or tmpl.psf is None:
            raise TaskError(f"{where}: template patch {i} needs a WCS and a PSF model")


def _same_band(where: str, calexp: Exposure, templates: list[Exposure]) -> list[Exposure]:
    """The templates of the calexp's band (a template without a band is kept).

    The engine may gather the template patches of every band; only the visit's band matches.
    """
    band = calexp.visit_info.band if calexp.visit_info is not None else ""
    if not band:
        return templates
    kept = [t for t in templates if t.metadata.get("band", band) == band]
    if not kept:
        found = sorted({str(t.metadata.get("band")) for t in templates})
        raise TaskError(f"{where}: no template patch in band {band!r} (bands given: {found})")
    return kept


def _fwhm_grid(psf: Psf, width: int, height: int) -> np.ndarray:
    """PSF FWHM (pixels) on a 3x3 grid of detector positions (centre at [1, 1])."""
    xs = (0.0, 0.5 * (width - 1), width - 1.0)
    ys = (0.0, 0.5 * (height - 1), height - 1.0)
    return np.array([[psf.fwhm_at(x, y) for x in xs] for y in ys])


def _centre(grid: np.ndarray) -> float:
    return float(grid[1, 1])


def _pad(array: np.ndarray, half: int, value: float) -> np.ndarray:
    return np.pad(array, half, mode="constant", constant_values=value)


def reserved_candidates(n: int, fraction: float) -> np.ndarray:
    """Which of ``n`` candidates (sorted brightest first) are held out of the kernel fit.

    ``round(fraction * n)`` candidates spread evenly over the fainter half (or, for a
    fraction above one half, the faintest ones): the brightest stars are always fitted,
    since their residuals are the largest in the difference image and they pin the kernel
    far better than faint stars do.

    Parameters
    ----------
    n : int
        Number of candidates.
    fraction : float
        Fraction to hold out, in [0, 1).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` bool, True for the reserved candidates.
    """
    out = np.zeros(n, bool)
    n_reserved = int(round(fraction * n)) if n > 0 else 0
    if n_reserved == 0:
        return out
    first = min(n // 2, n - n_reserved)
    out[np.unique(np.round(np.linspace(first, n - 1, n_reserved)).astype(np.int64))] = True
    return out
