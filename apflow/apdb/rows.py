"""Conversions between conformed DataFrames and SQL rows, keeping the APDB schema's dtypes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from .schema import ColumnSpec, conform, primary_key, table_columns

#: Ids per ``IN (...)`` list: below SQLite's oldest variable limit (999).
CHUNK = 500


def chunks(values: Iterable[int], size: int = CHUNK) -> Iterator[list[int]]:
    """``values`` in lists of at most ``size`` (one ``IN (...)`` query each)."""
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]


def int_ids(ids: Iterable[Any]) -> list[int]:
    """Distinct ids as sorted Python ints (what the DB drivers bind)."""
    return sorted({int(i) for i in np.asarray(list(ids), dtype=np.int64).ravel()})


def conformed(frame: pd.DataFrame, table: str, dataset: str) -> pd.DataFrame:
    """:func:`conform`, skipping the per-column rebuild for a frame that already has the shape."""
    specs = table_columns(table)
    if list(frame.columns) != [s.name for s in specs] or any(
        frame[s.name].dtype != s.dtype for s in specs
    ):
        return conform(frame, table, dataset=dataset)
    for spec in specs:
        if not spec.nullable and frame[spec.name].isna().any():
            return conform(frame, table, dataset=dataset)  # raises, naming the column
    return frame.reset_index(drop=True)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a conformed frame as dicts of Python scalars (NaN and NA become NULL)."""
    if frame.empty:
        return []
    columns = {name: _python_values(frame[name]) for name in frame.columns}
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _python_values(series: pd.Series) -> list[Any]:
    # DB drivers take Python scalars only; this is the hot loop of a write, so stay in numpy.
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        values = series.to_numpy()
        out = values.astype(object)
        out[np.isnan(values)] = None
        return out.tolist()
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return series.to_numpy().tolist()
    missing = series.isna().to_numpy()
    if missing.all():
        return [None] * len(series)
    return series.to_numpy(dtype=object, na_value=None).tolist()


def _column(spec: ColumnSpec, values: list[Any]) -> Any:
    # Built per type: routing ids through float64 (what pandas infers for ints with None) would
    # round 64-bit ids above 2**53.
    if spec.datatype in ("double", "float"):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64).astype(
            spec.dtype
        )
    if spec.datatype in ("long", "int", "short", "boolean"):
        if spec.nullable:
            return pd.array(values, dtype=spec.dtype)
        return np.array(values, dtype=spec.dtype)
    if spec.datatype == "timestamp":
        return pd.to_datetime(pd.Series(values, dtype=object))
    return pd.Series(values, dtype=object)


def frame_from_rows(table: str, rows: list[Any]) -> pd.DataFrame:
    """A frame of ``table``'s columns and schema dtypes from result rows in schema order."""
    specs = table_columns(table)
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in specs]
    data = {spec.name: _column(spec, list(col)) for spec, col in zip(specs, columns, strict=True)}
    return pd.DataFrame(data)


def sort_by_key(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """``frame`` sorted by ``table``'s primary key, with a fresh index."""
    return frame.sort_values(primary_key(table), kind="stable").reset_index(drop=True)
