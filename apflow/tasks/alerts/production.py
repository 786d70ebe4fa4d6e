"""The alert stage of ``alert_production``: APDB history + packaging + optional Kafka.

:class:`PackageAlertsTask` does no I/O. This stage task gives it what Rubin's
``DiaPipelineTask`` gives ``PackageAlertsTask``: the DiaSources of the (visit, detector) as the
association stage stored them (``dia_association``), their DiaObjects, and the objects' DiaSource
and DiaForcedSource history of the last ``history_days`` read back from the APDB, plus the
difference, science and warped template images for the cutouts and the ``ss_source`` rows.

History is limited to what was observed up to this visit's midpoint (DiaSources and forced
sources of later visits are left out), so re-packaging an old visit gives the alerts it gave
then, apart from the DiaObject summary, which is the object's current one.

Kafka: with ``kafka_bootstrap`` set, the alerts are also produced to ``kafka_topic`` (Confluent
wire format, batched, one flush at the end). Credentials come from the environment, never from
the workflow file: ``APFLOW_KAFKA_USERNAME`` and ``APFLOW_KAFKA_PASSWORD`` switch on SASL
(``kafka_sasl_mechanism``, default SCRAM-SHA-512, over ``kafka_security_protocol``). Failed
deliveries fail the quantum, naming how many failed; a rerun produces them again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...apdb import Apdb, empty_frame
from ...core import Exposure
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task
from .task import PackageAlertsConfig, PackageAlertsTask


@dataclass
class AlertStageConfig(PackageAlertsConfig):
    """:class:`PackageAlertsConfig` plus where the APDB is and where alerts are produced.

    Attributes
    ----------
    apdb_url : str
        SQLAlchemy URL of the APDB; "" for the repository's default SQLite file.
    kafka_bootstrap : str
        ``host:port[,host:port]`` of the Kafka brokers; "" writes files only.
    kafka_topic : str
    kafka_security_protocol, kafka_sasl_mechanism : str
        Used when ``APFLOW_KAFKA_USERNAME``/``APFLOW_KAFKA_PASSWORD`` are set.
    """

    apdb_url: str = ""
    kafka_bootstrap: str = ""
    kafka_topic: str = "alerts"
    kafka_security_protocol: str = "SASL_PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"


@dataclass
class AlertStageResult:
    """Output of :class:`AlertStageTask`: ``alerts`` (Avro container bytes) and numbers."""

    alerts: bytes
    numbers: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Alert counts, cutout problems, bytes and Kafka delivery counts."""
        return dict(self.numbers)


class AlertStageTask(Task):
    """Package the alerts of one (visit, detector) with their APDB history (module docstring)."""

    ConfigClass = AlertStageConfig
    config: AlertStageConfig

    def run(
        self,
        dia_association: pd.DataFrame,
        diff_image: Exposure,
        calexp: Exposure,
        template_warped: Exposure | None = None,
        ss_source: pd.DataFrame | None = None,
        data_id: Mapping[str, Any] | None = None,
        repo_url: str | None = None,
    ) -> AlertStageResult:
        """Read the history from the APDB, package the alerts, produce them when configured.

        Parameters
        ----------
        dia_association : pandas.DataFrame
            The DiaSources of this (visit, detector) as stored in the APDB (with
            ``diaObjectId``; 0 for SSO-associated sources).
        diff_image, calexp, template_warped : Exposure
            Images for the cutouts (a missing template gives null template cutouts).
        ss_source : pandas.DataFrame, optional
            SSSource rows of the SSO-associated DiaSources.
        data_id : mapping, optional
            Injected by the engine.
        repo_url : str, optional
            Injected by the engine: the repository whose default APDB is used.

        Raises
        ------
        ConfigError
            No APDB URL and no repository.
        TaskError
            Some Kafka deliveries failed: the quantum fails (no alerts file is written), and
            a rerun packages and produces the alerts again.
        """
        cfg = self.config
        where = format_data_id(data_id)
        apdb = Apdb.resolve(cfg.apdb_url, repo_url, f"alerts [{where}]")
        sources = dia_association
        object_ids = _object_ids(sources)
        if object_ids:
            midpoint = float(np.nanmax(sources["midpointMjdTai"].to_numpy(dtype=np.float64)))
            since = midpoint - cfg.history_days
            objects = apdb.dia_objects(object_ids)
            history = apdb.dia_sources_for_objects(object_ids, since_mjd=since)
            history = history[history["midpointMjdTai"] <= midpoint]
            forced = apdb.dia_forced_sources_for_objects(object_ids, since_mjd=since)
            forced = forced[forced["midpointMjdTai"] <= midpoint]
        else:
            objects = empty_frame("DiaObject")
            history = empty_frame("DiaSource")
            forced = empty_frame("DiaForcedSource")
        packager = PackageAlertsTask(PackageAlertsConfig(**_packaging_fields(cfg)))
        packaged = packager.run(
            sources,
            objects,
            history,
            forced,
            ss_source,
            diff_image,
            calexp,
            template_warped,
            data_id=data_id,
        )
        numbers = dict(packaged.summary())
        numbers["apdb"] = apdb.dialect
        if cfg.kafka_bootstrap:
            numbers.update(self._produce(packaged, where))
        return AlertStageResult(packaged.alerts, numbers)

    def _produce(self, packaged: Any, where: str) -> dict[str, Any]:
        from ...io.kafka import AlertProducer

        cfg = self.config
        config: dict[str, Any] = {"bootstrap.servers": cfg.kafka_bootstrap}
        user = os.environ.get("APFLOW_KAFKA_USERNAME")
        password = os.environ.get("APFLOW_KAFKA_PASSWORD")
        if user or password:
            if not (user and password):
                raise ConfigError(
                    "set both APFLOW_KAFKA_USERNAME and APFLOW_KAFKA_PASSWORD (or neither)"
                )
            config.update(
                {
                    "security.protocol": cfg.kafka_security_protocol,
                    "sasl.mechanisms": cfg.kafka_sasl_mechanism,
                    "sasl.username": user,
                    "sasl.password": password,
                }
            )
        with AlertProducer(
            config, cfg.kafka_topic, packaged.schema.schema_id, schema=packaged.schema
        ) as producer:
            report = producer.produce_all(packaged.records)
        if report.n_failed:
            raise TaskError(
                f"alerts [{where}]: {report.n_failed} of {report.n_produced} alerts were not "
                f"delivered to Kafka topic {cfg.kafka_topic!r} at {cfg.kafka_bootstrap}: "
                f"{'; '.join(map(str, report.errors[:3]))}"
            )
        return {"kafka_delivered": report.n_delivered, "kafka_seconds": report.seconds}


def _object_ids(sources: pd.DataFrame) -> list[int]:
    if "diaObjectId" not in sources or sources.empty:
        return []
    ids = pd.to_numeric(sources["diaObjectId"], errors="coerce").dropna().astype(np.int64)
    return sorted({int(i) for i in ids if i != 0})


def _packaging_fields(cfg: AlertStageConfig) -> dict[str, Any]:
    names = PackageAlertsConfig.__dataclass_fields__
    return {name: getattr(cfg, name) for name in names}
