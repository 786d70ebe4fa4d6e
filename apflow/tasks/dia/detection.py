"""Positive and negative detection on a difference image, and the merge of touching footprints.

The significance image is computed once with calibration's matched filter
(:func:`apflow.tasks.calibrate.detection.smoothed_significance`: the image correlated with a
Gaussian of the PSF's sigma, divided by its noise from the variance plane). Pixels above
``+threshold`` make positive footprints and pixels below ``-threshold`` negative ones (Rubin's
``thresholdPolarity="both"``, ``thresholdType="pixel_stdev"``, 5 sigma); each is grown by
``n_sigma_to_grow`` PSF sigmas as calibration's detection does. Peaks are local extrema of the
smoothed image inside each polarity's threshold region, refined to sub-pixel positions by the
same parabola, and same-sign peaks of one footprint closer than one FWHM are merged (noise on the
wings of bright residuals otherwise splits them).

A footprint gives one source per *prominent* peak of each sign only (:func:`prominent_peaks`): a
peak that does not rise ``peak_prominence`` sigma above the saddle joining it to a higher
same-sign peak of its footprint is part of that peak's source. Rubin's DIA without deblending
makes one source per footprint; this keeps resolved neighbours apart while the ring of a bright
star's subtraction residual -- one footprint with a dozen noise bumps on it, each of which used
to be a DiaSource -- gives one.

As Rubin's ``DetectAndMeasureTask`` (``doMerge``) does, positive and negative footprints that
overlap or touch (8-connected) after growing are merged into one *parent* footprint: one with
peaks of both signs is a dipole candidate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ...core import Exposure, MaskPlanes
from ...core.psf import GAUSSIAN_FWHM_PER_SIGMA
from ..calibrate.detection import (
    DetectionConfig,
    find_peaks,
    grow_mask,
    smoothed_significance,
    subpixel_peak_offsets,
    suppress_peaks,
)


@dataclasses.dataclass(frozen=True)
class DiaDetections:
    """Peaks of both signs and their merged footprints.

    Attributes
    ----------
    x, y : numpy.ndarray
        ``(n,)`` float64 sub-pixel peak positions (px).
    peak_x, peak_y : numpy.ndarray
        ``(n,)`` int64 peak pixels.
    sign : numpy.ndarray
        ``(n,)`` int8, +1 for a peak of the positive image, -1 of the negative one.
    significance : numpy.ndarray
        ``(n,)`` float64 smoothed significance at the peak (negative for negative peaks).
    parent : numpy.ndarray
        ``(n,)`` int64 label of the merged footprint holding the peak (1-based).
    footprints : numpy.ndarray
        ``(height, width)`` int32 labels of the merged (positive OR negative) grown footprints.
    bboxes : list of tuple of slice
        ``bboxes[label - 1]`` is the ``(rows, cols)`` bounding box of footprint ``label``.
    mask : numpy.ndarray
        ``(height, width)`` int32 copy of the input mask with ``DETECTED`` (positive
        footprints), ``DETECTED_NEGATIVE`` (negative ones) and ``EDGE`` (the border the matched
        filter cannot cover) set.
    """

    x: np.ndarray
    y: np.ndarray
    peak_x: np.ndarray
    peak_y: np.ndarray
    sign: np.ndarray
    significance: np.ndarray
    parent: np.ndarray
    footprints: np.ndarray
    bboxes: list[tuple[slice, slice]]
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)


def detect_both_signs(
    exposure: Exposure, sigma: float, config: DetectionConfig, peak_prominence: float = 0.0
) -> DiaDetections:
    """Detect positive and negative sources and merge touching footprints.

    Parameters
    ----------
    exposure : Exposure
        Difference image with variance and mask.
    sigma : float
        Gaussian sigma (px) of the matched filter, the PSF's.
    config : DetectionConfig
        Threshold, kernel width, growth, peak merging and bad planes (calibration's config).
    peak_prominence : float
        Same-sign peaks of a footprint that rise less than this (in sigma of the smoothed
        image) above the saddle to a higher peak are dropped (:func:`prominent_peaks`);
        0 keeps every peak.

    Returns
    -------
    DiaDetections
    """
    significance, smoothed, border = smoothed_significance(exposure, sigma, config)
    grow = int(config.n_sigma_to_grow * sigma + 0.5)
    peak_threshold = config.threshold * config.include_threshold_multiplier
    min_separation = config.min_peak_separation or sigma * GAUSSIAN_FWHM_PER_SIGMA

    pos_above = significance > config.threshold
    neg_above = significance < -config.threshold
    pos_grown = grow_mask(pos_above, grow)
    neg_grown = grow_mask(neg_above, grow)
    structure = np.ones((3, 3), bool)
    footprints = np.empty(pos_grown.shape, np.int32)
    ndimage.label(pos_grown | neg_grown, structure=structure, output=footprints)
    bboxes = ndimage.find_objects(footprints)

    parts = []
    for sign, above in ((1, pos_above), (-1, neg_above)):
        if not above.any():
            continue
        # Peaks of the negative image are the minima of the smoothed difference.
        sig = significance if sign > 0 else np.negative(significance)
        smo = smoothed if sign > 0 else np.negative(smoothed)
        py, px = find_peaks(sig, smo, above, peak_threshold)
        labels = footprints[py, px]
        keep = suppress_peaks(px, py, labels, smo[py, px], exposure.mask, config, min_separation)
        px, py, labels = px[keep], py[keep], labels[keep]
        if peak_prominence > 0:
            keep = prominent_peaks(sig, above, px, py, labels, bboxes, peak_prominence)
            px, py, labels = px[keep], py[keep], labels[keep]
        dx, dy = subpixel_peak_offsets(smo, px, py)
        parts.append((px, py, px + dx, py + dy, np.full(px.size, sign, np.int8), labels))
    if parts:
        px, py, x, y, signs, labels = (np.concatenate(a) for a in zip(*parts, strict=True))
    else:
        px = py = labels = np.zeros(0, np.int64)
        x = y = np.zeros(0)
        signs = np.zeros(0, np.int8)

    mask = exposure.mask.copy()
    np.bitwise_or(mask, np.int32(MaskPlanes.DETECTED), out=mask, where=pos_grown)
    np.bitwise_or(mask, np.int32(MaskPlanes.DETECTED_NEGATIVE), out=mask, where=neg_grown)
    for strip in (np.s_[:border, :], np.s_[-border:, :], np.s_[:, :border], np.s_[:, -border:]):
        mask[strip] |= int(MaskPlanes.EDGE)
    return DiaDetections(
        x=np.asarray(x, np.float64),
        y=np.asarray(y, np.float64),
        peak_x=np.asarray(px, np.int64),
        peak_y=np.asarray(py, np.int64),
        sign=signs,
        significance=significance[py, px].astype(np.float64),
        parent=np.asarray(labels, np.int64),
        footprints=footprints,
        bboxes=bboxes,
        mask=mask,
    )


def prominent_peaks(
    significance: np.ndarray,
    above: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    labels: np.ndarray,
    bboxes: list[tuple[slice, slice]],
    prominence: float,
) -> np.ndarray:
    """Which peaks rise at least ``prominence`` above the saddle to a higher peak of their footprint.

    Peaks of one footprint are taken from the highest down. A peak of height ``h`` is dropped
    when the region of ``above`` pixels with ``significance > h - prominence`` that holds it
    also holds a higher kept peak: the two are then joined by a path that never dips more than
    ``prominence`` below it, one source with a bumpy top rather than two sources. The highest
    peak of each footprint is always kept.

    Parameters
    ----------
    significance : numpy.ndarray
        ``(height, width)`` smoothed significance, positive for the sign being examined.
    above : numpy.ndarray
        ``(height, width)`` bool thresholded region of that sign.
    px, py : numpy.ndarray
        ``(n,)`` integer peak pixels.
    labels : numpy.ndarray
        ``(n,)`` 1-based footprint label of each peak.
    bboxes : list of tuple of slice
        ``bboxes[label - 1]``: the footprint's bounding box.
    prominence : float
        Minimum rise above the saddle, in the units of ``significance`` (sigma).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` bool, True for the peaks kept.
    """
    keep = np.ones(px.size, bool)
    structure = np.ones((3, 3), bool)
    heights = significance[py, px]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            continue
        rows, cols = bboxes[label - 1]
        sig = significance[rows, cols]
        region = above[rows, cols]
        ly, lx = py[members] - rows.start, px[members] - cols.start
        order = np.argsort(-heights[members], kind="stable")
        kept = [order[0]]
        for k in order[1:]:
            level = heights[members[k]] - prominence
            components, _ = ndimage.label(region & (sig > level), structure=structure)
            own = components[ly[k], lx[k]]
            if own and np.any(components[ly[kept], lx[kept]] == own):
                keep[members[k]] = False
            else:
                kept.append(k)
    return keep
