"""AlertProducer against librdkafka's built-in mock broker (a real Kafka protocol server)."""

from __future__ import annotations

import io
import logging
import re
import struct
import sys
import time

import fastavro
import pytest

from apflow.io.alerts import load_alert_schema, read_alerts, unframe_alert

kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

from apflow.io.kafka import AlertProducer  # noqa: E402

SCHEMA = load_alert_schema()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _mock_producer(topic: str, extra: dict | None = None, **kwargs) -> tuple[AlertProducer, str]:
    """An AlertProducer whose librdkafka runs an in-process mock cluster; its address."""
    handler = _Lines()
    logger = logging.getLogger(f"test-kafka-{topic}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    config = {"test.mock.num.brokers": 1, "logger": logger, **(extra or {})}
    producer = AlertProducer(config, topic, SCHEMA.schema_id, **kwargs)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"replaced with (\S+)", " ".join(handler.lines))
        if found:
            return producer, found.group(1)
        producer._producer.poll(0.05)
    pytest.skip("librdkafka did not report its mock cluster's address")


def _alerts(n: int) -> list[dict]:
    from lsst.alert.packet import get_schema_path

    major, minor = SCHEMA.version
    (sample,) = read_alerts(f"{get_schema_path(major, minor)}/sample_data/fakeAlert.avro")
    out = []
    for k in range(n):
        alert = dict(sample, diaSourceId=1_000 + k)
        alert["diaSource"] = dict(sample["diaSource"], diaSourceId=5_000 + k, psfFlux=float(k))
        alert["cutoutDifference"] = bytes([k % 256]) * 3000
        out.append(alert)
    return out


def _consume(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list:
    consumer = kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "apflow-test", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign(
            [kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions]
        )
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        return messages
    finally:
        consumer.close()


def test_alerts_round_trip_through_a_broker():
    alerts = _alerts(50)
    producer, bootstrap = _mock_producer("alerts-roundtrip")
    report = producer.produce_all(alerts)
    assert (report.n_produced, report.n_delivered, report.n_failed) == (50, 50, 0)
    messages = _consume(bootstrap, "alerts-roundtrip", 50)
    assert len(messages) == 50
    decoded = {}
    for msg in messages:
        magic, schema_id = struct.unpack(">bi", msg.value()[:5])
        assert (magic, schema_id) == (0, SCHEMA.schema_id)
        body = fastavro.schemaless_reader(io.BytesIO(msg.value()[5:]), SCHEMA.definition)
        assert msg.key() == str(body["diaSourceId"]).encode()
        assert dict(msg.headers())["producer_timestamp"].isdigit()
        decoded[body["diaSourceId"]] = body
    assert [decoded[a["diaSourceId"]] for a in alerts] == alerts


def test_undeliverable_alerts_are_counted_and_written(tmp_path, caplog):
    # Nothing listens on port 1: every message times out in librdkafka and fails its delivery.
    config = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0}
    producer = AlertProducer(config, "nowhere", SCHEMA.schema_id, failed_alert_dir=tmp_path)
    alerts = _alerts(3)
    with caplog.at_level(logging.WARNING):
        report = producer.produce_all(alerts)
    assert (report.n_produced, report.n_delivered, report.n_failed) == (3, 0, 3)
    assert "3 of 3 alerts failed" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1000.avro", "1001.avro", "1002.avro"]
    assert read_alerts(tmp_path / "1001.avro") == [alerts[1]]


def test_oversized_alert_fails_locally_without_stopping_the_batch(tmp_path):
    producer, _ = _mock_producer(
        "alerts-small", {"message.max.bytes": 5000}, failed_alert_dir=tmp_path
    )
    alerts = _alerts(2)
    alerts[1]["cutoutScience"] = b"x" * 20_000
    report = producer.produce_all(alerts)
    assert (report.n_delivered, report.n_failed) == (1, 1)
    assert "1001" in report.errors[0]
    assert unframe_alert((tmp_path / "1001.avro").read_bytes())[1] == alerts[1]


def test_missing_confluent_kafka_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(ImportError, match=r"pip install 'apflow\[kafka\]'"):
        AlertProducer({}, "alerts", 1101)
