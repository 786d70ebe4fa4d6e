"""Strict JSON for repository metadata: NaN and infinities survive, numpy scalars are accepted.

Python's ``json`` writes ``NaN`` and ``Infinity`` as bare words, and zarr-python does the same in
``zarr.json`` attributes. Those documents are not JSON (RFC 8259): other Zarr implementations,
``jq`` and browsers reject them. Metadata here is full of NaN (unknown airmass, exposure time), so
non-finite floats are written as a tagged object ``{"__float__": "NaN" | "Infinity" |
"-Infinity"}`` and turned back into floats on reading. Everything apflow writes is then strict
JSON, readable by any tool.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

FLOAT_TAG = "__float__"
_NONFINITE_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` as plain JSON types, with non-finite floats tagged.

    Mappings become dicts (keys must be strings), tuples and lists become lists, numpy scalars
    and 0-d/1-d arrays become Python numbers and lists.

    Raises
    ------
    TypeError
        If something cannot be represented in JSON (the message names the offending type).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {FLOAT_TAG: _nonfinite_name(obj)}
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {key!r}")
            out[key] = to_jsonable(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(item) for item in obj]
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable`: tagged non-finite floats become floats again."""
    if isinstance(obj, dict):
        if len(obj) == 1 and FLOAT_TAG in obj and obj[FLOAT_TAG] in _NONFINITE_NAMES:
            return _NONFINITE_NAMES[obj[FLOAT_TAG]]
        return {key: from_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(item) for item in obj]
    return obj


def dumps(obj: Any) -> bytes:
    """Serialise to strict UTF-8 JSON bytes (``allow_nan=False`` proves nothing slipped through)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, indent=1).encode("utf-8")


def loads(data: bytes | str) -> Any:
    """Parse JSON written by :func:`dumps` (bare ``NaN`` from other writers is tolerated)."""
    return from_jsonable(json.loads(data))
