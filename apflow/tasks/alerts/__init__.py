"""Alert packaging: cutouts, Avro alert records and :class:`PackageAlertsTask`.

- :mod:`.cutouts`: calibrated square cutouts with a local TAN WCS, as FITS bytes readable by
  ``astropy.nddata.CCDData.read`` (:mod:`.fits_bytes` writes them directly).
- :mod:`.records`: APDB frames -> Avro sub-records, field by field from the alert schema.
- :mod:`.task`: :class:`PackageAlertsTask`, one Avro container of alerts per (visit, detector).
- :mod:`.production`: :class:`AlertStageTask`, the workflow stage: APDB history in, alerts out,
  optionally produced to Kafka.

The schema, container files and Confluent framing live in :mod:`apflow.io.alerts`; the Kafka
producer in :mod:`apflow.io.kafka`.
"""

from .cutouts import Cutout, cutout_sizes, make_cutouts
from .production import AlertStageConfig, AlertStageResult, AlertStageTask
from .task import PackageAlertsConfig, PackageAlertsResult, PackageAlertsTask

__all__ = [
    "AlertStageConfig",
    "AlertStageResult",
    "AlertStageTask",
    "Cutout",
    "PackageAlertsConfig",
    "PackageAlertsResult",
    "PackageAlertsTask",
    "cutout_sizes",
    "make_cutouts",
]
