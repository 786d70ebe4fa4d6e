"""The object mask of a sky-masked CCD, stored on its own (``sky_object_mask``).

:class:`~apflow.tasks.sky.MaskObjectsTask` adds one thing to a post-ISR exposure: its
``DETECTED`` plane. Writing the whole exposure again (image, variance, mask: ~130 MB raw per
LSSTCam CCD) just to carry that plane made the write the slowest part of the masking, so the
workflows store the detections alone, as an :class:`~apflow.io.ArrayBundle` of kind
``sky_object_mask``:

- array ``detected``: bool ``(height, width)``, True on objects and their grown footprints;
- attrs ``kind``, ``detector``, ``shape``, the visit's (``visit``, ``band``,
  ``physical_filter``, ``mjd``), and ``mask_objects`` (``detected_fraction``, ``noise``: what the
  masked exposure carried in its metadata).

The stages after it read ``post_isr`` plus this bundle and rebuild the masked exposure with
:func:`apply_object_mask`, which gives exactly the exposure the masking would have written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...core import Exposure, MaskPlanes
from ...errors import TaskError
from .bundle import ArrayBundle, as_bundle, visit_attrs

__all__ = ["OBJECT_MASK_KIND", "apply_object_mask", "object_mask_bundle"]

OBJECT_MASK_KIND = "sky_object_mask"


def object_mask_bundle(
    detected: np.ndarray, exposure: Exposure, detected_fraction: float, noise: float
) -> ArrayBundle:
    """The ``sky_object_mask`` bundle of an exposure's detections.

    Parameters
    ----------
    detected : numpy.ndarray of bool
        ``(height, width)`` detections on ``exposure``.
    exposure : Exposure
        The exposure they were found on (for its detector, visit and shape).
    detected_fraction, noise : float
        The masking's record (fraction of pixels detected; per-pixel noise, image units).
    """
    if detected.shape != exposure.shape:
        raise TaskError(
            f"detector {exposure.detector}: object mask of shape {detected.shape} for an "
            f"exposure of shape {exposure.shape}"
        )
    attrs: dict[str, Any] = {
        "kind": OBJECT_MASK_KIND,
        "detector": None if exposure.detector is None else int(exposure.detector),
        "shape": [int(detected.shape[0]), int(detected.shape[1])],
        **visit_attrs(exposure),
        "mask_objects": {"detected_fraction": float(detected_fraction), "noise": float(noise)},
    }
    return ArrayBundle({"detected": np.asarray(detected, dtype=bool)}, attrs)


def apply_object_mask(exposure: Exposure, object_mask: ArrayBundle) -> Exposure:
    """The exposure with its ``DETECTED`` plane replaced by an object mask's detections.

    Image and variance are shared with ``exposure`` (not copied); the mask is a new array and
    ``metadata["mask_objects"]`` records the masking, so the result equals what
    :class:`~apflow.tasks.sky.MaskObjectsTask` returns as its ``exposure``.

    Parameters
    ----------
    exposure : Exposure
        The post-ISR exposure the mask was made from (``post_isr``).
    object_mask : ArrayBundle
        Its ``sky_object_mask``.

    Raises
    ------
    TaskError
        If the bundle is not an object mask, or is of another shape, detector or visit.
    """
    bundle = as_bundle(object_mask, OBJECT_MASK_KIND, ("detected",))
    detected = np.asarray(bundle["detected"], dtype=bool)
    where = f"detector {exposure.detector}"
    if detected.shape != exposure.shape:
        raise TaskError(
            f"{where}: object mask of shape {detected.shape} for an exposure of shape "
            f"{exposure.shape}"
        )
    mask_detector = bundle.attrs.get("detector")
    if None not in (mask_detector, exposure.detector) and mask_detector != exposure.detector:
        raise TaskError(f"{where}: given the object mask of detector {mask_detector}")
    mask_visit = bundle.attrs.get("visit")
    visit = visit_attrs(exposure)["visit"]
    if None not in (mask_visit, visit) and mask_visit != visit:
        raise TaskError(f"{where}: exposure of visit {visit} but object mask of visit {mask_visit}")
    bit = np.int32(MaskPlanes.DETECTED)
    mask = (exposure.mask & ~bit) | (detected.astype(np.int32) * bit)
    metadata = {**exposure.metadata, "mask_objects": dict(bundle.attrs.get("mask_objects", {}))}
    return dataclasses.replace(exposure, mask=mask.astype(np.int32), metadata=metadata)
