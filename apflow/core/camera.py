"""Camera geometry: detectors, their placement in the focal plane, and the built-in cameras.

Focal-plane coordinates are millimetres from the optical axis. A detector is an affine map
from its pixel coordinates to the focal plane: pixels are scaled by the pixel size, rotated by
the detector's yaw about its centre and offset to the detector's centre position. The camera
also carries a radial optical distortion (``r_true = r (1 + k r^2)`` in mm) that the simulator
applies and the astrometric fit must recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detector:
    """One CCD of a camera.

    Parameters
    ----------
    id : int
        Detector number, unique in the camera.
    name : str
        Human-readable name, e.g. ``"R22_S11"``.
    width, height : int
        Imaging-area size in pixels (x, y).
    pixel_size : float
        Pixel pitch in mm.
    center_mm : tuple of float
        Focal-plane position (mm) of the detector's central point ``((width-1)/2, (height-1)/2)``.
    yaw_deg : float
        Rotation of the pixel axes relative to the focal-plane axes, degrees counter-clockwise.
    physical_type : str
        Sensor type, e.g. ``"e2v"``, ``"ITL"``.
    """

    id: int
    name: str
    width: int
    height: int
    pixel_size: float
    center_mm: tuple[float, float]
    yaw_deg: float = 0.0
    physical_type: str = "generic"

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(height, width)`` of the detector's images."""
        return (self.height, self.width)

    @property
    def center_pixel(self) -> tuple[float, float]:
        """Pixel coordinates of the detector centre."""
        return ((self.width - 1) / 2.0, (self.height - 1) / 2.0)

    def _rotation(self) -> np.ndarray:
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        return np.array([[c, -s], [s, c]])

    def pixel_to_focal_plane(
        self, x: np.ndarray | float, y: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel coordinates to focal-plane mm.

        Parameters
        ----------
        x, y : array_like
            Pixel coordinates (0-based, pixel centres at integers).

        Returns
        -------
        (fx, fy) : tuple of numpy.ndarray
            Focal-plane coordinates in mm.
        """
        cx, cy = self.center_pixel
        dx = (np.asarray(x, dtype=float) - cx) * self.pixel_size
        dy = (np.asarray(y, dtype=float) - cy) * self.pixel_size
        rot = self._rotation()
        fx = self.center_mm[0] + rot[0, 0] * dx + rot[0, 1] * dy
        fy = self.center_mm[1] + rot[1, 0] * dx + rot[1, 1] * dy
        return fx, fy

    def focal_plane_to_pixel(
        self, fx: np.ndarray | float, fy: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`pixel_to_focal_plane`."""
        dx = np.asarray(fx, dtype=float) - self.center_mm[0]
        dy = np.asarray(fy, dtype=float) - self.center_mm[1]
        rot = self._rotation()
        # inverse rotation is the transpose
        px = (rot[0, 0] * dx + rot[1, 0] * dy) / self.pixel_size
        py = (rot[0, 1] * dx + rot[1, 1] * dy) / self.pixel_size
        cx, cy = self.center_pixel
        return px + cx, py + cy

    def corners_focal_plane(self) -> np.ndarray:
        """``(4, 2)`` focal-plane mm of the outer pixel-edge corners, counter-clockwise."""
        x = np.array([-0.5, self.width - 0.5, self.width - 0.5, -0.5])
        y = np.array([-0.5, -0.5, self.height - 0.5, self.height - 0.5])
        fx, fy = self.pixel_to_focal_plane(x, y)
        return np.column_stack([fx, fy])

    def contains_pixel(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """True where (x, y) falls on the imaging area."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        return (x >= -0.5) & (x < self.width - 0.5) & (y >= -0.5) & (y < self.height - 0.5)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "id": self.id,
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "pixel_size": self.pixel_size,
            "center_mm": list(self.center_mm),
            "yaw_deg": self.yaw_deg,
            "physical_type": self.physical_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detector:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            width=int(data["width"]),
            height=int(data["height"]),
            pixel_size=float(data["pixel_size"]),
            center_mm=(float(data["center_mm"][0]), float(data["center_mm"][1])),
            yaw_deg=float(data.get("yaw_deg", 0.0)),
            physical_type=str(data.get("physical_type", "generic")),
        )


@dataclass(frozen=True)
class Camera:
    """A set of detectors in a focal plane.

    Parameters
    ----------
    name : str
        Camera name (``"mini"``, ``"lsstcam"``).
    detectors : tuple of Detector
        The science detectors.
    plate_scale : float
        Arcseconds per mm at the optical axis.
    distortion_k : float
        Radial distortion coefficient in mm^-2: a point at focal-plane radius ``r`` (mm) sees the
        sky at field radius ``r (1 + k r^2) * plate_scale``.
    focal_plane_bin_mm : float
        Default superpixel size (mm) of focal-plane background models for this camera.
    """

    name: str
    detectors: tuple[Detector, ...]
    plate_scale: float
    distortion_k: float = 0.0
    focal_plane_bin_mm: float = 10.24
    _by_id: dict[int, Detector] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [d.id for d in self.detectors]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera {self.name!r}: duplicate detector ids")
        self._by_id.update({d.id: d for d in self.detectors})

    def __len__(self) -> int:
        return len(self.detectors)

    def __iter__(self):
        return iter(self.detectors)

    def __getitem__(self, detector_id: int) -> Detector:
        try:
            return self._by_id[int(detector_id)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(
                f"camera {self.name!r} has no detector {detector_id!r} "
                f"(ids {min(self._by_id)}..{max(self._by_id)})"
            ) from None

    @property
    def detector_ids(self) -> list[int]:
        """Sorted detector ids."""
        return sorted(self._by_id)

    @property
    def pixel_scale(self) -> float:
        """Arcseconds per pixel at the optical axis (for the first detector's pixel size)."""
        return self.plate_scale * self.detectors[0].pixel_size

    def focal_plane_bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` in mm enclosing every detector."""
        corners = np.concatenate([d.corners_focal_plane() for d in self.detectors])
        return (
            float(corners[:, 0].min()),
            float(corners[:, 0].max()),
            float(corners[:, 1].min()),
            float(corners[:, 1].max()),
        )

    def distort(self, fx: np.ndarray | float, fy: np.ndarray | float) -> tuple[np.ndarray, ...]:
        """Apply the radial optical distortion to focal-plane positions (mm -> 'sky' mm)."""
        fx = np.asarray(fx, dtype=float)
        fy = np.asarray(fy, dtype=float)
        factor = 1.0 + self.distortion_k * (fx * fx + fy * fy)
        return fx * factor, fy * factor

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in a repository's ``apflow.json``)."""
        return {
            "name": self.name,
            "plate_scale": self.plate_scale,
            "distortion_k": self.distortion_k,
            "focal_plane_bin_mm": self.focal_plane_bin_mm,
            "detectors": [d.to_dict() for d in self.detectors],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Camera:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            detectors=tuple(Detector.from_dict(d) for d in data["detectors"]),
            plate_scale=float(data["plate_scale"]),
            distortion_k=float(data.get("distortion_k", 0.0)),
            focal_plane_bin_mm=float(data.get("focal_plane_bin_mm", 10.24)),
        )


def _mini_camera() -> Camera:
    # 3x3 CCDs of 1024x1024 10-um pixels with 0.5 mm gaps; the distortion is stronger than a real
    # camera's over so small a field (0.7" at the corners) so that astrometry must fit SIP terms.
    pixel_size, n_pix, gap = 0.010, 1024, 0.5
    pitch = n_pix * pixel_size + gap
    detectors = []
    for row in range(3):
        for col in range(3):
            detectors.append(
                Detector(
                    id=row * 3 + col,
                    name=f"S{row}{col}",
                    width=n_pix,
                    height=n_pix,
                    pixel_size=pixel_size,
                    center_mm=((col - 1) * pitch, (row - 1) * pitch),
                    physical_type="mini",
                )
            )
    return Camera(
        name="mini",
        detectors=tuple(detectors),
        plate_scale=20.0,
        distortion_k=1.0e-5,
        focal_plane_bin_mm=2.56,
    )


# Vendor of each science raft. All nine CCDs of a raft come from one vendor; the ITL rafts sit on
# the outer ring of the focal plane. This follows obs_lsst's LSSTCam layout as far as we know it;
# the exact assignment matters only for which CCD size a detector gets.
_LSSTCAM_ITL_RAFTS = frozenset({"R01", "R02", "R03", "R10", "R20", "R41", "R42", "R43"})
_SENSOR_SIZES = {"e2v": (4096, 4004), "ITL": (4072, 4000)}


def _lsstcam_camera() -> Camera:
    raft_pitch, ccd_pitch, pixel_size = 127.0, 42.25, 0.010
    detectors = []
    det_id = 0
    for raft_row in range(5):
        for raft_col in range(5):
            if raft_row in (0, 4) and raft_col in (0, 4):
                continue  # corner rafts hold guider and wavefront sensors, not science CCDs
            raft = f"R{raft_row}{raft_col}"
            vendor = "ITL" if raft in _LSSTCAM_ITL_RAFTS else "e2v"
            width, height = _SENSOR_SIZES[vendor]
            for s_row in range(3):
                for s_col in range(3):
                    detectors.append(
                        Detector(
                            id=det_id,
                            name=f"{raft}_S{s_row}{s_col}",
                            width=width,
                            height=height,
                            pixel_size=pixel_size,
                            center_mm=(
                                (raft_col - 2) * raft_pitch + (s_col - 1) * ccd_pitch,
                                (raft_row - 2) * raft_pitch + (s_row - 1) * ccd_pitch,
                            ),
                            physical_type=vendor,
                        )
                    )
                    det_id += 1
    return Camera(
        name="lsstcam",
        detectors=tuple(detectors),
        plate_scale=20.0059,
        # about 0.2% (13") at the edge of the 320-mm field
        distortion_k=2.0e-8,
        focal_plane_bin_mm=40.96,
    )


_BUILTIN = {"mini": _mini_camera, "lsstcam": _lsstcam_camera}


def get_camera(name: str) -> Camera:
    """Return a built-in camera by name (``"mini"`` or ``"lsstcam"``).

    Raises
    ------
    ValueError
        If the name is unknown.
    """
    try:
        return _BUILTIN[name]()
    except KeyError:
        raise ValueError(
            f"unknown camera {name!r}; built-in cameras: {', '.join(_BUILTIN)}"
        ) from None
