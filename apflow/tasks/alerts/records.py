"""APDB catalog rows -> Avro alert sub-records, field by field from the alert schema.

The alert schema's sub-records (``diaSource``, ``diaObject``, ``diaForcedSource``, ``ssSource``,
``mpc_orbits``) use the APDB column names, so a frame conformed to the APDB schema maps by name.
The types differ in places (APDB ``short`` vs Avro ``int``, ``char`` vs ``string``, timestamps)
and pandas marks missing values several ways (NaN, ``pd.NA``, None), so each column is converted
once, vectorised, to the Python values fastavro writes:

- integer fields: exact int64 conversion (no float round trip, which would corrupt 64-bit ids);
- float fields: Python floats; NaN in a *nullable* field becomes null (APDB NULL), NaN in a
  required one stays NaN (valid Avro);
- booleans, strings and ``timestamp-micros`` (integer microseconds since 1970) likewise;
- a missing value in a required field, or a required field whose column is absent, raises
  :class:`~apflow.errors.TaskError` naming the field -- never a silent default. A nullable field
  whose column is absent is null. Columns the schema does not know are ignored (the APDB has a
  few bookkeeping columns the alert leaves out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...errors import TaskError
from ...io.alerts import AvroField

_INTEGER = ("long", "int")
_FLOAT = ("double", "float")


class MissingFieldError(TaskError):
    """A required alert field has no value (its column is absent, or a row holds NA)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def frame_records(
    frame: pd.DataFrame, fields: Sequence[AvroField], *, record: str, where: str = ""
) -> list[dict[str, Any]]:
    """Rows of ``frame`` as Avro records with exactly ``fields``, in schema order.

    Parameters
    ----------
    frame : pandas.DataFrame
        APDB-named columns (any index).
    fields : sequence of AvroField
        The sub-record's fields (:meth:`apflow.io.alerts.AlertSchema.record_fields`).
    record : str
        Record name for error messages (``"diaSource"``).
    where : str
        Context for error messages (the data id).

    Raises
    ------
    MissingFieldError
        A required field's column is absent, or holds a missing value (the message names the
        field and the first offending row's index label).
    """
    n = len(frame)
    names = [f.name for f in fields]
    columns = []
    for spec in fields:
        if spec.name not in frame.columns:
            if spec.nullable or n == 0:
                columns.append([None] * n)
                continue
            raise MissingFieldError(
                f"{where}{record}.{spec.name} is required by the alert schema but the "
                f"{record} catalog has no {spec.name!r} column",
                spec.name,
            )
        columns.append(_column_values(frame[spec.name], spec, record, where))
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)] if n else []


def _column_values(series: pd.Series, spec: AvroField, record: str, where: str) -> list[Any]:
    missing = _missing_mask(series)
    kind = spec.avro_type
    if kind in _INTEGER:
        values = _integers(series, missing, spec, record, where)
    elif kind in _FLOAT:
        floats = series.to_numpy(dtype=np.float64, na_value=np.nan)
        # NaN is a float, not a missing value, for a required float field.
        missing = np.isnan(floats) if spec.nullable else np.zeros(len(floats), dtype=bool)
        values = floats.tolist()
    elif kind == "boolean":
        values = [None if m else bool(v) for v, m in zip(series.tolist(), missing, strict=True)]
    elif kind == "string":
        values = [None if m else str(v) for v, m in zip(series.tolist(), missing, strict=True)]
    elif kind == "timestamp-micros":
        values = _timestamps_micros(series, missing)
    elif kind == "bytes":
        values = [None if m else bytes(v) for v, m in zip(series.tolist(), missing, strict=True)]
    else:  # pragma: no cover - the alert schemas use only the types above
        raise TaskError(f"{where}{record}.{spec.name}: unsupported Avro type {kind!r}")
    if missing.any():
        if not spec.nullable:
            first = series.index[int(np.flatnonzero(missing)[0])]
            raise MissingFieldError(
                f"{where}{record}.{spec.name} is required by the alert schema but is missing "
                f"in {int(missing.sum())} row(s) (first at index {first!r})",
                spec.name,
            )
        for i in np.flatnonzero(missing):
            values[i] = None
    return values


def _missing_mask(series: pd.Series) -> np.ndarray:
    # pandas' isna costs ~60 us a call whatever the length; an alert batch converts ~400
    # columns, so the cheap per-dtype tests below matter.
    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind == "f":
            return np.isnan(series.to_numpy())
        if dtype.kind in "iub":
            return np.zeros(len(series), dtype=bool)
        if dtype.kind == "M":
            return np.isnat(series.to_numpy())
        return np.array([_is_missing(v) for v in series.tolist()], dtype=bool).reshape(-1)
    return np.asarray(series.array.isna(), dtype=bool)


def _is_missing(value: Any) -> bool:
    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float) and value != value)
    )


def _integers(
    series: pd.Series, missing: np.ndarray, spec: AvroField, record: str, where: str
) -> list[Any]:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        return series.to_numpy(dtype=np.int64, na_value=0).tolist()
    if pd.api.types.is_float_dtype(dtype):
        floats = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = floats[~missing]
        if np.any(finite != np.round(finite)):
            raise TaskError(f"{where}{record}.{spec.name}: non-integer values for an int field")
        return np.where(missing, 0, floats).astype(np.int64).tolist()
    try:
        return [int(v) if not m else 0 for v, m in zip(series.tolist(), missing, strict=True)]
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{where}{record}.{spec.name}: cannot convert to int: {exc}") from exc


def _timestamps_micros(series: pd.Series, missing: np.ndarray) -> list[Any]:
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.to_numpy(dtype=np.int64, na_value=0).tolist()
    stamps = pd.to_datetime(series, utc=True)
    micros = stamps.to_numpy(dtype="datetime64[us]", na_value=np.datetime64("NaT"))
    return np.where(missing, 0, micros.astype(np.int64)).tolist()
