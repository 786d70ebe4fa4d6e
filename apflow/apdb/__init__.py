"""The Alert Production Database: Rubin's APDB schema (from ``lsst-sdm-schemas``) and storage.

:class:`Apdb` (in :mod:`.store`, imported on first use so that the schema helpers do not load
SQLAlchemy) is the database; :mod:`.sql` builds its tables from ``apdb.yaml``.
"""

from typing import Any

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
    "Apdb",
    "ApdbError",
    "ColumnSpec",
    "column_names",
    "conform",
    "empty_frame",
    "primary_key",
    "schema_version",
    "table_columns",
    "table_names",
]


def __getattr__(name: str) -> Any:
    if name in ("Apdb", "ApdbError"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'apflow.apdb' has no attribute {name!r}")
