"""Per-DiaSource measurements that are not fits: sky coordinates, PSF moments, pixel flags, bbox.

All functions are vectorised over sources and reuse calibration's and forced photometry's
stamp machinery.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.wcs import WCS

from ...core import Exposure, GaussianPsf, MaskPlanes, MoffatPsf, Psf
from ..calibrate.measurement import MeasurementConfig, adaptive_moments
from ..forced.flags import pixel_flags
from ..forced.stamps import PsfStampRenderer, extract_stamps, inside_image

#: Offset (px) of the central differences of the local WCS Jacobian.
_JACOBIAN_STEP = 0.5


@dataclasses.dataclass(frozen=True)
class SkyPositions:
    """Sky coordinates of ``n`` pixel positions (all ``(n,)`` float64).

    Attributes
    ----------
    ra, dec : numpy.ndarray
        ICRS degrees.
    ra_err, dec_err : numpy.ndarray
        Degrees on the sky: ``ra_err`` is the error of ``RA cos(Dec)``, as the APDB defines it.
    ra_dec_cov : numpy.ndarray
        Covariance of ``RA cos(Dec)`` and ``Dec``, deg^2.
    pixel_scale : numpy.ndarray
        Local pixel scale, arcsec per pixel (square root of the Jacobian's determinant).
    """

    ra: np.ndarray
    dec: np.ndarray
    ra_err: np.ndarray
    dec_err: np.ndarray
    ra_dec_cov: np.ndarray
    pixel_scale: np.ndarray


def sky_positions(
    wcs: WCS, x: np.ndarray, y: np.ndarray, x_err: np.ndarray, y_err: np.ndarray
) -> SkyPositions:
    """Pixel positions and their (uncorrelated) errors through the WCS.

    The errors are propagated with the local Jacobian of ``(RA cos Dec, Dec)`` with respect to
    ``(x, y)``, from central differences of ``wcs.all_pix2world`` (SIP distortion included).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    h = _JACOBIAN_STEP
    ra, dec = wcs.all_pix2world(x, y, 0)
    xs = np.concatenate([x + h, x - h, x, x])
    ys = np.concatenate([y, y, y + h, y - h])
    ra_s, dec_s = wcs.all_pix2world(xs, ys, 0)
    ra_s, dec_s = ra_s.reshape(4, -1), dec_s.reshape(4, -1)
    cos_dec = np.cos(np.radians(dec))
    # RA differences wrap at 0/360 degrees.
    dra_dx = (np.mod(ra_s[0] - ra_s[1] + 180.0, 360.0) - 180.0) * cos_dec / (2 * h)
    dra_dy = (np.mod(ra_s[2] - ra_s[3] + 180.0, 360.0) - 180.0) * cos_dec / (2 * h)
    ddec_dx = (dec_s[0] - dec_s[1]) / (2 * h)
    ddec_dy = (dec_s[2] - dec_s[3]) / (2 * h)
    vx, vy = np.square(x_err), np.square(y_err)
    var_ra = dra_dx**2 * vx + dra_dy**2 * vy
    var_dec = ddec_dx**2 * vx + ddec_dy**2 * vy
    cov = dra_dx * ddec_dx * vx + dra_dy * ddec_dy * vy
    scale = np.sqrt(np.abs(dra_dx * ddec_dy - dra_dy * ddec_dx)) * 3600.0
    return SkyPositions(
        ra=np.mod(ra, 360.0),
        dec=dec,
        ra_err=np.sqrt(var_ra),
        dec_err=np.sqrt(var_dec),
        ra_dec_cov=cov,
        pixel_scale=scale,
    )


def psf_moments(
    psf: Psf, x: np.ndarray, y: np.ndarray, config: MeasurementConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive second moments (px^2) of the PSF model at each position.

    The PSF images are laid side by side in one noise-free strip and measured with
    calibration's :func:`~apflow.tasks.calibrate.measurement.adaptive_moments`, the measurement
    of the sources' own moments, so the two are comparable. A position-independent model is
    measured once.

    Returns
    -------
    ixx, iyy, ixy : numpy.ndarray
        ``(n,)`` float64, NaN where the moments did not converge.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.size
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    constant = isinstance(psf, (GaussianPsf, MoffatPsf))
    px, py = (x[:1], y[:1]) if constant else (x, y)
    sigma0 = np.array([psf.sigma_at(float(a), float(b)) for a, b in zip(px, py, strict=True)])
    # The same stamp half-size adaptive_moments uses, so neighbouring cells never overlap.
    half = int(np.ceil(5.0 * max(float(sigma0.max()), 1.0)))
    size = 2 * half + 1
    # Centred kernels: moments do not depend on the sub-pixel phase.
    stamps = PsfStampRenderer(psf, half, px, py)(np.rint(px), np.rint(py))
    strip = stamps.transpose(1, 0, 2).reshape(size, px.size * size)
    mosaic = Exposure(image=strip, variance=np.ones(strip.shape, np.float32))
    centres = np.arange(px.size) * size + half
    moments = adaptive_moments(
        mosaic, centres.astype(float), np.full(px.size, half, float), sigma0, config
    )
    ixx, iyy, ixy = moments["ixx"], moments["iyy"], moments["ixy"]
    if constant:
        return np.full(n, ixx[0]), np.full(n, iyy[0]), np.full(n, ixy[0])
    return ixx, iyy, ixy


def footprint_pixel_flags(
    mask: np.ndarray,
    finite: np.ndarray,
    footprints: np.ndarray,
    parent: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    half: int,
) -> dict[str, np.ndarray]:
    """Rubin's ``base_PixelFlags`` over each source's footprint and its central 3x3 pixels.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(height, width)`` int32 mask (with the detection's ``EDGE`` border).
    finite : numpy.ndarray
        ``(height, width)`` bool: image and variance finite (non-finite pixels count as NO_DATA).
    footprints : numpy.ndarray
        ``(height, width)`` int labels of the merged footprints.
    parent : numpy.ndarray
        ``(n,)`` footprint label of each source.
    x, y : numpy.ndarray
        ``(n,)`` centroids (px).
    half : int
        Half-size of the stamp inside which the footprint is examined.

    Returns
    -------
    dict of numpy.ndarray
        ``(n,)`` bool for the flags of :data:`apflow.tasks.forced.flags.PIXEL_FLAG_PLANES` and
        their ``Center`` variants, plus ``offimage`` (centroid off the image).
    """
    height, width = mask.shape
    xi = np.clip(np.rint(x), -half - 1, width + half).astype(np.int64)
    yi = np.clip(np.rint(y), -half - 1, height + half).astype(np.int64)
    mask_st = extract_stamps(mask, xi, yi, half, 0)
    finite_st = extract_stamps(finite, xi, yi, half, False)
    inside = inside_image(xi, yi, half, mask.shape)
    region = extract_stamps(footprints, xi, yi, half, 0) == parent[:, None, None]
    flags = pixel_flags(mask_st, inside, finite_st, region)
    offimage = (x < -0.5) | (x >= width - 0.5) | (y < -0.5) | (y >= height - 0.5)
    flags["offimage"] = offimage
    flags["edge"] = flags["edge"] | offimage
    return flags


def center_all_flags(
    mask: np.ndarray, x: np.ndarray, y: np.ndarray, planes: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Rubin's ``*CenterAll`` pixel flags: every pixel of the central 3x3 carries the plane.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(height, width)`` int32 mask.
    x, y : numpy.ndarray
        ``(n,)`` centroids (px); the 3x3 box is centred on the nearest pixel, and its pixels
        off the image count as carrying every plane (nothing was measured there).
    planes : tuple of str
        Mask plane names.

    Returns
    -------
    dict of numpy.ndarray
        ``{plane: (n,) bool}`` in the order of ``planes``.
    """
    height, width = mask.shape
    xi = np.clip(np.rint(np.nan_to_num(x, nan=-2.0)), -2, width + 1).astype(np.int64)
    yi = np.clip(np.rint(np.nan_to_num(y, nan=-2.0)), -2, height + 1).astype(np.int64)
    centre = extract_stamps(mask, xi, yi, 1, -1)
    return {plane: np.all((centre & MaskPlanes.bits(plane)) != 0, axis=(1, 2)) for plane in planes}


def footprint_boxes(bboxes: list[tuple[slice, slice]], parent: np.ndarray) -> np.ndarray:
    """``(n, 4)`` float64 ``[x_min, x_max, y_min, y_max]`` (first and last pixel) of each parent."""
    if parent.size == 0:
        return np.zeros((0, 4))
    table = np.array(
        [[b[1].start, b[1].stop - 1, b[0].start, b[0].stop - 1] for b in bboxes], dtype=np.float64
    )
    return table[parent - 1]


def bbox_sizes(boxes: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rubin's DiaSource ``bboxSize``: side of a square around the centroid holding the footprint.

    ``ceil(2 max|footprint bbox edge - centroid|)``, capped at twice the larger side of the
    footprint's bounding box (edges are the first and last pixel indices, as afw's ``Box2I``).

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(n, 4)`` footprint boxes of :func:`footprint_boxes`.
    x, y : numpy.ndarray
        ``(n,)`` centroids (px).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int32.
    """
    if x.size == 0:
        return np.zeros(0, np.int32)
    edges = np.stack([boxes[:, 0] - x, boxes[:, 1] - x, boxes[:, 2] - y, boxes[:, 3] - y], axis=1)
    size = np.ceil(2.0 * np.max(np.abs(edges), axis=1))
    cap = 2.0 * np.maximum(boxes[:, 1] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 2] + 1)
    return np.minimum(size, cap).astype(np.int32)
