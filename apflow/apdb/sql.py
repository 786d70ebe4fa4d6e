"""SQL tables of the APDB, built from the Felis definitions in ``apdb.yaml`` (never retyped).

Every column, primary key and index of the tables apflow writes comes from
:func:`apflow.apdb.schema.table_definition`; this module only maps Felis datatypes to SQLAlchemy
types so that one definition serves SQLite, PostgreSQL and any other SQLAlchemy dialect:

=========  ===========================  =====================================================
Felis      SQLAlchemy                   SQLite / PostgreSQL
=========  ===========================  =====================================================
long       ``BigInteger``               INTEGER / BIGINT
int        ``Integer``                  INTEGER / INTEGER
short      ``SmallInteger``             INTEGER / SMALLINT
double     ``Double``                   REAL (8 bytes) / DOUBLE PRECISION
float      ``REAL``                     REAL (8 bytes) / REAL (4 bytes)
boolean    ``Boolean``                  INTEGER 0/1 / BOOLEAN
char       ``VARCHAR(length)``          TEXT / VARCHAR(n)
string     ``VARCHAR(length)``          TEXT / VARCHAR(n)
text       ``Text``                     TEXT / TEXT
timestamp  ``DateTime``                 TEXT / TIMESTAMP
=========  ===========================  =====================================================

``char`` is stored as VARCHAR, not CHAR: a CHAR(n) column pads values with blanks (PostgreSQL
returns ``"2026 AB   "`` for ``"2026 AB"``), and the value read must be the value written.

Foreign keys of the yaml are not created: they point at tables the APDB of apflow does not hold
(``SSObject``, ``mpc_orbits``), and :class:`~apflow.apdb.store.Apdb` checks the links it relies on
(DiaSource -> DiaObject, SSSource -> DiaSource) itself when it writes.

One index is apflow's own, not the yaml's: ``apflow_DiaObject_dec`` on ``DiaObject.dec``, so that
the ra/dec box of a cone search (:meth:`~apflow.apdb.store.Apdb.dia_objects_in_region`) does not
scan the whole table (Rubin's APDB uses a spatial pixel id column for the same purpose).
"""

from __future__ import annotations

import functools

import sqlalchemy as sa

from ..errors import ConfigError
from .schema import primary_key, table_columns, table_definition

#: The tables apflow creates and writes, in creation order.
APDB_TABLES: tuple[str, ...] = ("metadata", "DiaObject", "DiaSource", "DiaForcedSource", "SSSource")

#: apflow's extra indexes: table -> (index name, columns).
EXTRA_INDEXES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "DiaObject": (("apflow_DiaObject_dec", ("dec",)),),
}


def felis_sql_type(datatype: str, length: int | None = None) -> sa.types.TypeEngine:
    """SQLAlchemy type of a Felis column datatype.

    Raises
    ------
    ConfigError
        On a datatype this mapping does not know (a newer schema than apflow understands).
    """
    simple = {
        "long": sa.BigInteger,
        "int": sa.Integer,
        "short": sa.SmallInteger,
        "double": sa.Double,
        "float": sa.REAL,
        "boolean": sa.Boolean,
        "text": sa.Text,
        "timestamp": sa.DateTime,
    }
    if datatype in simple:
        return simple[datatype]()
    if datatype in ("char", "string"):
        return sa.VARCHAR(length)
    raise ConfigError(f"APDB schema: no SQL type for Felis datatype {datatype!r}")


@functools.cache
def sql_metadata(tables: tuple[str, ...] = APDB_TABLES) -> sa.MetaData:
    """SQLAlchemy tables (columns, primary keys, indexes) of ``tables`` from ``apdb.yaml``."""
    metadata = sa.MetaData()
    for name in tables:
        raw_columns = {c["name"]: c for c in table_definition(name)["columns"]}
        key = set(primary_key(name))
        columns = [
            sa.Column(
                spec.name,
                felis_sql_type(spec.datatype, raw_columns[spec.name].get("length")),
                primary_key=spec.name in key,
                nullable=spec.nullable and spec.name not in key,
                # Ids are given by apflow (packed from the data id), never by the database.
                autoincrement=False,
            )
            for spec in table_columns(name)
        ]
        table = sa.Table(name, metadata, *columns)
        for index in table_definition(name).get("indexes", []):
            cols = [ref.split(".", 1)[1] for ref in index["columns"]]
            sa.Index(index["name"], *(table.c[c] for c in cols))
        for index_name, cols in EXTRA_INDEXES.get(name, ()):
            sa.Index(index_name, *(table.c[c] for c in cols))
    return metadata


def sql_table(name: str) -> sa.Table:
    """The SQLAlchemy table ``name`` (one of :data:`APDB_TABLES`).

    Raises
    ------
    ConfigError
        When the table is not one apflow's APDB holds.
    """
    tables = sql_metadata().tables
    if name not in tables:
        raise ConfigError(f"the APDB has no table {name!r}; tables: {', '.join(APDB_TABLES)}")
    return tables[name]
