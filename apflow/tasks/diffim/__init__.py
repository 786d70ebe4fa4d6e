"""Difference imaging: warp a template onto a calexp, match PSFs (Alard-Lupton) and subtract.

:class:`SubtractImagesTask` is the ``subtract_images`` stage (outputs ``diff_image`` and
``template_warped``); :func:`warp_to` resamples template patches onto any pixel grid and
:func:`warped_psf` gives their PSF there; :func:`difference_background` measures a difference
image's residual background with its sources masked.
"""

from .background import BackgroundSettings, difference_background
from .basis import AlardLuptonBasis, alard_lupton_basis
from .kernel_fit import KernelSolution, spatial_order_for
from .psf_transform import transform_psf_parameters, warped_psf
from .task import SubtractImagesConfig, SubtractImagesResult, SubtractImagesTask
from .warp import WarpedPlanes, warp_planes, warp_to

__all__ = [
    "AlardLuptonBasis",
    "BackgroundSettings",
    "KernelSolution",
    "SubtractImagesConfig",
    "SubtractImagesResult",
    "SubtractImagesTask",
    "WarpedPlanes",
    "alard_lupton_basis",
    "difference_background",
    "spatial_order_for",
    "transform_psf_parameters",
    "warp_planes",
    "warp_to",
    "warped_psf",
]
