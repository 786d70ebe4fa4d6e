"""Rubin's APDB schema, read from the ``lsst-sdm-schemas`` package (never retyped here).

Every catalog apflow writes in APDB terms (``dia_source``, ``ss_source``, DiaObject and
DiaForcedSource rows) is a pandas DataFrame whose columns, order and dtypes come from
``lsst/sdm/schemas/apdb.yaml``. :func:`conform` turns a frame a task built (a subset of the
columns, any numeric dtypes) into exactly that shape, so Parquet files, the SQL tables and the
Avro alerts agree on names and units (nJy, degrees, MJD TAI).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import ConfigError

#: Felis datatype -> pandas dtype for a NOT NULL column and for a nullable one.
_DTYPES: dict[str, tuple[str, str]] = {
    "long": ("int64", "Int64"),
    "int": ("int32", "Int32"),
    "short": ("int16", "Int16"),
    "double": ("float64", "float64"),
    "float": ("float32", "float32"),
    "boolean": ("bool", "boolean"),
    "char": ("object", "object"),
    "string": ("object", "object"),
    "text": ("object", "object"),
    "timestamp": ("datetime64[ns]", "datetime64[ns]"),
}


@dataclass(frozen=True)
class ColumnSpec:
    """One APDB column as ``apdb.yaml`` declares it.

    Attributes
    ----------
    name, datatype : str
        Column name and Felis datatype (``long``, ``double``, ``boolean``, ...).
    nullable : bool
        Whether NULL is allowed (Felis default: yes).
    unit : str or None
        ``fits:tunit`` (``nJy``, ``deg``, ``d``, ...), when given.
    description : str
    """

    name: str
    datatype: str
    nullable: bool
    unit: str | None
    description: str

    @property
    def dtype(self) -> str:
        """The pandas dtype apflow uses for this column."""
        strict, nullable = _DTYPES[self.datatype]
        return nullable if self.nullable else strict


@functools.cache
def schema_document() -> dict[str, Any]:
    """The parsed ``apdb.yaml`` shipped by ``lsst-sdm-schemas``."""
    try:
        text = resources.files("lsst.sdm.schemas").joinpath("apdb.yaml").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # pragma: no cover - install problem
        raise ConfigError(
            "the APDB schema needs the lsst-sdm-schemas package (apdb.yaml); "
            "reinstall apflow with its dependencies"
        ) from exc
    return yaml.safe_load(text)


def schema_version() -> str:
    """Version string of the APDB schema in use (e.g. ``"10.0.0"``)."""
    return str(schema_document().get("version", "unknown"))


@functools.cache
def _tables() -> dict[str, dict[str, Any]]:
    return {table["name"]: table for table in schema_document()["tables"]}


def table_names() -> list[str]:
    """Names of the tables in the APDB schema."""
    return list(_tables())


def table_definition(table: str) -> dict[str, Any]:
    """The raw Felis definition of one table (columns, primary key, indexes)."""
    try:
        return _tables()[table]
    except KeyError:
        raise ConfigError(
            f"APDB schema {schema_version()} has no table {table!r}; "
            f"known: {', '.join(table_names())}"
        ) from None


@functools.cache
def table_columns(table: str) -> tuple[ColumnSpec, ...]:
    """The columns of ``table`` in schema order."""
    columns = []
    for col in table_definition(table)["columns"]:
        columns.append(
            ColumnSpec(
                name=col["name"],
                datatype=col["datatype"],
                nullable=bool(col.get("nullable", True)),
                unit=col.get("fits:tunit"),
                description=" ".join(str(col.get("description", "")).split()),
            )
        )
    return tuple(columns)


def column_names(table: str) -> list[str]:
    """Column names of ``table`` in schema order."""
    return [c.name for c in table_columns(table)]


def primary_key(table: str) -> list[str]:
    """Primary-key column names of ``table`` (empty when it has none)."""
    key = table_definition(table).get("primaryKey")
    if key is None:
        return []
    refs = [key] if isinstance(key, str) else list(key)
    return [ref.split(".", 1)[1] for ref in refs]


def empty_frame(table: str) -> pd.DataFrame:
    """A zero-row DataFrame with the columns and dtypes of ``table``."""
    return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in table_columns(table)})


def _missing_value(spec: ColumnSpec, n: int) -> pd.Series:
    if spec.datatype in ("double", "float"):
        return pd.Series(np.full(n, np.nan), dtype=spec.dtype)
    return pd.Series([None] * n, dtype=spec.dtype)


def conform(frame: pd.DataFrame, table: str, *, dataset: str | None = None) -> pd.DataFrame:
    """Return ``frame`` with exactly the columns of ``table``, in schema order and dtypes.

    Missing nullable columns are filled with NaN (floats) or NA; columns the schema does not
    know are an error, so that a misspelt name never silently disappears.

    Parameters
    ----------
    frame : pandas.DataFrame
        What a task computed (any subset of the schema's columns).
    table : str
        APDB table name (``DiaSource``, ``DiaObject``, ``DiaForcedSource``, ``SSSource``, ...).
    dataset : str, optional
        Name used in error messages (e.g. ``"dia_source visit=3 detector=4"``).

    Raises
    ------
    ConfigError
        Unknown columns, a missing NOT NULL column, or NULLs in a NOT NULL column.
    """
    what = dataset or table
    specs = table_columns(table)
    known = {s.name for s in specs}
    unknown = [c for c in frame.columns if c not in known]
    if unknown:
        raise ConfigError(f"{what}: columns not in the APDB {table} schema: {unknown}")
    n = len(frame)
    out: dict[str, pd.Series] = {}
    for spec in specs:
        if spec.name not in frame.columns:
            if not spec.nullable and n > 0:
                raise ConfigError(f"{what}: NOT NULL column {table}.{spec.name} is missing")
            out[spec.name] = _missing_value(spec, n)
            continue
        values = frame[spec.name].reset_index(drop=True)
        if not spec.nullable and values.isna().any():
            raise ConfigError(
                f"{what}: NOT NULL column {table}.{spec.name} has "
                f"{int(values.isna().sum())} missing values"
            )
        if spec.datatype in ("char", "string", "text"):
            out[spec.name] = values.astype(object).where(values.notna(), None)
        else:
            out[spec.name] = values.astype(spec.dtype)
    return pd.DataFrame(out)
