"""The small binned products of the sky-frame tasks, as named arrays plus JSON attributes.

Partial and merged focal-plane backgrounds, binned residual skies and binned sky frames are all
:class:`apflow.io.ArrayBundle` objects (the ``arrays`` storage class: a Zarr group of named arrays
with JSON attributes). The attribute ``kind`` says which product a bundle is, so a task handed the
wrong dataset fails with a clear message instead of a shape error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import TaskError
from ...io import ArrayBundle

__all__ = ["ArrayBundle", "as_bundle", "visit_attrs"]


def as_bundle(obj: Any, kind: str, arrays: tuple[str, ...]) -> ArrayBundle:
    """Check that ``obj`` is a bundle of the expected kind and holds the named arrays.

    Parameters
    ----------
    obj : ArrayBundle or object with ``arrays``/``attrs``
        What the engine or the caller passed.
    kind : str
        Expected value of ``attrs["kind"]``.
    arrays : tuple of str
        Array names that must be present.

    Returns
    -------
    ArrayBundle

    Raises
    ------
    TaskError
        On another type, another kind, or a missing array.
    """
    if isinstance(obj, ArrayBundle):
        bundle = obj
    elif hasattr(obj, "arrays") and hasattr(obj, "attrs"):
        bundle = ArrayBundle(dict(obj.arrays), dict(obj.attrs))
    else:
        raise TaskError(
            f"expected a {kind} bundle (named arrays + attrs), got {type(obj).__name__}"
        )
    found = bundle.attrs.get("kind")
    if found != kind:
        raise TaskError(f"expected a {kind} bundle, got one of kind {found!r}")
    missing = [name for name in arrays if name not in bundle.arrays]
    if missing:
        raise TaskError(f"{kind} bundle lacks array(s) {', '.join(missing)}")
    return bundle


def visit_attrs(exposure: Any) -> dict[str, Any]:
    """Visit id, band, physical filter and MJD of an exposure, as JSON attributes."""
    info = getattr(exposure, "visit_info", None)
    if info is None:
        return {"visit": None, "band": "", "physical_filter": "", "mjd": None}
    mjd = float(info.mjd)
    return {
        "visit": int(info.visit),
        "band": str(info.band),
        "physical_filter": str(info.physical_filter),
        "mjd": mjd if np.isfinite(mjd) else None,
    }


def jsonable_floats(values: Mapping[Any, float]) -> dict[str, float | None]:
    """``{str(key): float or None}``: NaN becomes None so attributes stay portable JSON."""
    return {str(k): (float(v) if np.isfinite(v) else None) for k, v in values.items()}
