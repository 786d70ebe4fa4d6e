"""Alert cutouts: square stamps of the difference, science and template images around DiaSources.

Follows Rubin's ``PackageAlertsTask.createCcdDataCutout`` with its bugs fixed:

- Size ``clamp(bboxSize, min_size, max_size)`` pixels (Rubin: 30 and 102), square, with the
  pixel holding the source at index ``size // 2``.
- Pixels calibrated to nJy with the exposure's ``photo_calib`` (variance by its square).
- A cutout running off the image is padded with NaN (image and variance) and the ``NO_DATA``
  mask bit, and flagged ``partial``; a source whose position is off the image has no cutout
  (``None``, with a warning) -- Rubin's code then used an undefined variable.
- A local linear TAN WCS: ``CRVAL`` = the DiaSource (ra, dec), ``CRPIX`` = that position in the
  cutout (1-based), ``CD`` = the Jacobian of the exposure's WCS there. The Jacobian is taken by
  central differences of the WCS projected on the tangent plane at the source in arcseconds
  (Rubin's ``makeLocalTransformMatrix`` trick against precision loss), for all sources of an
  exposure in one vectorised call.
- The mask plane is really written (Rubin passes it to ``CCDData`` as ``flags``, which astropy
  does not write), as 16-bit integers with ``MPLANE<bit>`` = plane-name cards.

FITS layout (readable by ``astropy.nddata.CCDData.read``): primary HDU = image (``BUNIT='nJy'``,
WCS, ``ROTPA``, ``VISIT``, ``DETECTOR``, ``CUTMINX``/``CUTMINY`` = the cutout's origin in the
parent's 0-based pixels, ``CUTTYPE``, ``PARTIAL``, ``DIASRCID``), ``UNCERT`` = variance
(``UTYPE='VarianceUncertainty'``), ``MASK`` = bit planes as int16 (int32 if a bit above 14 is
set; ``MPLANE<bit>`` = plane name), ``PSFIMAGE`` = the PSF model at the source (float32, sums
to 1).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from ...core import Exposure, MaskPlanes
from ...core.psf import GaussianPsf, MoffatPsf, Psf
from .fits_bytes import Card, image_hdu

_log = logging.getLogger(__name__)

#: Pixel step of the central differences giving the local WCS Jacobian.
_JACOBIAN_STEP = 1.0
_ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0
_NO_DATA = int(MaskPlanes.NO_DATA)


@dataclass
class Cutout:
    """One calibrated cutout with its local WCS.

    Attributes
    ----------
    image, variance : numpy.ndarray
        ``(size, size)`` float32, nJy and nJy^2; NaN outside the parent image.
    mask : numpy.ndarray
        ``(size, size)`` int32 :class:`~apflow.core.MaskPlanes` bits; ``NO_DATA`` off the image.
    psf : numpy.ndarray or None
        PSF model image at the source (float32, sums to 1), None without a PSF model.
    origin : tuple of int
        ``(x0, y0)``: parent pixel (0-based) of cutout pixel ``[0, 0]``.
    crpix : tuple of float
        The source's position in the cutout, 1-based FITS pixels.
    crval : tuple of float
        Source ra, dec in degrees.
    cd : numpy.ndarray or None
        ``(2, 2)`` local WCS matrix in degrees per pixel; None when the exposure has no WCS.
    partial : bool
        The cutout runs off the parent image (padded).
    kind : str
        ``"difference"``, ``"science"`` or ``"template"``.
    rotation_angle : float
        Sky rotation angle of the visit (deg), written as ``ROTPA``.
    visit, detector, dia_source_id : int or None
        Provenance cards.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray | None
    origin: tuple[int, int]
    crpix: tuple[float, float]
    crval: tuple[float, float]
    cd: np.ndarray | None
    partial: bool
    kind: str = "difference"
    rotation_angle: float | None = None
    visit: int | None = None
    detector: int | None = None
    dia_source_id: int | None = None

    @property
    def size(self) -> int:
        """Side in pixels."""
        return int(self.image.shape[0])

    def header_cards(self) -> list[Card]:
        """Primary-header cards beyond the structural ones: unit, WCS and provenance."""
        cards: list[Card] = [("BUNIT", "nJy", "pixel unit")]
        if self.cd is not None:
            cards += [
                ("WCSAXES", 2, "local linear WCS at the DiaSource"),
                ("CTYPE1", "RA---TAN", ""),
                ("CTYPE2", "DEC--TAN", ""),
                ("CUNIT1", "deg", ""),
                ("CUNIT2", "deg", ""),
                ("CRPIX1", float(self.crpix[0]), "source x in the cutout (1-based)"),
                ("CRPIX2", float(self.crpix[1]), "source y in the cutout (1-based)"),
                ("CRVAL1", float(self.crval[0]), "DiaSource ra (deg)"),
                ("CRVAL2", float(self.crval[1]), "DiaSource dec (deg)"),
                ("CD1_1", float(self.cd[0, 0]), ""),
                ("CD1_2", float(self.cd[0, 1]), ""),
                ("CD2_1", float(self.cd[1, 0]), ""),
                ("CD2_2", float(self.cd[1, 1]), ""),
                ("RADESYS", "ICRS", ""),
            ]
        rot = self.rotation_angle
        cards += [
            ("ROTPA", float(rot) if rot is not None and np.isfinite(rot) else None, "deg"),
            ("VISIT", self.visit, ""),
            ("DETECTOR", self.detector, ""),
            ("DIASRCID", self.dia_source_id, "diaSourceId"),
            ("CUTTYPE", self.kind, "difference, science or template"),
            ("CUTMINX", int(self.origin[0]), "parent x (0-based) of cutout pixel 0"),
            ("CUTMINY", int(self.origin[1]), "parent y (0-based) of cutout pixel 0"),
            ("PARTIAL", bool(self.partial), "cutout runs off the image (NO_DATA)"),
        ]
        return cards

    def to_fits(self) -> bytes:
        """Serialise as FITS bytes (see the module docstring for the layout)."""
        parts = [
            image_hdu(self.image, self.header_cards(), primary=True),
            image_hdu(self.variance, _UNCERT_CARDS, primary=False, constant=True),
            image_hdu(_compact_mask(self.mask), _MASK_CARDS, primary=False, constant=True),
        ]
        if self.psf is not None:
            parts.append(image_hdu(self.psf, _PSF_CARDS, primary=False, constant=True))
        return b"".join(parts)

    def to_fits_astropy(self) -> bytes:
        """Serialise with ``CCDData(...).write`` -- Rubin's method, the benchmark baseline.

        Gives the same planes, WCS and cards as :meth:`to_fits` (the mask is passed as
        ``mask``, so astropy writes it, as uint8), about 30x slower.
        """
        from astropy.io import fits
        from astropy.nddata import CCDData, VarianceUncertainty

        header = fits.Header()
        for key, value, comment in self.header_cards():
            if value is not None:
                header[key] = (value, comment)
        ccd = CCDData(
            self.image,
            uncertainty=VarianceUncertainty(self.variance),
            mask=self.mask,
            psf=self.psf,
            meta=header,
            unit="nJy",
        )
        buffer = io.BytesIO()
        ccd.write(buffer, format="fits")
        return buffer.getvalue()


_UNCERT_CARDS: list[Card] = [
    ("EXTNAME", "UNCERT", ""),
    ("UTYPE", "VarianceUncertainty", "astropy uncertainty class"),
]
_PSF_CARDS: list[Card] = [("EXTNAME", "PSFIMAGE", "")]
# Plane names keyed by bit number: afw's "MP_<name>" keywords do not fit 8 characters for
# names such as DETECTED_NEGATIVE.
_MASK_CARDS: list[Card] = [("EXTNAME", "MASK", "")] + [
    (f"MPLANE{int(plane.value).bit_length() - 1}", plane.name, "mask plane of this bit")
    for plane in MaskPlanes
]


def _compact_mask(mask: np.ndarray) -> np.ndarray:
    # apflow's planes use bits 0-8: 16-bit integers (the DPDD's minimum) halve the mask's bytes.
    if mask.size and (int(mask.max()) >= 1 << 15 or int(mask.min()) < 0):
        return mask
    return mask.astype(np.int16)


def cutout_sizes(bbox_size: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """Square cutout sides: ``clamp(bboxSize, min_size, max_size)`` (NaN/missing -> min_size)."""
    sizes = np.asarray(bbox_size, dtype=float)
    sizes = np.where(np.isfinite(sizes), sizes, min_size)
    return np.clip(np.ceil(sizes), min_size, max_size).astype(int)


def source_pixels(
    exposure: Exposure, ra: np.ndarray, dec: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions (0-based) of sources on ``exposure``: through its WCS when it has one
    (a template need not share the science pixel grid), else the DiaSource ``x``, ``y``."""
    if exposure.wcs is None or len(ra) == 0:
        return np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    # quiet: a position far off a distorted image need not converge; it is dropped anyway.
    px, py = exposure.wcs.all_world2pix(np.asarray(ra), np.asarray(dec), 0, quiet=True)
    return np.asarray(px, dtype=float), np.asarray(py, dtype=float)


def local_cd_matrices(
    exposure: Exposure, px: np.ndarray, py: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> np.ndarray | None:
    """Local linear WCS matrices (deg/pixel) of ``exposure.wcs`` at each source.

    The WCS is evaluated at ``(px +- h, py)`` and ``(px, py +- h)`` in one call, each point is
    projected gnomonically onto the tangent plane at the source (ra, dec) in arcseconds, and
    the central differences give the Jacobian ``d(xi, eta) / d(x, y)``; it is converted to
    degrees last so no precision is lost on small numbers.

    Returns
    -------
    numpy.ndarray or None
        ``(n, 2, 2)`` with ``cd[k] = [[dxi/dx, dxi/dy], [deta/dx, deta/dy]]``; None without a WCS.
    """
    if exposure.wcs is None:
        return None
    n = len(px)
    h = _JACOBIAN_STEP
    offsets = np.array([[h, 0.0], [-h, 0.0], [0.0, h], [0.0, -h]])
    grid_x = (px[:, None] + offsets[None, :, 0]).ravel()
    grid_y = (py[:, None] + offsets[None, :, 1]).ravel()
    sky_ra, sky_dec = exposure.wcs.all_pix2world(grid_x, grid_y, 0)
    xi, eta = _gnomonic_arcsec(
        np.repeat(ra, 4), np.repeat(dec, 4), np.asarray(sky_ra), np.asarray(sky_dec)
    )
    xi = xi.reshape(n, 4)
    eta = eta.reshape(n, 4)
    cd = np.empty((n, 2, 2))
    cd[:, 0, 0] = (xi[:, 0] - xi[:, 1]) / (2 * h)
    cd[:, 0, 1] = (xi[:, 2] - xi[:, 3]) / (2 * h)
    cd[:, 1, 0] = (eta[:, 0] - eta[:, 1]) / (2 * h)
    cd[:, 1, 1] = (eta[:, 2] - eta[:, 3]) / (2 * h)
    return cd / 3600.0


def _gnomonic_arcsec(
    ra0: np.ndarray, dec0: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Standard coordinates (xi east, eta north) of (ra, dec) on the plane tangent at (ra0, dec0):
    # the TAN projection's intermediate world coordinates. Written out rather than through a
    # per-source astropy WCS so that all sources are projected in one vectorised pass.
    a0, d0, a, d = (np.radians(v) for v in (ra0, dec0, ra, dec))
    cos_d = np.cos(d)
    cos_da = np.cos(a - a0)
    denom = np.sin(d0) * np.sin(d) + np.cos(d0) * cos_d * cos_da
    xi = cos_d * np.sin(a - a0) / denom
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * cos_d * cos_da) / denom
    return xi * _ARCSEC_PER_RAD, eta * _ARCSEC_PER_RAD


def extract_cutout(
    exposure: Exposure,
    px: float,
    py: float,
    size: int,
    *,
    calibration: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], bool] | None:
    """Cut a calibrated ``size`` x ``size`` box around parent pixel (px, py).

    Returns
    -------
    (image, variance, mask, origin, partial) or None
        None when (px, py) is off the image. ``origin`` is the parent (x0, y0) of pixel [0, 0];
        pixels off the image are NaN / NaN / ``NO_DATA`` and ``partial`` is True.
    """
    height, width = exposure.shape
    ix, iy = int(np.floor(px + 0.5)), int(np.floor(py + 0.5))
    if not (0 <= ix < width and 0 <= iy < height):
        return None
    x0, y0 = ix - size // 2, iy - size // 2
    scale = np.float32(calibration)
    var_scale = np.float32(calibration * calibration)
    if x0 >= 0 and y0 >= 0 and x0 + size <= width and y0 + size <= height:
        sl = (slice(y0, y0 + size), slice(x0, x0 + size))
        return (
            exposure.image[sl] * scale,
            exposure.variance[sl] * var_scale,
            exposure.mask[sl].copy(),
            (x0, y0),
            False,
        )
    image = np.full((size, size), np.nan, dtype=np.float32)
    variance = np.full((size, size), np.nan, dtype=np.float32)
    mask = np.full((size, size), _NO_DATA, dtype=np.int32)
    px0, px1 = max(x0, 0), min(x0 + size, width)
    py0, py1 = max(y0, 0), min(y0 + size, height)
    dst = (slice(py0 - y0, py1 - y0), slice(px0 - x0, px1 - x0))
    src = (slice(py0, py1), slice(px0, px1))
    image[dst] = exposure.image[src] * scale
    variance[dst] = exposure.variance[src] * var_scale
    mask[dst] = exposure.mask[src]
    return image, variance, mask, (x0, y0), True


def make_cutouts(
    exposure: Exposure,
    ra: np.ndarray,
    dec: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    sizes: np.ndarray,
    *,
    kind: str,
    dia_source_ids: np.ndarray | None = None,
    rotation_angle: float | None = None,
    visit: int | None = None,
    psf_size: int | None = None,
    psf_cell_size: int = 128,
) -> list[Cutout | None]:
    """Cutouts of one exposure for a batch of DiaSources.

    Parameters
    ----------
    exposure : Exposure
        Difference, science or (warped) template image; pixels in counts or nJy, its
        ``photo_calib`` (if any) converts them to nJy.
    ra, dec : numpy.ndarray
        DiaSource positions (deg): the cutouts' ``CRVAL``.
    x, y : numpy.ndarray
        DiaSource pixel positions, used when the exposure has no WCS.
    sizes : numpy.ndarray
        Cutout sides in pixels (see :func:`cutout_sizes`).
    kind : str
        ``"difference"``, ``"science"`` or ``"template"`` (``CUTTYPE`` card, log messages).
    dia_source_ids : numpy.ndarray, optional
        ``DIASRCID`` cards and warning messages.
    rotation_angle : float, optional
        ``ROTPA`` (deg); default the exposure's ``visit_info.rotation_angle``.
    visit : int, optional
        ``VISIT`` card; default the exposure's visit.
    psf_size : int, optional
        Side of ``PSFIMAGE``; default the PSF model's own size.
    psf_cell_size : int
        A spatially varying PSF is rendered once per cell of this many pixels (at the cell
        centre) and shared by the sources in it; 0 renders it at every source. Default 128.

    Returns
    -------
    list of Cutout or None
        One entry per source; None (and a warning) when the source is off this image.
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    px, py = source_pixels(exposure, ra, dec, x, y)
    cds = local_cd_matrices(exposure, px, py, ra, dec) if len(ra) else None
    calib = exposure.photo_calib.calibration_mean if exposure.photo_calib is not None else 1.0
    info = exposure.visit_info
    if rotation_angle is None and info is not None:
        rotation_angle = info.rotation_angle
    if visit is None and info is not None:
        visit = info.visit
    psf_images = _PsfImages(exposure.psf, psf_size, psf_cell_size)
    out: list[Cutout | None] = []
    for k in range(len(ra)):
        source_id = int(dia_source_ids[k]) if dia_source_ids is not None else None
        box = None
        if np.isfinite(px[k]) and np.isfinite(py[k]):
            box = extract_cutout(exposure, px[k], py[k], int(sizes[k]), calibration=calib)
        if box is None:
            _log.warning(
                "no %s cutout for diaSourceId %s: position (%.1f, %.1f) is off the %dx%d image",
                kind,
                source_id,
                px[k],
                py[k],
                exposure.width,
                exposure.height,
            )
            out.append(None)
            continue
        image, variance, mask, origin, partial = box
        out.append(
            Cutout(
                image=image,
                variance=variance,
                mask=mask,
                psf=psf_images.at(px[k], py[k]),
                origin=origin,
                crpix=(px[k] - origin[0] + 1.0, py[k] - origin[1] + 1.0),
                crval=(float(ra[k]), float(dec[k])),
                cd=cds[k] if cds is not None else None,
                partial=partial,
                kind=kind,
                rotation_angle=rotation_angle,
                visit=visit,
                detector=exposure.detector,
                dia_source_id=source_id,
            )
        )
    return out


class _PsfImages:
    """PSF model images for cutouts, rendered once per cell of the detector.

    Rendering a PSF kernel costs more than the cutout it goes with (milliseconds for a
    quadrature-integrated elliptical profile), while the model changes on scales of hundreds of
    pixels; the ``PSFIMAGE`` is a description for the alert's reader, not a fit template.
    """

    def __init__(self, psf: Psf | None, size: int | None, cell: int) -> None:
        self.psf = psf
        self.size = size
        self.cell = int(cell)
        # A fixed profile is the same everywhere: one render for the whole exposure.
        self.constant = isinstance(psf, (GaussianPsf, MoffatPsf))
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def at(self, x: float, y: float) -> np.ndarray | None:
        if self.psf is None:
            return None
        if self.constant:
            key = (0, 0)
            cx, cy = x, y
        elif self.cell <= 0:
            return self.psf.compute_kernel_image(x, y, self.size).astype(np.float32)
        else:
            key = (int(x // self.cell), int(y // self.cell))
            cx, cy = (key[0] + 0.5) * self.cell, (key[1] + 0.5) * self.cell
        image = self._cache.get(key)
        if image is None:
            image = self.psf.compute_kernel_image(cx, cy, self.size).astype(np.float32)
            self._cache[key] = image
        return image
