"""APDB frame columns -> Avro alert sub-record fields."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastavro.validation import validate

from apflow.apdb.schema import conform
from apflow.io.alerts import load_alert_schema
from apflow.tasks.alerts.records import MissingFieldError, frame_records

SCHEMA = load_alert_schema()
DIA_SOURCE = SCHEMA.record_fields("diaSource")
BIG_ID = (1 << 62) + 12345  # not representable as a float64


def _sources(**overrides) -> pd.DataFrame:
    columns = {
        "diaSourceId": [BIG_ID, 2],
        "visit": [10, 11],
        "detector": [3, 4],
        "midpointMjdTai": [61000.1, 61000.2],
        "ra": [10.0, 10.1],
        "dec": [-5.0, -5.1],
        "x": [100.5, 200.5],
        "y": [50.25, 60.75],
        "psfNdata": [49, 49],
        "trailNdata": [0, 0],
        "dipoleNdata": [0, 0],
        "timeProcessedMjdTai": [61000.3, 61000.3],
        "bboxSize": [20, 40],
        "diaObjectId": pd.array([BIG_ID + 1, None], dtype="Int64"),
        "psfFlux": [1234.5, np.nan],
        "isDipole": pd.array([True, None], dtype="boolean"),
        "band": ["r", None],
    }
    columns.update(overrides)
    return conform(pd.DataFrame(columns), "DiaSource")


def test_conformed_apdb_rows_validate_against_the_schema():
    records = frame_records(_sources(), DIA_SOURCE, record="diaSource")
    assert [list(r) for r in records] == [[f.name for f in DIA_SOURCE]] * 2
    for record in records:
        assert validate(record, _sub_schema("diaSource"), raise_errors=True)


def test_64_bit_ids_survive_exactly():
    first = frame_records(_sources(), DIA_SOURCE, record="diaSource")[0]
    assert first["diaSourceId"] == BIG_ID
    assert first["diaObjectId"] == BIG_ID + 1


def test_missing_values_become_null_in_nullable_fields():
    second = frame_records(_sources(), DIA_SOURCE, record="diaSource")[1]
    assert second["diaObjectId"] is None
    assert second["psfFlux"] is None  # NaN in a nullable float is an APDB NULL
    assert second["isDipole"] is None
    assert second["band"] is None
    assert second["ssObjectId"] is None  # column absent from the frame


def test_types_are_cast_to_the_avro_types():
    first = frame_records(_sources(), DIA_SOURCE, record="diaSource")[0]
    assert type(first["detector"]) is int  # APDB short -> Avro int
    assert type(first["isDipole"]) is bool
    assert type(first["x"]) is float and first["x"] == 100.5
    assert first["band"] == "r"


def test_nan_in_a_required_float_stays_nan():
    # conform refuses NaN in a NOT NULL column, so set it afterwards
    frame = _sources()
    frame.loc[0, "ra"] = np.nan
    record = frame_records(frame, DIA_SOURCE, record="diaSource")[0]
    assert np.isnan(record["ra"])


def test_missing_required_column_is_an_error_naming_the_field():
    frame = _sources().drop(columns=["bboxSize"])
    with pytest.raises(MissingFieldError, match=r"diaSource\.bboxSize") as info:
        frame_records(frame, DIA_SOURCE, record="diaSource", where="alerts [visit=1]: ")
    assert info.value.field == "bboxSize"
    assert "alerts [visit=1]" in str(info.value)


def test_missing_value_in_required_field_is_an_error_naming_the_field():
    frame = _sources().astype({"psfNdata": "Int32"})
    frame.loc[1, "psfNdata"] = None
    with pytest.raises(MissingFieldError, match=r"diaSource\.psfNdata .* 1 row"):
        frame_records(frame, DIA_SOURCE, record="diaSource")


def test_timestamps_become_microseconds():
    fields = SCHEMA.record_fields("mpc_orbits")
    frame = pd.DataFrame(
        {
            "id": [1],
            "designation": ["2026 AB"],
            "packed_primary_provisional_designation": ["K26A00B"],
            "unpacked_primary_provisional_designation": ["2026 AB"],
            "created_at": pd.to_datetime(["2026-01-02T03:04:05.123456"]),
            "q": [np.nan],
        }
    )
    (record,) = frame_records(frame, fields, record="mpc_orbits")
    assert record["created_at"] == 1767323045123456
    assert record["q"] is None and record["fitting_datetime"] is None
    assert validate(record, _sub_schema("mpc_orbits"), raise_errors=True)


def _sub_schema(name: str) -> dict:
    for field in SCHEMA.definition["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("name", "").endswith("." + name):
                return branch
    raise KeyError(name)
