"""PackageAlertsTask: one Avro alert per DiaSource of a (visit, detector), with history and cutouts.

Rubin's ``PackageAlertsTask`` (ap_association) re-implemented on pandas frames in APDB column
names and apflow exposures. Per DiaSource in ``dia_sources``:

====================  =========================================================================
``diaSourceId``       the DiaSource id
``observation_reason``, ``target_name``   null (no scheduler information here)
``diaSource``         the row, mapped field by field onto the schema (:mod:`.records`)
``diaObject``         its DiaObject; null for an SSO-associated source (``diaObjectId`` 0/NA)
                      or an object missing from ``dia_objects`` (warning)
``prvDiaSources``     the object's earlier DiaSources within ``history_days`` (this one
                      excluded), time-ordered; null if none
``prvDiaForcedSources``  the object's forced sources within ``history_days`` up to this visit;
                      null if none
``ssSource``          the ``ss_sources`` row of this diaSourceId (any source, SSO-associated or not)
``mpc_orbits``        the orbit of that ssSource's object: the ``mpc_orbits`` row with the same
                      ``ssObjectId`` (if that frame has the column) or ``designation``; NaN in a
                      nullable field is null, nothing is invented
``cutoutDifference``, ``cutoutScience``, ``cutoutTemplate``  FITS bytes (:mod:`.cutouts`), null
                      when the source is off that image or the image is missing (warning)
====================  =========================================================================

Output ``alerts``: one Avro object-container file (bytes) with the full schema, all alerts of
the (visit, detector); zero DiaSources give a valid, empty container. The task does no I/O:
writing the file and producing to Kafka (:class:`apflow.io.kafka.AlertProducer`) are the
caller's.

Bad input degrades, never loses an alert: optional catalog rows with a missing value in a field
the schema requires are left out with a warning; a missing template gives null template
cutouts. Only a DiaSource row that cannot form a valid ``diaSource`` record (a required field
absent or NA) is an error, naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...core import Exposure
from ...errors import ConfigError, format_data_id
from ...io.alerts import AlertSchema, load_alert_schema, write_alerts
from ..base import Task, TaskConfig
from .cutouts import Cutout, cutout_sizes, make_cutouts
from .records import frame_records

_log = logging.getLogger(__name__)

CUTOUT_FIELDS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")
#: Top-level fields of the alerts this task builds (schemas 10.0 to 11.1).
ALERT_FIELDS = (
    "diaSourceId",
    "observation_reason",
    "target_name",
    "diaSource",
    "prvDiaSources",
    "prvDiaForcedSources",
    "diaObject",
    "ssSource",
    "mpc_orbits",
    *CUTOUT_FIELDS,
)


@dataclass
class PackageAlertsConfig(TaskConfig):
    """Configuration of :class:`PackageAlertsTask` (defaults are Rubin's unless marked apflow).

    Attributes
    ----------
    schema_version : str
        Alert schema ``"MAJOR.MINOR"`` from ``lsst-alert-packet``; "" for the latest it ships.
    min_cutout_size, max_cutout_size : int
        Cutout side = clamp(DiaSource ``bboxSize``, min, max) pixels. Default 30 and 102
        (102 = a 10 deg/day trail in 30 s plus ~40 px of PSF).
    history_days : float
        Window of ``prvDiaSources`` / ``prvDiaForcedSources`` before the visit (DPDD: 12
        months). Default 365.25.
    psf_cell_size : int
        ``PSFIMAGE`` of a spatially varying PSF is rendered per cell of this many pixels;
        0 = at every source. Default 128 (apflow).
    cutout_writer : {"direct", "astropy"}
        ``direct`` writes the FITS bytes itself; ``astropy`` uses ``CCDData.write`` (Rubin's
        method, ~30-100x slower; for comparison). Default "direct" (apflow).
    codec : {"null", "deflate"}
        Avro container block codec. Default "null" (Rubin's).
    """

    schema_version: str = ""
    min_cutout_size: int = 30
    max_cutout_size: int = 102
    history_days: float = 365.25
    psf_cell_size: int = 128
    cutout_writer: str = "direct"
    codec: str = "null"

    def validate(self) -> None:
        if not 1 <= self.min_cutout_size <= self.max_cutout_size:
            raise ConfigError(
                "PackageAlertsConfig: need 1 <= min_cutout_size <= max_cutout_size, got "
                f"{self.min_cutout_size} and {self.max_cutout_size}"
            )
        if self.history_days < 0:
            raise ConfigError(f"PackageAlertsConfig.history_days must be >= 0: {self.history_days}")
        if self.cutout_writer not in ("direct", "astropy"):
            raise ConfigError(
                f"PackageAlertsConfig.cutout_writer must be 'direct' or 'astropy', "
                f"got {self.cutout_writer!r}"
            )
        if self.codec not in ("null", "deflate"):
            raise ConfigError(
                f"PackageAlertsConfig.codec must be 'null' or 'deflate': {self.codec}"
            )
        schema = load_alert_schema(self.schema_version or None)  # the package must ship it
        if set(schema.field_names) != set(ALERT_FIELDS):
            # Older schemas (alertId, ssObject, ...) have another layout.
            raise ConfigError(
                f"PackageAlertsConfig.schema_version: {schema.name} has fields "
                f"{schema.field_names}; apflow packages the layout of {', '.join(ALERT_FIELDS)}"
            )


@dataclass
class PackageAlertsResult:
    """Output of :class:`PackageAlertsTask`.

    Attributes
    ----------
    alerts : bytes
        Avro object-container file of all alerts (the ``alerts`` dataset).
    records : list of dict
        The same alerts as Python records (for a Kafka producer or inspection).
    schema : AlertSchema
        The writer schema.
    cutout_status : pandas.DataFrame
        Per alert: ``diaSourceId`` and, per cutout field, ``"ok"``, ``"partial"`` or
        ``"missing"``.
    n_missing_dia_objects : int
        Alerts whose ``diaObjectId`` was not in ``dia_objects`` (diaObject null).
    n_dropped_rows : int
        Optional catalog rows left out for a missing required value.
    """

    alerts: bytes
    records: list[dict[str, Any]] = field(repr=False)
    schema: AlertSchema = field(repr=False)
    cutout_status: pd.DataFrame = field(repr=False)
    n_missing_dia_objects: int = 0
    n_dropped_rows: int = 0

    def summary(self) -> dict[str, int]:
        """Small JSON numbers for the engine's report."""
        status = self.cutout_status[list(CUTOUT_FIELDS)].to_numpy()
        return {
            "n_alerts": len(self.records),
            "n_cutouts_missing": int((status == "missing").sum()),
            "n_partial": int((status == "partial").sum()),
            "n_sso": sum(1 for r in self.records if r["ssSource"] is not None),
            "n_missing_dia_objects": self.n_missing_dia_objects,
            "n_dropped_rows": self.n_dropped_rows,
            "bytes": len(self.alerts),
            "schema_id": self.schema.schema_id,
        }


class PackageAlertsTask(Task):
    """Package the DiaSources of one (visit, detector) into Avro alerts (see module docstring)."""

    ConfigClass = PackageAlertsConfig
    config: PackageAlertsConfig

    def run(
        self,
        dia_sources: pd.DataFrame,
        dia_objects: pd.DataFrame,
        dia_source_history: pd.DataFrame,
        dia_forced_sources: pd.DataFrame,
        ss_sources: pd.DataFrame | None,
        diff_image: Exposure | None,
        calexp: Exposure | None,
        template: Exposure | None,
        mpc_orbits: pd.DataFrame | None = None,
        data_id: Mapping[str, Any] | None = None,
    ) -> PackageAlertsResult:
        """Build the alerts.

        Parameters
        ----------
        dia_sources : pandas.DataFrame
            New DiaSources of this (visit, detector), APDB ``DiaSource`` columns (nJy, deg,
            MJD TAI); one alert each.
        dia_objects : pandas.DataFrame
            Their DiaObjects (APDB ``DiaObject``), keyed by ``diaObjectId``.
        dia_source_history : pandas.DataFrame
            Earlier DiaSources of those objects (APDB ``DiaSource``); rows outside the history
            window or of other objects are ignored.
        dia_forced_sources : pandas.DataFrame
            Forced photometry of those objects (APDB ``DiaForcedSource``).
        ss_sources : pandas.DataFrame or None
            APDB ``SSSource`` rows of the SSO-associated DiaSources (by ``diaSourceId``).
        diff_image, calexp, template : Exposure or None
            Difference, science and warped template images (cutouts; a missing one gives null
            cutouts and a warning).
        mpc_orbits : pandas.DataFrame, optional
            APDB ``mpc_orbits`` rows of the associated solar-system objects, optionally with an
            ``ssObjectId`` column to join on (else joined on ``designation``).
        data_id : mapping, optional
            Injected by the engine; used in messages.

        Returns
        -------
        PackageAlertsResult

        Raises
        ------
        TaskError
            A DiaSource lacks a value the schema requires (the message names the field).
        """
        cfg = self.config
        where = f"alerts [{format_data_id(data_id)}]: "
        schema = load_alert_schema(cfg.schema_version or None)
        sources = dia_sources.reset_index(drop=True)
        n = len(sources)

        source_records = frame_records(
            sources, schema.record_fields("diaSource"), record="diaSource", where=where
        )
        ids = _int_column(sources, "diaSourceId", n)
        mjd = _float_column(sources, "midpointMjdTai", n)
        object_ids = _int_column(sources, "diaObjectId", n)

        dropped = _Counter()
        objects = _records_by_key(dia_objects, schema, "diaObject", "diaObjectId", where, dropped)
        history = _History.build(
            dia_source_history, schema, "diaSource", "diaSourceId", where, dropped
        )
        forced = _History.build(
            dia_forced_sources, schema, "diaForcedSource", "diaForcedSourceId", where, dropped
        )
        ss_records = _records_by_key(ss_sources, schema, "ssSource", "diaSourceId", where, dropped)
        orbits = _Orbits.build(mpc_orbits, schema, where, dropped)

        cutouts = self._cutouts(sources, ids, diff_image, calexp, template, where)

        records: list[dict[str, Any]] = []
        n_missing_objects = 0
        window = cfg.history_days
        for k in range(n):
            obj_id = object_ids[k]
            dia_object = prv_sources = prv_forced = None
            if obj_id:  # 0 / NA: associated with a solar-system object, no DiaObject
                dia_object = objects.get(obj_id)
                if dia_object is None:
                    n_missing_objects += 1
                    _log.warning(
                        "%sdiaObjectId %d of diaSourceId %d is not in dia_objects: "
                        "diaObject is null",
                        where,
                        obj_id,
                        ids[k],
                    )
                prv_sources = history.select(obj_id, mjd[k] - window, mjd[k], exclude=ids[k])
                prv_forced = forced.select(obj_id, mjd[k] - window, mjd[k])
            ss_source = ss_records.get(ids[k])
            records.append(
                {
                    "diaSourceId": ids[k],
                    "observation_reason": None,
                    "target_name": None,
                    "diaSource": source_records[k],
                    "prvDiaSources": prv_sources,
                    "prvDiaForcedSources": prv_forced,
                    "diaObject": dia_object,
                    "ssSource": ss_source,
                    "mpc_orbits": orbits.find(ss_source),
                    "cutoutDifference": cutouts[0][k],
                    "cutoutScience": cutouts[1][k],
                    "cutoutTemplate": cutouts[2][k],
                }
            )
        status = pd.DataFrame({"diaSourceId": pd.Series(ids, dtype="int64")})
        for name, statuses in zip(CUTOUT_FIELDS, cutouts[3], strict=True):
            status[name] = statuses
        return PackageAlertsResult(
            alerts=write_alerts(records, schema, codec=cfg.codec),
            records=records,
            schema=schema,
            cutout_status=status,
            n_missing_dia_objects=n_missing_objects,
            n_dropped_rows=dropped.count,
        )

    def _cutouts(
        self,
        sources: pd.DataFrame,
        ids: list[int],
        diff_image: Exposure | None,
        calexp: Exposure | None,
        template: Exposure | None,
        where: str,
    ) -> tuple[list[bytes | None], list[bytes | None], list[bytes | None], list[list[str]]]:
        cfg = self.config
        n = len(sources)
        if n == 0:
            return [], [], [], [[], [], []]
        ra = _float_column(sources, "ra", n)
        dec = _float_column(sources, "dec", n)
        x = _float_column(sources, "x", n)
        y = _float_column(sources, "y", n)
        bbox = (
            sources["bboxSize"] if "bboxSize" in sources else pd.Series(np.nan, index=sources.index)
        )
        sizes = cutout_sizes(
            bbox.to_numpy(dtype=float, na_value=np.nan), cfg.min_cutout_size, cfg.max_cutout_size
        )
        # The template is warped to the science frame: its ROTPA is the science visit's.
        rotation = None
        visit = None
        for exposure in (calexp, diff_image):
            if exposure is not None and exposure.visit_info is not None:
                rotation = exposure.visit_info.rotation_angle
                visit = exposure.visit_info.visit
                break
        serialise = Cutout.to_fits if cfg.cutout_writer == "direct" else Cutout.to_fits_astropy
        blobs: list[list[bytes | None]] = []
        statuses: list[list[str]] = []
        for kind, exposure in (
            ("difference", diff_image),
            ("science", calexp),
            ("template", template),
        ):
            if exposure is None:
                _log.warning("%sno %s image: the %d %s cutouts are null", where, kind, n, kind)
                blobs.append([None] * n)
                statuses.append(["missing"] * n)
                continue
            made = make_cutouts(
                exposure,
                ra,
                dec,
                x,
                y,
                sizes,
                kind=kind,
                dia_source_ids=np.asarray(ids, dtype=np.int64),
                rotation_angle=rotation,
                visit=visit,
                psf_cell_size=cfg.psf_cell_size,
            )
            blobs.append([serialise(c) if c is not None else None for c in made])
            statuses.append(
                ["missing" if c is None else "partial" if c.partial else "ok" for c in made]
            )
        return blobs[0], blobs[1], blobs[2], statuses


class _Counter:
    def __init__(self) -> None:
        self.count = 0


def _int_column(frame: pd.DataFrame, name: str, n: int) -> list[int]:
    """Integer column as Python ints, NA -> 0 (ids: 0 means 'none' in the APDB too)."""
    if name not in frame.columns:
        return [0] * n
    return frame[name].to_numpy(dtype=np.int64, na_value=0).tolist()


def _float_column(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    if name not in frame.columns:
        return np.full(n, np.nan)
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _usable_rows(
    frame: pd.DataFrame | None,
    schema: AlertSchema,
    record: str,
    where: str,
    dropped: _Counter,
) -> pd.DataFrame:
    """The rows of an optional catalog that can form a valid record; the others are dropped
    with a warning (a missing *column* stays an error, raised by :func:`frame_records`)."""
    if frame is None or len(frame) == 0:
        return pd.DataFrame()
    required = [
        f.name for f in schema.record_fields(record) if not f.nullable and f.name in frame.columns
    ]
    bad = frame[required].isna().any(axis=1).to_numpy() if required else np.zeros(len(frame), bool)
    if bad.any():
        fields = [c for c in required if frame.loc[bad, c].isna().any()]
        _log.warning(
            "%s%d %s row(s) left out: missing values in required field(s) %s",
            where,
            int(bad.sum()),
            record,
            ", ".join(fields),
        )
        dropped.count += int(bad.sum())
    return frame.loc[~bad].reset_index(drop=True)


def _records_by_key(
    frame: pd.DataFrame | None,
    schema: AlertSchema,
    record: str,
    key: str,
    where: str,
    dropped: _Counter,
) -> dict[int, dict[str, Any]]:
    rows = _usable_rows(frame, schema, record, where, dropped)
    if len(rows) == 0:
        return {}
    converted = frame_records(rows, schema.record_fields(record), record=record, where=where)
    return {rec[key]: rec for rec in converted}


@dataclass
class _History:
    """Records of one catalog grouped by diaObjectId, each group sorted by time."""

    groups: dict[int, tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]
    id_field: str

    @classmethod
    def build(
        cls,
        frame: pd.DataFrame | None,
        schema: AlertSchema,
        record: str,
        id_field: str,
        where: str,
        dropped: _Counter,
    ) -> _History:
        rows = _usable_rows(frame, schema, record, where, dropped)
        if len(rows) == 0 or "diaObjectId" not in rows.columns:
            return cls({}, id_field)
        # Converting first reports a missing required column by name (e.g. midpointMjdTai).
        converted = frame_records(rows, schema.record_fields(record), record=record, where=where)
        times = rows["midpointMjdTai"].to_numpy(dtype=np.float64)
        order = np.argsort(times, kind="stable")
        object_ids = rows["diaObjectId"].to_numpy(dtype=np.int64, na_value=0)[order]
        times = times[order]
        row_ids = rows[id_field].to_numpy(dtype=np.int64)[order]
        groups = {}
        for obj_id, positions in pd.Series(order).groupby(object_ids):
            if obj_id == 0:
                continue
            sorted_idx = positions.index.to_numpy()  # positions in time order
            groups[int(obj_id)] = (
                times[sorted_idx],
                row_ids[sorted_idx],
                [converted[i] for i in positions.to_numpy()],
            )
        return cls(groups, id_field)

    def select(
        self, object_id: int, start: float, end: float, exclude: int | None = None
    ) -> list[dict[str, Any]] | None:
        """The object's records with ``start <= time <= end`` (time order), None if none."""
        group = self.groups.get(object_id)
        if group is None:
            return None
        times, row_ids, recs = group
        lo = int(np.searchsorted(times, start, side="left"))
        hi = int(np.searchsorted(times, end, side="right"))
        chosen = [recs[i] for i in range(lo, hi) if row_ids[i] != exclude]
        return chosen or None


@dataclass
class _Orbits:
    """mpc_orbits records, looked up by ssObjectId when the frame has it, else designation."""

    by_object: dict[int, dict[str, Any]]
    by_designation: dict[str, dict[str, Any]]

    @classmethod
    def build(
        cls, frame: pd.DataFrame | None, schema: AlertSchema, where: str, dropped: _Counter
    ) -> _Orbits:
        rows = _usable_rows(frame, schema, "mpc_orbits", where, dropped)
        if len(rows) == 0:
            return cls({}, {})
        converted = frame_records(
            rows, schema.record_fields("mpc_orbits"), record="mpc_orbits", where=where
        )
        by_object = {}
        if "ssObjectId" in rows.columns:
            keys = rows["ssObjectId"].to_numpy(dtype=np.int64, na_value=0)
            by_object = {int(k): rec for k, rec in zip(keys, converted, strict=True) if k}
        by_designation = {rec["designation"]: rec for rec in converted}
        return cls(by_object, by_designation)

    def find(self, ss_source: dict[str, Any] | None) -> dict[str, Any] | None:
        if ss_source is None:
            return None
        found = self.by_object.get(ss_source["ssObjectId"])
        if found is None and ss_source.get("designation"):
            found = self.by_designation.get(ss_source["designation"])
        return found
