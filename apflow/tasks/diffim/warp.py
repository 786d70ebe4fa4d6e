"""Resample template patches onto a science exposure's pixel grid (flux-conserving Lanczos).

Algorithm
---------
1. **Mosaic.** Templates that share one pixel grid (same projection, tangent point and CD
   matrix, CRPIX differing by whole pixels -- the patches of one tract) are pasted into a single
   array covering only the part of the grid that the science pixels need. Pixels that no patch
   covers are NO_DATA. Templates on other grids (another tract) form their own mosaics; the first
   mosaic that covers a science pixel wins. Template pixels are converted to nJy through their
   ``photo_calib`` (a no-op for nJy coadds).
2. **Coordinates.** The science pixel -> sky -> template pixel map is evaluated exactly
   (astropy, TAN-SIP allowed) on a grid of nodes every ``grid_spacing`` pixels and interpolated
   with bicubic splines, evaluated every 8 pixels and interpolated bilinearly in between (error
   well below 1e-3 pixel for TAN-SIP distortions of LSSTCam size; the tests check it). The
   Jacobian determinant ``|d(u, v) / d(x, y)|`` (template pixels per science pixel) comes from
   the spline derivatives.
3. **Resampling.** Each science pixel value is the template's *surface brightness* interpolated
   with a normalised separable Lanczos kernel (order 5 by default, 10x10 taps; Rubin warps with
   order 3, whose passband blurs a sharp template depending on the sub-pixel phase) at the
   mapped position, times the pixel-area ratio (the Jacobian determinant): total flux is
   conserved, point sources keep their sums.
4. **Variance.** The per-pixel variance is ``area^2 sum(w^2) var``, with ``var`` the template
   variance interpolated bilinearly (the variance plane is smooth on the kernel's scale, and
   this avoids a second full kernel sum): exact for independent input pixels of locally
   constant variance. Warping *correlates* neighbouring output pixels: a sub-pixel shift lowers
   the per-pixel variance (``sum(w^2)`` down to ~0.55 at half-pixel phases in both axes) while
   sums over many pixels keep theirs.
   :func:`warp_planes` therefore also returns the "uncorrelated-equivalent" variance
   ``area var``, the variance per pixel that sums over areas larger than the kernel see;
   the difference-imaging task uses it for the matched (smoothed) template.
5. **Mask.** The OR of the template mask over the 2x2 nearest pixels (Rubin's default bilinear
   mask-warping footprint). A science pixel whose Lanczos footprint leaves the mosaic or
   touches a NO_DATA or non-finite template pixel is NO_DATA with NaN image and variance.
6. **PSF.** See :func:`warped_psf`: the template's analytic PSF is transformed by the local
   Jacobian (an exact linear transformation of an elliptical profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.interpolate import RectBivariateSpline

from ...core import Exposure, MaskPlanes, PhotoCalib
from ._warp_numba import lanczos_table, lanczos_warp
from .convolve import or_over_window
from .psf_transform import warped_psf

#: Spacing (output pixels) of the spline-evaluated nodes that the kernel interpolates bilinearly:
#: the map's curvature over 8 pixels is far below 1e-4 pixel.
_FINE_STEP = 8


@dataclass
class WarpedPlanes:
    """Planes of a template resampled onto a science grid.

    Attributes
    ----------
    image : numpy.ndarray
        float32 nJy per science pixel; NaN where NO_DATA.
    variance : numpy.ndarray
        float32 per-pixel variance (nJy^2).
    variance_uncorrelated : numpy.ndarray
        float32 variance per pixel of the template's noise once smoothed over more than the
        Lanczos footprint (see the module docstring, step 4).
    mask : numpy.ndarray
        int32 mask planes.
    coverage : float
        Fraction of output pixels with template data.
    """

    image: np.ndarray
    variance: np.ndarray
    variance_uncorrelated: np.ndarray
    mask: np.ndarray
    coverage: float


@dataclass
class _Mosaic:
    """Templates sharing one pixel grid, pasted into one array."""

    origin: tuple[int, int]  # group-frame pixel of the array's [0, 0]
    image: np.ndarray  # nJy, 0 where bad
    variance: np.ndarray
    mask: np.ndarray
    footprint_bad: np.ndarray  # uint8: a NO_DATA or non-finite pixel under the kernel footprint


def warp_to(
    science_wcs: WCS,
    shape: tuple[int, int],
    templates: list[Exposure],
    grid_spacing: int = 64,
    lanczos_order: int = 5,
) -> Exposure:
    """Resample templates onto the pixel grid of a science exposure.

    Parameters
    ----------
    science_wcs : astropy.wcs.WCS
        WCS of the science exposure (TAN or TAN-SIP, 0-based pixels).
    shape : tuple of int
        ``(height, width)`` of the science exposure.
    templates : list of Exposure
        Template patches (image/variance in nJy or with a ``photo_calib``, WCS, PSF, mask). A
        template may cover the science grid partly or not at all.
    grid_spacing : int
        Spacing in science pixels of the exactly transformed nodes of the coordinate map.
    lanczos_order : int
        Order of the Lanczos resampling kernel (5: 10x10 taps; 3 is Rubin's choice).

    Returns
    -------
    Exposure
        On the science grid: image in nJy (NaN where NO_DATA), per-pixel variance, mask,
        ``wcs = science_wcs``, the warped template PSF (None when no template covers the grid)
        and ``photo_calib`` 1 nJy per unit. ``metadata["template_coverage"]`` is the covered
        fraction of pixels.
    """
    planes = warp_planes(
        science_wcs, shape, templates, grid_spacing=grid_spacing, lanczos_order=lanczos_order
    )
    psf = None
    if planes.coverage > 0:
        psf = warped_psf(science_wcs, shape, templates)
    return Exposure(
        image=planes.image,
        mask=planes.mask,
        variance=planes.variance,
        wcs=science_wcs,
        psf=psf,
        photo_calib=PhotoCalib(1.0),
        metadata={"template_coverage": planes.coverage, "units": "nJy"},
    )


def warp_planes(
    science_wcs: WCS,
    shape: tuple[int, int],
    templates: list[Exposure],
    xy0: tuple[int, int] = (0, 0),
    grid_spacing: int = 64,
    lanczos_order: int = 5,
) -> WarpedPlanes:
    """Image, variance and mask planes of the templates resampled onto a science grid.

    Parameters
    ----------
    science_wcs : astropy.wcs.WCS
        WCS of the science exposure.
    shape : tuple of int
        ``(height, width)`` of the output grid.
    templates : list of Exposure
        Template patches.
    xy0 : tuple of int
        Science pixel of the output's pixel ``[0, 0]`` (negative to warp a margin around the
        science exposure, as the PSF-matching convolution needs).
    grid_spacing : int
        Node spacing of the interpolated coordinate map, science pixels.
    lanczos_order : int
        Order of the Lanczos resampling kernel.

    Returns
    -------
    WarpedPlanes
    """
    height, width = shape
    image = np.full(shape, np.nan, dtype=np.float32)
    variance = np.full(shape, np.nan, dtype=np.float32)
    variance_unc = np.full(shape, np.nan, dtype=np.float32)
    no_data = int(MaskPlanes.NO_DATA)
    mask = np.full(shape, no_data, dtype=np.int32)
    # fine nodes every _FINE_STEP output pixels, interpolated bilinearly by the kernel; they
    # come from bicubic splines through the exactly transformed coarse nodes
    fine_x = xy0[0] + _FINE_STEP * np.arange((width - 1) // _FINE_STEP + 2, dtype=float)
    fine_y = xy0[1] + _FINE_STEP * np.arange((height - 1) // _FINE_STEP + 2, dtype=float)
    nodes_x = _nodes(fine_x[0], fine_x[-1], grid_spacing)
    nodes_y = _nodes(fine_y[0], fine_y[-1], grid_spacing)
    table = lanczos_table(lanczos_order)
    for mosaic_wcs, members in _pixel_grid_groups(templates):
        u_nodes, v_nodes = _map_nodes(science_wcs, mosaic_wcs, nodes_x, nodes_y)
        mosaic = _build_mosaic(mosaic_wcs, members, u_nodes, v_nodes, lanczos_order)
        if mosaic is None:
            continue
        # node positions in the pixel frame of the mosaic array
        u_nodes -= mosaic.origin[0]
        v_nodes -= mosaic.origin[1]
        spline_u = RectBivariateSpline(nodes_y, nodes_x, u_nodes, kx=3, ky=3)
        spline_v = RectBivariateSpline(nodes_y, nodes_x, v_nodes, kx=3, ky=3)
        # RectBivariateSpline's first axis is y: its "dx" is d/dy here
        area = np.abs(
            spline_u(fine_y, fine_x, dx=0, dy=1) * spline_v(fine_y, fine_x, dx=1, dy=0)
            - spline_u(fine_y, fine_x, dx=1, dy=0) * spline_v(fine_y, fine_x, dx=0, dy=1)
        )
        lanczos_warp(
            mosaic.image, mosaic.variance, mosaic.mask, mosaic.footprint_bad, no_data,
            spline_u(fine_y, fine_x), spline_v(fine_y, fine_x), area, _FINE_STEP, table,
            image, variance, variance_unc, mask,
        )  # fmt: skip
    coverage = float(np.mean((mask & no_data) == 0)) if mask.size else 0.0
    return WarpedPlanes(image, variance, variance_unc, mask, coverage)


def _nodes(lo: float, hi: float, spacing: int) -> np.ndarray:
    """At least four evenly spaced node coordinates from ``lo`` to ``hi``, about ``spacing`` apart."""
    n = max(4, int(math.ceil((hi - lo) / max(spacing, 1))) + 1)
    return np.linspace(lo, hi, n)


def _map_nodes(
    science_wcs: WCS, template_wcs: WCS, nodes_x: np.ndarray, nodes_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Template pixel coordinates of the science-pixel nodes, arrays ``(len(y), len(x))``."""
    gx, gy = np.meshgrid(nodes_x, nodes_y)
    ra, dec = science_wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    u, v = template_wcs.all_world2pix(ra, dec, 0)
    return np.asarray(u).reshape(gx.shape), np.asarray(v).reshape(gx.shape)


def _cd_matrix(wcs: WCS) -> np.ndarray:
    return wcs.wcs.cd.copy() if wcs.wcs.has_cd() else wcs.wcs.get_pc() * wcs.wcs.cdelt[:, None]


def _pixel_grid_groups(
    templates: list[Exposure],
) -> list[tuple[WCS, list[tuple[Exposure, int, int]]]]:
    """Group templates sharing a pixel grid: ``[(group wcs, [(template, x_off, y_off)])]``.

    ``(x_off, y_off)`` is the position of the template's pixel ``[0, 0]`` in the group frame
    (the first member's pixel frame).
    """
    groups: list[tuple[WCS, list[tuple[Exposure, int, int]]]] = []
    for template in templates:
        if template.wcs is None:
            raise ValueError("a template exposure has no WCS")
        placed = False
        if template.wcs.sip is None:
            for group_wcs, members in groups:
                offset = _integer_offset(group_wcs, template.wcs)
                if offset is not None:
                    members.append((template, offset[0], offset[1]))
                    placed = True
                    break
        if not placed:
            groups.append((template.wcs, [(template, 0, 0)]))
    return groups


def _integer_offset(group_wcs: WCS, wcs: WCS) -> tuple[int, int] | None:
    """Whole-pixel offset of ``wcs``'s origin in ``group_wcs``'s frame, if they share a grid."""
    if group_wcs.sip is not None or list(group_wcs.wcs.ctype) != list(wcs.wcs.ctype):
        return None
    if not np.allclose(group_wcs.wcs.crval, wcs.wcs.crval, rtol=0, atol=1e-10):
        return None
    if not np.allclose(_cd_matrix(group_wcs), _cd_matrix(wcs), rtol=1e-9, atol=0):
        return None
    shift = np.asarray(group_wcs.wcs.crpix) - np.asarray(wcs.wcs.crpix)
    rounded = np.rint(shift)
    if not np.allclose(shift, rounded, atol=1e-6):
        return None
    return int(rounded[0]), int(rounded[1])


def _build_mosaic(
    group_wcs: WCS,
    members: list[tuple[Exposure, int, int]],
    u_nodes: np.ndarray,
    v_nodes: np.ndarray,
    lanczos_order: int,
) -> _Mosaic | None:
    """Paste the members into the box of the group frame that the science nodes need."""
    finite = np.isfinite(u_nodes) & np.isfinite(v_nodes)
    if not finite.any():
        return None
    # spline overshoot between nodes is sub-pixel; the margin also holds the Lanczos footprint
    margin = lanczos_order + 1
    x_lo = int(math.floor(u_nodes[finite].min())) - margin
    x_hi = int(math.ceil(u_nodes[finite].max())) + margin + 1
    y_lo = int(math.floor(v_nodes[finite].min())) - margin
    y_hi = int(math.ceil(v_nodes[finite].max())) + margin + 1
    shape = (y_hi - y_lo, x_hi - x_lo)
    image = np.zeros(shape, dtype=np.float32)
    variance = np.zeros(shape, dtype=np.float32)
    mask = np.full(shape, int(MaskPlanes.NO_DATA), dtype=np.int32)
    any_overlap = False
    for template, x_off, y_off in members:
        th, tw = template.shape
        # overlap of the template (group frame [x_off, x_off + tw)) with the box
        gx0, gx1 = max(x_lo, x_off), min(x_hi, x_off + tw)
        gy0, gy1 = max(y_lo, y_off), min(y_hi, y_off + th)
        if gx0 >= gx1 or gy0 >= gy1:
            continue
        any_overlap = True
        calib = template.photo_calib.calibration_mean if template.photo_calib else 1.0
        src = (slice(gy0 - y_off, gy1 - y_off), slice(gx0 - x_off, gx1 - x_off))
        dst = (slice(gy0 - y_lo, gy1 - y_lo), slice(gx0 - x_lo, gx1 - x_lo))
        image[dst] = template.image[src] * np.float32(calib)
        variance[dst] = template.variance[src] * np.float32(calib * calib)
        mask[dst] = template.mask[src]
    if not any_overlap:
        return None
    bad = ((mask & int(MaskPlanes.NO_DATA)) != 0) | ~np.isfinite(image)
    image[bad] = 0.0
    # footprint_bad[y, x]: any bad pixel in the taps x taps box whose first pixel is (x, y)
    taps = 2 * lanczos_order
    footprint_bad = bad.view(np.uint8)
    if bad.any():
        footprint_bad = or_over_window(or_over_window(footprint_bad, taps, 0), taps, 1)
    return _Mosaic((x_lo, y_lo), image, variance, mask, footprint_bad)
