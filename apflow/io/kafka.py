"""Produce alerts to Kafka in the Confluent wire format (optional: needs ``confluent-kafka``).

Each message is the 5-byte Confluent header (magic 0, schema-registry id) followed by the
schemaless Avro alert (:func:`apflow.io.alerts.frame_alert`), keyed by ``diaSourceId``, with a
``producer_timestamp`` header (ms since the epoch) as Rubin's producer sets.

Unlike Rubin's ``PackageAlertsTask``, which flushes after every alert, messages are batched by
librdkafka (``linger.ms``, ``batch.size``) and flushed once at the end: a flush is a round trip to
the brokers, and a visit has thousands of alerts. Delivery failures are counted from the
delivery callbacks (and from local errors such as a message over the size limit), reported in a
:class:`DeliveryReport`, and the failed alerts' framed bytes are optionally written to files
``<failed_alert_dir>/<diaSourceId>.avro`` (readable by :func:`apflow.io.alerts.read_alerts`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .alerts import AlertSchema, frame_alert, load_alert_schema, schema_version_of_id

_log = logging.getLogger(__name__)

#: Producer settings apflow uses unless the caller's config overrides them. batch.size and
#: compression follow Rubin's producer; linger.ms lets librdkafka fill batches.
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 2 * 1024 * 1024,
    "compression.type": "snappy",
    "message.max.bytes": 4 * 1024 * 1024,
}

#: Errors kept verbatim in a report (the count covers all of them).
_MAX_KEPT_ERRORS = 20


def _confluent_kafka() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:
        raise ImportError(
            "producing alerts to Kafka needs the confluent-kafka package: "
            "pip install 'apflow[kafka]' (or pip install confluent-kafka)"
        ) from exc
    return confluent_kafka


@dataclass
class DeliveryReport:
    """What happened to the alerts given to an :class:`AlertProducer`.

    Attributes
    ----------
    n_produced : int
        Alerts handed to the producer.
    n_delivered : int
        Acknowledged by the brokers.
    n_failed : int
        Rejected locally, failed delivery, or still undelivered when the flush timed out.
    errors : list of str
        The first error messages.
    failed_files : list of str
        Files the failed alerts were written to.
    bytes : int
        Framed bytes produced.
    seconds : float
        Wall time from the first produce to the end of the flush.
    """

    n_produced: int = 0
    n_delivered: int = 0
    n_failed: int = 0
    errors: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Small JSON numbers."""
        return {
            "n_produced": self.n_produced,
            "n_delivered": self.n_delivered,
            "n_failed": self.n_failed,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
        }


class AlertProducer:
    """Kafka producer of Confluent-framed Avro alerts.

    Parameters
    ----------
    config : dict
        librdkafka settings (``bootstrap.servers``, security ...), over
        :data:`DEFAULT_PRODUCER_CONFIG`.
    topic : str
        Topic to produce to.
    schema_id : int
        Schema-registry id written in every header (e.g. 1101 for alert schema 11.1).
    schema : AlertSchema, optional
        Writer schema; default the shipped schema of ``schema_id``.
    failed_alert_dir : path, optional
        Write each failed alert's framed bytes to ``<dir>/<diaSourceId>.avro``.
    flush_timeout : float
        Seconds the final flush waits for outstanding deliveries. Default 30.

    Raises
    ------
    ImportError
        If confluent-kafka is not installed.

    Examples
    --------
    >>> with AlertProducer({"bootstrap.servers": "broker:9092"}, "alerts", 1101) as producer:
    ...     producer.produce_all(result.records)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        schema_id: int,
        *,
        schema: AlertSchema | None = None,
        failed_alert_dir: str | os.PathLike[str] | None = None,
        flush_timeout: float = 30.0,
    ) -> None:
        kafka = _confluent_kafka()
        self.topic = topic
        self.schema_id = int(schema_id)
        self.schema = (
            schema if schema is not None else load_alert_schema(schema_version_of_id(schema_id))
        )
        self.failed_alert_dir = Path(failed_alert_dir) if failed_alert_dir is not None else None
        self.flush_timeout = float(flush_timeout)
        self.report = DeliveryReport()
        self._kafka_exception = kafka.KafkaException
        self._producer = kafka.Producer({**DEFAULT_PRODUCER_CONFIG, **dict(config)})
        self._started: float | None = None

    def __enter__(self) -> AlertProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def produce(self, alert: Mapping[str, Any]) -> None:
        """Queue one alert (asynchronous; see :meth:`flush`)."""
        if self._started is None:
            self._started = time.perf_counter()
        value = frame_alert(alert, self.schema, self.schema_id)
        key = str(alert["diaSourceId"]).encode()
        self.report.n_produced += 1
        self.report.bytes += len(value)
        headers = [("producer_timestamp", str(int(time.time() * 1000)).encode())]
        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                )
                break
            except BufferError:
                # The local queue is full: serve delivery callbacks until there is room.
                self._producer.poll(0.05)
            except self._kafka_exception as exc:
                self._failed(key, value, f"produce failed ({len(value)} bytes): {exc}")
                break
        self._producer.poll(0)

    def produce_all(self, alerts: Iterable[Mapping[str, Any]]) -> DeliveryReport:
        """Queue every alert, then flush once; the report of this producer so far."""
        for alert in alerts:
            self.produce(alert)
        return self.flush()

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Wait for outstanding deliveries; those still pending at the timeout count as failed."""
        remaining = self._producer.flush(self.flush_timeout if timeout is None else timeout)
        if remaining:
            self.report.n_failed += remaining
            self._note_error(f"{remaining} alert(s) undelivered after the flush timeout")
        if self._started is not None:
            self.report.seconds = time.perf_counter() - self._started
        if self.report.n_failed:
            _log.warning(
                "kafka topic %s: %d of %d alerts failed: %s",
                self.topic,
                self.report.n_failed,
                self.report.n_produced,
                "; ".join(self.report.errors[:3]),
            )
        return self.report

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.report.n_delivered += 1
            return
        self._failed(msg.key(), msg.value(), f"delivery failed: {err}")

    def _failed(self, key: bytes | None, value: bytes | None, message: str) -> None:
        self.report.n_failed += 1
        name = key.decode() if key else f"unkeyed-{self.report.n_failed}"
        self._note_error(f"diaSourceId {name}: {message}")
        if self.failed_alert_dir is not None and value is not None:
            self.failed_alert_dir.mkdir(parents=True, exist_ok=True)
            path = self.failed_alert_dir / f"{name}.avro"
            tmp = path.with_suffix(".avro.tmp")
            tmp.write_bytes(value)
            tmp.replace(path)  # readers never see a half-written alert
            self.report.failed_files.append(str(path))

    def _note_error(self, message: str) -> None:
        if len(self.report.errors) < _MAX_KEPT_ERRORS:
            self.report.errors.append(message)
