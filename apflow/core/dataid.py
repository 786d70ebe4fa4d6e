"""Data ids: the keys (``visit``, ``detector``, ``tract``...) that name one dataset.

Data id values become path components in a repository, so they are validated strictly:
integers, or names matching ``[A-Za-z0-9_.-]+`` that are not ``.`` or ``..``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidDataIdError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DataId = dict[str, int | str]

#: Dimension -> the dimensions its value determines (as in Rubin's Butler: a visit has one band
#: and one physical filter). The engine plans with it (:mod:`apflow.engine.implied`); a
#: repository read may leave the implied ones out when the others name a single dataset.
IMPLIED_DIMENSIONS: dict[str, tuple[str, ...]] = {"visit": ("band", "physical_filter")}
#: Every dimension some other implies.
IMPLIED_KEYS: frozenset[str] = frozenset(d for dims in IMPLIED_DIMENSIONS.values() for d in dims)


def validate_value(key: str, value: Any) -> int | str:
    """Return a normalised data id value or raise :class:`InvalidDataIdError`.

    Integers (including numpy integers and integral strings such as ``"12"`` for keys that are
    conventionally integers) are returned as ``int``; names are returned unchanged.
    """
    if isinstance(value, bool):
        raise InvalidDataIdError(f"data id {key}={value!r}: booleans are not allowed")
    if isinstance(value, int) or (
        hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"
    ):
        return int(value)
    if isinstance(value, str):
        if not _NAME.match(value) or value in (".", ".."):
            raise InvalidDataIdError(
                f"data id {key}={value!r}: values must be integers or names of letters, digits, "
                "'_', '.', '-' (no path separators)"
            )
        return value
    raise InvalidDataIdError(
        f"data id {key}={value!r}: type {type(value).__name__} is not allowed (int or str only)"
    )


def normalize_data_id(data_id: Mapping[str, Any]) -> DataId:
    """Validate every key and value of a data id; return a new dict with sorted keys."""
    out: DataId = {}
    for key in sorted(data_id):
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidDataIdError(f"data id key {key!r} is not a valid identifier")
        out[key] = validate_value(key, data_id[key])
    return out


def parse_data_id_value(text: str) -> int | str:
    """Parse a command-line value: integers become ``int``, anything else stays a name."""
    try:
        return int(text)
    except ValueError:
        return validate_value("value", text)
