"""Alert schema loading, Avro container files and the Confluent wire format."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import fastavro
import pytest
from fastavro.validation import validate
from lsst.alert.packet import Schema, get_latest_schema_version, get_schema_path

from apflow.errors import ConfigError, CorruptDatasetError
from apflow.io.alerts import (
    available_schema_versions,
    frame_alert,
    load_alert_schema,
    read_alerts,
    unframe_alert,
    write_alerts,
)


def _sample_dir(major: int, minor: int) -> Path:
    return Path(get_schema_path(major, minor)) / "sample_data"


def _sample_alert() -> dict:
    major, minor = get_latest_schema_version()
    (alert,) = read_alerts(_sample_dir(major, minor) / "fakeAlert.avro")
    return alert


def test_default_schema_is_the_packages_latest():
    schema = load_alert_schema()
    major, minor = get_latest_schema_version()
    assert schema.version == (major, minor)
    assert schema.name == f"lsst.v{major}_{minor}.alert"
    assert schema.schema_id == major * 100 + minor == Schema.from_file().get_schema_id()
    assert schema.field_names[:2] == ["diaSourceId", "observation_reason"]


def test_older_versions_load_by_name():
    assert (11, 0) in available_schema_versions()
    schema = load_alert_schema("11.0")
    assert schema.schema_id == 1100 and schema.name == "lsst.v11_0.alert"
    assert load_alert_schema((11, 0)) is schema


def test_unknown_version_is_a_config_error_listing_shipped_ones():
    with pytest.raises(ConfigError, match=r"no alert schema 99\.0 .*11\.0"):
        load_alert_schema("99.0")
    with pytest.raises(ConfigError, match="MAJOR.MINOR"):
        load_alert_schema("eleven")


def test_container_round_trip_of_the_package_sample():
    alert = _sample_alert()
    assert validate(alert, load_alert_schema().definition, raise_errors=False)
    data = write_alerts([alert, alert])
    assert data[:4] == b"Obj\x01"
    assert read_alerts(data) == [alert, alert]
    reader = fastavro.reader(io.BytesIO(data))
    assert reader.writer_schema["name"] == load_alert_schema().name


def test_zero_alert_container_is_valid():
    data = write_alerts([])
    assert read_alerts(data) == []
    assert fastavro.reader(io.BytesIO(data)).writer_schema is not None


def test_every_shipped_sample_file_reads(tmp_path):
    for major, minor in available_schema_versions():
        for path in sorted(_sample_dir(major, minor).glob("*")):
            if path.suffix in (".avro", ".json"):
                alerts = read_alerts(path)
                assert len(alerts) >= 1, path
                assert "diaSource" in alerts[0], path


def test_wire_format_header_and_body():
    alert = _sample_alert()
    message = frame_alert(alert)
    magic, schema_id = struct.unpack(">bi", message[:5])
    assert (magic, schema_id) == (0, load_alert_schema().schema_id)
    body = fastavro.schemaless_reader(io.BytesIO(message[5:]), load_alert_schema().definition)
    assert body == alert
    assert unframe_alert(message) == (schema_id, alert)


def test_framed_messages_read_back_from_a_file(tmp_path):
    alert = _sample_alert()
    path = tmp_path / "two.bin"
    path.write_bytes(frame_alert(alert) + frame_alert(alert))
    assert read_alerts(path) == [alert, alert]


def test_header_schema_id_selects_the_reader_schema():
    (alert_v11_0,) = read_alerts(_sample_dir(11, 0) / "fakeAlert.avro")
    message = frame_alert(alert_v11_0, load_alert_schema("11.0"))
    schema_id, decoded = unframe_alert(message)  # no schema given: taken from the header
    assert schema_id == 1100 and decoded == alert_v11_0


def test_corrupt_input_is_reported():
    with pytest.raises(CorruptDatasetError, match="magic byte is 1"):
        unframe_alert(b"\x01" + frame_alert(_sample_alert())[1:])
    with pytest.raises(CorruptDatasetError, match="neither"):
        read_alerts(b"PK\x03\x04 not an alert")
    with pytest.raises(CorruptDatasetError, match="does not decode"):
        read_alerts(frame_alert(_sample_alert())[:40])
