"""Astrometric calibration: pattern match to a reference catalog and a TAN-SIP fit.

Modules, in the order the task uses them: :mod:`.selection` (usable sources and overlapping
references), :mod:`.distortion` (the camera's distortion as a prior, when known), :mod:`.pattern`
(coarse rotation/scale/offset search), :mod:`.matching` (one-to-one nearest-neighbour
matching), :mod:`.tan_sip` (least-squares TAN-SIP fit) and :mod:`.task` (:class:`AstrometryTask`).
"""

from .distortion import CameraDistortion
from .matching import match_in_pixels, match_on_sky
from .pattern import PatternSolution, find_pattern_transform
from .tan_sip import TanSipFit, fit_tan_sip
from .task import AstrometryConfig, AstrometryResult, AstrometryTask

__all__ = [
    "AstrometryConfig",
    "AstrometryResult",
    "AstrometryTask",
    "CameraDistortion",
    "PatternSolution",
    "TanSipFit",
    "find_pattern_transform",
    "fit_tan_sip",
    "match_in_pixels",
    "match_on_sky",
]
