"""The residual background of a difference image, measured with its sources masked.

Both inputs of the subtraction are background-subtracted, but not in the same way: the calexp's
background is calibration's binned model (128 px bins, smoother than the sky), the template's
is a coadd's. What neither model follows -- a fine sky pattern (fringes, scattered light on
40-250 px scales), bin-scale errors of either model, the roll-off near the CCD edges -- stays in
the difference. Through the PSF-matched filter (``sqrt(N_eff) ~ 9`` pixels) a residual of
0.1 sigma per pixel shifts the detection significance by ~1 sigma and the PSF flux of every
source by ``N_eff`` times the residual.

Patterns on scales of a few PSF widths (the simulator's fixed 2% sky pattern of 60-250 px
periods) are a sky-frame correction's job, before calibration: bins fine enough to follow them
take in the sources' wings and alias what they cannot resolve (see
:class:`~.task.SubtractImagesConfig`, ``background_bin_size``). What is measured here is the
smooth part: the difference between the two inputs' large-scale backgrounds. A polynomial
fitted with the kernel (Rubin's ``fitForBackground``) sees only the stamps of bright stars, so
it is measured on the difference itself, as Rubin's ``DetectAndMeasureTask`` does when it
subtracts a background from the difference before detection:

1. Pixels that cannot be sky are left out: the bad mask planes, the template's footprints and
   the science's detections (static sources, whose imperfect subtraction is not sky), and, on
   each pass, the pixels of the current difference whose PSF-matched significance exceeds
   ``mask_threshold`` in either sign, grown by ``mask_grow`` pixels (the transients and
   variables: a 3 sigma cut masks any S/N >= 5 source; unmasked, a source would lift its own
   bin by ``flux / bin_area``).
2. Calibration's binned sigma-clipped mean with Akima interpolation
   (:func:`apflow.tasks.calibrate.background.estimate_background`) measures what is left.
3. If that background reaches ``REPEAT_LEVEL`` (0.1) of the sky noise anywhere -- enough to
   move the significance of the first pass's mask by ~1 sigma -- the difference minus it is
   searched again (step 1) and the background re-measured from the original difference, up to
   ``iterations`` passes. A clean difference needs one pass (a 4k x 4k CCD: ~1 s each).

The estimate's own noise (``sigma / sqrt(n_pixels)`` per bin) is coherent on the bin scale and
not added to the variance plane; with 128 px bins it adds ~0.3% in quadrature to the error of a
PSF flux.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ...core import Exposure, MaskPlanes
from ..calibrate.background import BackgroundConfig, BackgroundModel, estimate_background
from ..calibrate.detection import DetectionConfig, grow_mask, smoothed_significance

#: A background reaching this fraction of the sky noise (per pixel) is measured once more.
REPEAT_LEVEL = 0.1


@dataclass(frozen=True)
class BackgroundSettings:
    """Knobs of :func:`difference_background` (documented in :class:`~.task.SubtractImagesConfig`)."""

    bin_size: int
    mask_threshold: float
    mask_grow: int
    iterations: int


def difference_background(
    diff: Exposure,
    sources: np.ndarray,
    bad_bits: int,
    psf_sigma: float,
    settings: BackgroundSettings,
) -> tuple[BackgroundModel, np.ndarray]:
    """Measure the residual background of a difference image.

    Parameters
    ----------
    diff : Exposure
        The difference image (image, variance, mask; NaN where unusable).
    sources : numpy.ndarray
        bool map of pixels of known static sources (not sky), already grown as wanted.
    bad_bits : int
        Mask planes whose pixels are not sky.
    psf_sigma : float
        Gaussian sigma (px) of the matched filter that finds the difference's own sources.
    settings : BackgroundSettings

    Returns
    -------
    background : BackgroundModel
        The binned model (image units); ``background.image()`` is its full-resolution image.
    masked : numpy.ndarray
        bool map of the pixels left out on the last pass.
    """
    detected = int(MaskPlanes.DETECTED)
    fixed = ((diff.mask & bad_bits) != 0) | sources | ~np.isfinite(diff.image)
    config = BackgroundConfig(
        bin_size=settings.bin_size,
        ignored_mask_planes=("DETECTED",),
        interpolation="akima",
    )
    detection = DetectionConfig(bad_mask_planes=("BAD", "NO_DATA", "EDGE"))
    current = diff
    masked = fixed
    background: BackgroundModel | None = None
    for _ in range(max(1, settings.iterations)):
        significance, _, _ = smoothed_significance(current, psf_sigma, detection)
        found = np.abs(significance) > settings.mask_threshold
        masked = fixed | grow_mask(found, settings.mask_grow)
        mask = np.where(masked, np.int32(detected), np.int32(0))
        background = estimate_background(diff.image, mask, config)
        noise = float(np.nanmedian(background.sigma))
        if not np.nanmax(np.abs(background.values)) >= REPEAT_LEVEL * noise:
            break
        current = dataclasses.replace(diff, image=diff.image - background.image())
    assert background is not None
    return background, masked
