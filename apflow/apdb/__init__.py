"""The Alert Production Database: Rubin's APDB schema (from ``lsst-sdm-schemas``) and storage."""

from .schema import (
    ColumnSpec,
    column_names,
    conform,
    empty_frame,
    primary_key,
    schema_version,
    table_columns,
    table_names,
)

__all__ = [
    "ColumnSpec",
    "column_names",
    "conform",
    "empty_frame",
    "primary_key",
    "schema_version",
    "table_columns",
    "table_names",
]
