"""Iterative object masking before sky measurement (Rubin's ``MaskObjectsTask``).

Each of ``n_iter`` rounds: estimate a local background (excluding what the previous round
detected), smooth the background-subtracted image with a wide Gaussian, threshold its
significance, and grow the detections. The wide kernel (not the PSF) is deliberate: it picks up
the faint outer parts of objects, which would otherwise bias the sky.

Open question 1 of the reference notes, decided: Rubin's ``detectSigma = 5.0`` reaches
``detectFootprints`` as the Gaussian *smoothing* sigma in pixels, and the threshold is
``detection.thresholdValue = 2.5``. We copy those semantics under explicit names:
``smoothing_sigma = 5.0`` px and ``threshold = 2.5`` standard deviations of the *smoothed* image
(the per-pixel noise times the kernel's quadratic sum: a matched-filter significance), or of the
measured robust scatter of the detection image when that is larger.

Where we depart from Rubin, and why (measured on the synthetic camera of the tests):

- The detection background is the median in ``background_bin_size`` = 8 px bins, not a 1024-px
  mesh. A sky frame exists to recover structure of the sky on 32-px bins and up; against a coarse
  background such structure (a few % of the sky is tens of sigma after 5-px smoothing) is
  "detected", and masking its peaks biases the very sky frame being built. On the tests'
  synthetic camera (12 visits) the worst detector's sky-frame error is 1.2% of the pattern with
  8-px bins, 2.3% with 16, 4.2% with 32 and 25% with Rubin's 1024-px mesh.
  In later rounds a bin uses only its undetected pixels if at least ``background_min_frac`` of it
  is left, and otherwise keeps its first-round median: filling a mostly detected bin from its
  neighbours (what a coarse background does) turns any extended structure into a detection that
  grows every round. The price: the wings of objects wider than ~8 px are left to the clipping of
  the later statistics (per-bin and across visits), which handles them well.
- Footprints grow by ``grow_factor x smoothing_sigma`` with ``grow_factor = 1`` (5 px), not
  Rubin's 2.4 (12 px): every masked pixel also removes sky from its 32-px bin, and with the local
  background the wings a larger growth would catch are below the noise; 2.4 masks 3x more of
  the CCD (9% instead of 3%) and raises the worst sky-frame error from 1.2% to 1.8%.
- Detected pixels are only flagged ``DETECTED``; they are not replaced by an interpolated
  background (Rubin's ``doInterpolate``). Later stages exclude them from their statistics.
- Detection runs on ``detection_binning`` x ``detection_binning`` block means (2 by default). The
  5-px kernel is much wider than 2 px, so the significance is unchanged, and it is 4x faster.

The result's ``object_mask`` (the detections alone, :mod:`.object_mask`) is what the workflows
store as ``sky_object_mask``; later stages set it on ``post_isr`` with :func:`apply_object_mask`
rather than reading back a whole masked copy of the exposure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
from astropy.stats import mad_std
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from ...core import Exposure
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig
from ..stats import binned_median
from .bundle import ArrayBundle
from .correct import check_sky_frame
from .interpolate import bin_matrix, fill_bad_bins, separable_product
from .object_mask import apply_object_mask, object_mask_bundle

__all__ = ["MaskObjectsConfig", "MaskObjectsResult", "MaskObjectsTask", "detect_objects"]


@dataclass
class MaskObjectsConfig(TaskConfig):
    """Configuration of :class:`MaskObjectsTask`.

    Attributes
    ----------
    n_iter : int
        Detection rounds (Rubin's nIter). Default 3.
    smoothing_sigma : float
        Sigma of the Gaussian smoothing kernel, pixels (Rubin's detectSigma). Default 5.0.
    threshold : float
        Detection threshold in standard deviations of the smoothed image (Rubin's
        detection.thresholdValue). Default 2.5.
    grow_factor : float
        Detections grow by ``grow_factor * smoothing_sigma`` pixels (Rubin's nSigmaToGrow, 2.4
        there). Default 1.0.
    background_bin_size : int
        Bin side of the detection background (medians), pixels. Default 8.
    background_min_frac : float
        In later rounds a background bin with fewer undetected pixels than this fraction keeps
        its first-round median (over all usable pixels). Default 0.5.
    detection_binning : int
        Detect on block means of this many pixels per side. Default 2.
    ignore_mask_planes : list of str
        Pixels that carry no sky information: excluded from the background, replaced by it
        before smoothing. Default BAD, SAT, NO_DATA, EDGE.
    """

    n_iter: int = 3
    smoothing_sigma: float = 5.0
    threshold: float = 2.5
    grow_factor: float = 1.0
    background_bin_size: int = 8
    background_min_frac: float = 0.5
    detection_binning: int = 2
    ignore_mask_planes: list[str] = field(default_factory=lambda: ["BAD", "SAT", "NO_DATA", "EDGE"])

    def validate(self) -> None:
        if self.n_iter < 1:
            raise ConfigError("MaskObjectsConfig.n_iter must be >= 1")
        if self.smoothing_sigma <= 0 or self.threshold <= 0 or self.grow_factor < 0:
            raise ConfigError(
                "MaskObjectsConfig: need smoothing_sigma > 0, threshold > 0, grow_factor >= 0"
            )
        if self.detection_binning < 1 or self.background_bin_size < self.detection_binning:
            raise ConfigError(
                "MaskObjectsConfig: need detection_binning >= 1 and "
                "background_bin_size >= detection_binning"
            )
        if self.background_bin_size % self.detection_binning:
            raise ConfigError(
                "MaskObjectsConfig.background_bin_size must be a multiple of detection_binning"
            )
        if not 0.0 <= self.background_min_frac <= 1.0:
            raise ConfigError("MaskObjectsConfig.background_min_frac must be in [0, 1]")


@dataclass
class MaskObjectsResult:
    """The object mask of one exposure.

    Attributes
    ----------
    object_mask : ArrayBundle
        The detections alone (``sky_object_mask``, see :mod:`.object_mask`): what the
        workflows store, a few hundred kB per LSSTCam CCD instead of a whole exposure.
    detected_fraction : float
        Fraction of the CCD's pixels flagged DETECTED.
    noise : float
        Per-pixel noise used for the threshold (image units).
    source : Exposure
        The input exposure (kept for :attr:`exposure`; not a workflow output).
    """

    object_mask: ArrayBundle
    detected_fraction: float
    noise: float
    source: Exposure = field(repr=False)

    @property
    def exposure(self) -> Exposure:
        """The input with ``DETECTED`` replaced by the new detections (built on demand).

        Image and variance are shared with the input (not copied); the mask is a new array.
        """
        return apply_object_mask(self.source, self.object_mask)

    def summary(self) -> dict[str, float]:
        """Detected fraction and noise."""
        return {"detected_fraction": self.detected_fraction, "noise": self.noise}


class MaskObjectsTask(Task):
    """Flag objects (and their faint wings) as DETECTED so the sky can be measured around them."""

    ConfigClass = MaskObjectsConfig
    config: MaskObjectsConfig

    def run(
        self, exposure: Exposure, sky_frame: Exposure | ArrayBundle | None = None
    ) -> MaskObjectsResult:
        """Detect objects iteratively: the new DETECTED plane, as an object mask.

        Parameters
        ----------
        exposure : Exposure
            A post-ISR exposure (counts); its variance plane, when finite, sets the noise.
        sky_frame : Exposure or ArrayBundle, optional
            The sky frame the object mask is being prepared for (sky correction). Not used
            by the masking: ``workflows/sky_correct.yaml`` makes it a required input so that
            only CCDs with a sky frame are masked at all (a CCD without one is passed through
            unchanged, so its object mask would be wasted work). Checked here, before the
            expensive part, to be this exposure's detector and physical filter.

        Raises
        ------
        TaskError
            If every pixel is masked by ``ignore_mask_planes`` or non-finite, or the sky frame
            is of another detector or physical filter.
        """
        if sky_frame is not None:
            check_sky_frame(sky_frame, exposure)
        cfg = self.config
        ignore = exposure.mask_of(*cfg.ignore_mask_planes) if cfg.ignore_mask_planes else None
        detected, noise = detect_objects(
            exposure.image, ignore, variance=exposure.variance, **self._detect_options()
        )
        fraction = float(detected.mean())
        object_mask = object_mask_bundle(detected, exposure, fraction, noise)
        return MaskObjectsResult(object_mask, fraction, noise, source=exposure)

    def _detect_options(self) -> dict[str, float | int]:
        cfg = self.config
        return {
            "n_iter": cfg.n_iter,
            "smoothing_sigma": cfg.smoothing_sigma,
            "threshold": cfg.threshold,
            "grow_radius": cfg.grow_factor * cfg.smoothing_sigma,
            "background_bin_size": cfg.background_bin_size,
            "background_min_frac": cfg.background_min_frac,
            "binning": cfg.detection_binning,
        }


def detect_objects(
    image: np.ndarray,
    ignore: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    n_iter: int = 3,
    smoothing_sigma: float = 5.0,
    threshold: float = 2.5,
    grow_radius: float = 5.0,
    background_bin_size: int = 8,
    background_min_frac: float = 0.5,
    binning: int = 2,
) -> tuple[np.ndarray, float]:
    """Iterative smoothed detection of objects on a sky image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width)`` pixel values (counts).
    ignore : numpy.ndarray of bool, optional
        Pixels without sky information (bad columns, saturation, no data).
    variance : numpy.ndarray, optional
        Per-pixel variance; its median over usable pixels sets the noise when finite. Otherwise
        the noise is a robust estimate from differences of neighbouring pixels, which smooth sky
        structure does not inflate.
    n_iter, smoothing_sigma, threshold, background_bin_size, background_min_frac
        See :class:`MaskObjectsConfig` (pixels of the input image).
    grow_radius : float
        Detections grow by this many pixels (an octagon close to a disc).
    binning : int
        Detect on block means of ``binning x binning`` pixels.

    Returns
    -------
    detected : numpy.ndarray of bool
        ``(height, width)``, True on objects and their grown footprints.
    noise : float
        Per-pixel noise of the input image (image units).

    Raises
    ------
    TaskError
        If no pixel is usable.
    """
    height, width = image.shape
    usable = np.isfinite(image)
    if ignore is not None:
        usable &= ~ignore
    if not usable.any():
        raise TaskError("every pixel is masked or non-finite: nothing to detect on")
    blocks, block_usable = _block_means(image, usable, binning)
    noise = _pixel_noise(image, usable, variance)
    # block means of k good pixels have noise/sqrt(k); full blocks dominate, so use k = binning^2
    sigma = smoothing_sigma / binning
    half = int(4.0 * sigma + 0.5)
    kernel_1d = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel_1d /= kernel_1d.sum()
    # noise of the smoothed image: per-block noise times sqrt(sum of the 2-D kernel squared)
    smoothed_noise = (noise / binning) * float(np.sum(kernel_1d**2))

    bin_blocks = background_bin_size // binning
    n_rows, n_cols = blocks.shape
    wy, wx = bin_matrix(n_rows, bin_blocks), bin_matrix(n_cols, bin_blocks)
    capacity = np.outer(_bin_lengths(n_rows, bin_blocks), _bin_lengths(n_cols, bin_blocks))
    everything, n_usable = binned_median(blocks, ~block_usable, bin_blocks)
    # the background of all usable blocks (a median ignores object cores) is the fallback for
    # bins that later rounds find mostly detected; bins with no usable block at all (a dead
    # corner) are filled from their neighbours
    fallback = fill_bad_bins(everything, n_usable == 0)
    # Smoothing is linear, so smooth(image - background) = smooth(image) - smooth(background):
    # the image is smoothed once, and each round's background through smoothed interpolation
    # matrices. Unusable blocks hold the first background (they then contribute ~nothing), and
    # the outside of the image counts as background (zero padding of the difference): edges lose
    # a little sensitivity but gain no false detections.
    filled = np.where(block_usable, blocks, separable_product(wy, fallback, wx))
    smoothed = gaussian_filter(filled, sigma, mode="constant", cval=0.0, truncate=4.0)
    smooth_wy, smooth_wx = _smoothed_matrix(wy, sigma), _smoothed_matrix(wx, sigma)

    detected = np.zeros(blocks.shape, dtype=bool)
    for round_index in range(n_iter):
        grid = fallback
        if round_index > 0:
            median, n_good = binned_median(blocks, ~(block_usable & ~detected), bin_blocks)
            grid = np.where(n_good >= background_min_frac * capacity, median, fallback)
        significance = smoothed - separable_product(smooth_wy, grid, smooth_wx)
        cut = threshold * max(smoothed_noise, _robust_std(significance, block_usable & ~detected))
        detected = _grow(significance > cut, grow_radius / binning)

    full = np.repeat(np.repeat(detected, binning, axis=0), binning, axis=1)
    return full[:height, :width], noise


def _robust_std(values: np.ndarray, where: np.ndarray) -> float:
    """Robust sigma (1.4826 x MAD) of ``values[where]`` on every 4th row (objects in the tail
    barely move it)."""
    sample = values[::4][where[::4]]
    if sample.size == 0:
        return 0.0
    return float(mad_std(sample))


def _bin_lengths(n: int, bin_size: int) -> np.ndarray:
    """Number of pixels in each bin along an axis (the last may be partial)."""
    return np.minimum(bin_size, n - np.arange(0, n, bin_size))


def _smoothed_matrix(matrix: scipy.sparse.csr_matrix, sigma: float) -> scipy.sparse.csr_matrix:
    """Gaussian smoothing (zero padding) applied along the pixel axis of an interpolation matrix."""
    dense = gaussian_filter1d(matrix.toarray(), sigma, axis=0, mode="constant", truncate=4.0)
    return scipy.sparse.csr_matrix(dense)


def _block_means(
    image: np.ndarray, usable: np.ndarray, binning: int
) -> tuple[np.ndarray, np.ndarray]:
    """Means of the usable pixels in ``binning x binning`` blocks (partial blocks at the edges)."""
    if binning == 1:
        return np.where(usable, image, 0.0).astype(np.float32), usable.copy()
    height, width = image.shape
    ny, nx = -(-height // binning), -(-width // binning)
    values = np.zeros((ny * binning, nx * binning), dtype=np.float32)
    weight = np.zeros((ny * binning, nx * binning), dtype=np.float32)
    np.copyto(values[:height, :width], image, where=usable)
    weight[:height, :width] = usable
    # strided sums over the binning^2 offsets are much faster than a 4-D reshape reduction
    sums = np.zeros((ny, nx), dtype=np.float32)
    counts = np.zeros((ny, nx), dtype=np.float32)
    for dy in range(binning):
        for dx in range(binning):
            sums += values[dy::binning, dx::binning]
            counts += weight[dy::binning, dx::binning]
    good = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(good, sums / counts, 0.0).astype(np.float32)
    return means, good


def _pixel_noise(image: np.ndarray, usable: np.ndarray, variance: np.ndarray | None) -> float:
    """Per-pixel noise: sqrt(median variance), or a robust estimate from pixel differences."""
    # every 4th row is plenty for one number and keeps this at a few ms on 4k x 4k
    rows = slice(None, None, 4)
    if variance is not None:
        sample = variance[rows][usable[rows]]
        sample = sample[np.isfinite(sample) & (sample > 0)]
        if sample.size:
            return float(np.sqrt(np.median(sample)))
    # differences of horizontal neighbours cancel any sky structure wider than a pixel;
    # 1.4826 * MAD / sqrt(2) is the per-pixel sigma for Gaussian noise, robust to stars
    diff = np.diff(image[rows], axis=1)
    both = usable[rows][:, 1:] & usable[rows][:, :-1]
    diff = diff[both]
    if diff.size == 0:
        raise TaskError("no pair of usable neighbouring pixels to estimate the noise")
    noise = float(mad_std(diff)) / np.sqrt(2.0)
    if not noise > 0:
        raise TaskError(f"image noise estimate is {noise}: cannot set a detection threshold")
    return noise


def _grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilate by about ``radius`` pixels: alternating 4- and 8-neighbour steps (an octagon)."""
    grown = mask
    for step in range(int(round(radius))):
        nxt = grown.copy()
        nxt[1:] |= grown[:-1]
        nxt[:-1] |= grown[1:]
        # even steps grow along the axes only (a diamond), odd steps also diagonally (a square);
        # alternating them gives an octagon within ~8% of a disc of the same radius
        source = nxt.copy() if step % 2 else grown
        nxt[:, 1:] |= source[:, :-1]
        nxt[:, :-1] |= source[:, 1:]
        grown = nxt
    return grown
