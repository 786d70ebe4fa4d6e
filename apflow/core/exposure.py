"""Exposure: image, mask and variance planes with their WCS, PSF and calibration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from astropy.time import Time
from astropy.wcs import WCS

from .masks import MaskPlanes
from .photocalib import PhotoCalib
from .psf import Psf


@dataclass(frozen=True)
class VisitInfo:
    """What, when and where a visit observed.

    Parameters
    ----------
    visit : int
        Visit id.
    band : str
        Abstract band (``"g"``, ``"r"``, ...).
    physical_filter : str
        Filter name as the instrument knows it.
    mjd : float
        Exposure midpoint, MJD in TAI.
    exposure_time : float
        Seconds.
    boresight_ra, boresight_dec : float
        Telescope pointing, ICRS degrees.
    rotation_angle : float
        Sky rotation angle of the focal plane, degrees.
    airmass : float
        Airmass at the midpoint.
    """

    visit: int
    band: str = ""
    physical_filter: str = ""
    mjd: float = float("nan")
    exposure_time: float = float("nan")
    boresight_ra: float = float("nan")
    boresight_dec: float = float("nan")
    rotation_angle: float = 0.0
    airmass: float = float("nan")

    @property
    def time(self) -> Time:
        """Midpoint as an astropy ``Time`` (TAI scale)."""
        return Time(self.mjd, format="mjd", scale="tai")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN kept as NaN: JSON writers must allow it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisitInfo:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        return cls(**values)


def _as_2d(name: str, array: Any, dtype: type, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"Exposure.{name} must be 2-D, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"Exposure.{name} has shape {arr.shape}, image has {shape}")
    if arr.dtype != dtype:
        if dtype is np.int32 and not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
            raise ValueError(f"Exposure.mask must be an integer array, got {arr.dtype}")
        arr = arr.astype(dtype)
    return arr


@dataclass(eq=False)
class Exposure:
    """A calibrated or raw CCD image with its mask, variance and metadata.

    Only ``image`` is required, so arrays can be wrapped in one line:
    ``Exposure(image=a, mask=m, variance=v, wcs=w)``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D pixel values, stored as float32 (counts, or nJy once calibrated).
    mask : numpy.ndarray, optional
        int32 bit planes (:class:`MaskPlanes`); zeros by default.
    variance : numpy.ndarray, optional
        float32 per-pixel variance in image units squared; NaN by default (unknown).
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the image (TAN or TAN-SIP), 0-based pixel convention as astropy's
        ``pixel_to_world``.
    psf : Psf, optional
        PSF model.
    photo_calib : PhotoCalib, optional
        nJy per count.
    visit_info : VisitInfo, optional
    detector : int, optional
        Detector id.
    metadata : dict
        JSON-serialisable extra metadata (summary statistics, header cards, provenance).
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    variance: np.ndarray | None = None
    wcs: WCS | None = None
    psf: Psf | None = None
    photo_calib: PhotoCalib | None = None
    visit_info: VisitInfo | None = None
    detector: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = _as_2d("image", self.image, np.float32, None)
        shape = self.image.shape
        if self.mask is None:
            self.mask = np.zeros(shape, dtype=np.int32)
        else:
            self.mask = _as_2d("mask", self.mask, np.int32, shape)
        if self.variance is None:
            self.variance = np.full(shape, np.nan, dtype=np.float32)
        else:
            self.variance = _as_2d("variance", self.variance, np.float32, shape)
        if self.wcs is not None and not isinstance(self.wcs, WCS):
            raise TypeError(
                f"Exposure.wcs must be an astropy.wcs.WCS, got {type(self.wcs).__name__}"
            )
        if self.psf is not None and not isinstance(self.psf, Psf):
            raise TypeError(
                f"Exposure.psf must be an apflow Psf model, got {type(self.psf).__name__}"
            )
        if self.detector is not None:
            self.detector = int(self.detector)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.image.shape  # type: ignore[return-value]

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.image.shape[1])

    def mask_of(self, *planes: str) -> np.ndarray:
        """Boolean array, True where any of the named mask planes is set."""
        return (self.mask & MaskPlanes.bits(*planes)) != 0

    def copy(self) -> Exposure:
        """Deep copy of the pixel planes; WCS, PSF and metadata copied too."""
        return replace(
            self,
            image=self.image.copy(),
            mask=self.mask.copy(),
            variance=self.variance.copy(),
            wcs=self.wcs.deepcopy() if self.wcs is not None else None,
            metadata=dict(self.metadata),
        )

    def subimage(self, x0: int, y0: int, width: int, height: int) -> Exposure:
        """Cut out ``[y0:y0+height, x0:x0+width]`` with a WCS shifted to match.

        The box must lie inside the image; ``metadata["xy0"]`` records the cut-out's origin in the
        parent's pixel coordinates. The PSF model is shared (it is in parent coordinates).
        """
        if x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(
                f"sub-image box x0={x0}, y0={y0}, {width}x{height} is not inside "
                f"the {self.width}x{self.height} image"
            )
        sl = (slice(y0, y0 + height), slice(x0, x0 + width))
        wcs = None
        if self.wcs is not None:
            wcs = self.wcs.slice((sl[0], sl[1]))
        parent_xy0 = self.metadata.get("xy0", [0, 0])
        meta = dict(self.metadata)
        meta["xy0"] = [int(parent_xy0[0]) + x0, int(parent_xy0[1]) + y0]
        return replace(
            self,
            image=self.image[sl].copy(),
            mask=self.mask[sl].copy(),
            variance=self.variance[sl].copy(),
            wcs=wcs,
            metadata=meta,
        )
