"""The camera's optical distortion as a prior of the astrometric fit.

Rubin's CalibrateImageTask trusts the camera's distortion model and fits only an affine
correction. The same here, when the camera is known: centroids are first moved to "ideal" pixels,
where the camera's radial distortion is removed (pixel -> focal plane -> ``Camera.distort`` ->
back to pixels of the same detector). With CRPIX at the optical axis, ideal pixels map to the sky
through a plain TAN projection (CRVAL and CD: 6 numbers), which a dozen stars determine. The fitted WCS is then re-expressed on the real pixels as
TAN-SIP by fitting it on a dense grid: the radial distortion is cubic in pixels, so the composed
mapping is a cubic SIP up to negligible terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from ....core import Camera, Detector
from .tan_sip import TanSipFit, fit_tan_sip

# Grid (per axis) on which the ideal-pixel WCS is re-fitted in real pixels.
_GRID_POINTS = 25


@dataclass(frozen=True)
class CameraDistortion:
    """Radial distortion of one detector of a camera.

    Parameters
    ----------
    camera : Camera
        Camera with its ``distortion_k``.
    detector : Detector
        The detector whose pixels are transformed.
    """

    camera: Camera
    detector: Detector

    def undistort(self, xy: np.ndarray) -> np.ndarray:
        """Ideal pixel positions ``(n, 2)`` of real pixel positions ``xy`` ``(n, 2)``."""
        fx, fy = self.detector.pixel_to_focal_plane(xy[:, 0], xy[:, 1])
        ideal_x, ideal_y = self.detector.focal_plane_to_pixel(*self.camera.distort(fx, fy))
        return np.column_stack([ideal_x, ideal_y])

    @property
    def optical_axis_crpix(self) -> tuple[float, float]:
        """FITS (1-based) pixel position of the optical axis: the natural CRPIX of ideal pixels,
        about which their mapping to the sky is an exact TAN projection."""
        x, y = self.detector.focal_plane_to_pixel(0.0, 0.0)
        return float(x) + 1.0, float(y) + 1.0

    def to_real_pixels(self, ideal_wcs: WCS, image_shape: tuple[int, int], order: int) -> TanSipFit:
        """TAN-SIP WCS of the real pixels equivalent to ``ideal_wcs`` of the ideal pixels.

        Parameters
        ----------
        ideal_wcs : astropy.wcs.WCS
            WCS fitted to the ideal pixel positions.
        image_shape : tuple of int
            ``(height, width)`` of the detector.
        order : int
            SIP degree of the result (3 represents a radial cubic distortion exactly).

        Returns
        -------
        TanSipFit
            Its ``scatter_arcsec`` is the representation error on the grid.
        """
        height, width = image_shape
        margin_x, margin_y = 0.05 * width, 0.05 * height
        gx, gy = np.meshgrid(
            np.linspace(-0.5 - margin_x, width - 0.5 + margin_x, _GRID_POINTS),
            np.linspace(-0.5 - margin_y, height - 0.5 + margin_y, _GRID_POINTS),
        )
        grid = np.column_stack([gx.ravel(), gy.ravel()])
        ideal = self.undistort(grid)
        ra, dec = ideal_wcs.all_pix2world(ideal[:, 0], ideal[:, 1], 0)
        # Noise-free points: nothing to clip.
        return fit_tan_sip(grid[:, 0], grid[:, 1], ra, dec, image_shape, order, n_sigma_clip=np.inf)
