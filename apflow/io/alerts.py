"""Avro alert packets: Rubin's alert schema, container files and the Confluent wire format.

The schema is never copied into apflow: :func:`load_alert_schema` reads it from the installed
``lsst-alert-packet`` package (``lsst/alert/packet/schema/<major>/<minor>/``), by default the
latest version the package ships. Three encodings of alerts are handled:

- **Avro object-container file** (``Obj\\x01`` magic, the full writer schema in the file header):
  the storage format of the ``alerts`` dataset, one file per (visit, detector).
  :func:`write_alerts` / :func:`read_alerts`.
- **Confluent wire format**: a 5-byte header (``struct ">bi"``: magic byte 0, then the schema
  registry id as a big-endian int32) followed by the schemaless Avro body. This is what goes on a
  Kafka topic. :func:`frame_alert` / :func:`unframe_alert`; the schema id of version
  ``major.minor`` is ``major * 100 + minor`` (11.1 -> 1101), as the package computes it.
- **JSON** (the package's ``sample_data/alert.json``), read for inspection only.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from ..errors import ConfigError, CorruptDatasetError

#: The Confluent Schema Registry framing: magic byte 0, then the schema id (big-endian int32).
WIRE_HEADER = struct.Struct(">bi")
WIRE_MAGIC = 0
CONTAINER_MAGIC = b"Obj\x01"

#: Top-level alert fields holding a sub-record, and the record's short name in the schema.
SUBRECORD_FIELDS = {
    "diaSource": "diaSource",
    "prvDiaSources": "diaSource",
    "prvDiaForcedSources": "diaForcedSource",
    "diaObject": "diaObject",
    "ssSource": "ssSource",
    "mpc_orbits": "mpc_orbits",
}


@dataclass(frozen=True)
class AvroField:
    """One field of an alert sub-record as the schema declares it.

    Attributes
    ----------
    name : str
        Field name (the APDB column name).
    avro_type : str
        Primitive Avro type (``long``, ``int``, ``float``, ``double``, ``boolean``, ``string``,
        ``bytes``) or ``timestamp-micros`` for that logical type.
    nullable : bool
        Whether the field's union admits ``null``.
    """

    name: str
    avro_type: str
    nullable: bool


@dataclass(frozen=True, eq=False)
class AlertSchema:
    """One version of Rubin's alert schema, as shipped by ``lsst-alert-packet``.

    Attributes
    ----------
    version : tuple of int
        ``(major, minor)``.
    definition : dict
        The schema as fastavro parsed it (named sub-records resolved).
    schema_id : int
        Schema-registry id for the Confluent wire header (``major * 100 + minor``).
    """

    version: tuple[int, int]
    definition: dict[str, Any]
    schema_id: int

    @property
    def name(self) -> str:
        """Full Avro name, e.g. ``lsst.v11_1.alert``."""
        return str(self.definition["name"])

    @property
    def field_names(self) -> list[str]:
        """Top-level alert fields in schema order."""
        return [f["name"] for f in self.definition["fields"]]

    def record_fields(self, record: str) -> tuple[AvroField, ...]:
        """The fields of a sub-record (``diaSource``, ``diaObject``, ``diaForcedSource``,
        ``ssSource``, ``mpc_orbits``) in schema order.

        Raises
        ------
        ConfigError
            If this schema version has no such record.
        """
        return _record_fields(self, record)


@functools.cache
def _record_fields(schema: AlertSchema, record: str) -> tuple[AvroField, ...]:
    wanted = f"{schema.name.rsplit('.', 1)[0]}.{record}"
    found = _find_record(schema.definition, wanted)
    if found is None:
        raise ConfigError(f"alert schema {schema.name} has no record {record!r}")
    return tuple(_avro_field(f) for f in found["fields"])


def _find_record(node: Any, name: str) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if node.get("type") == "record" and node.get("name") == name:
            return node
        for value in node.values():
            hit = _find_record(value, name)
            if hit is not None:
                return hit
    elif isinstance(node, list):
        for value in node:
            hit = _find_record(value, name)
            if hit is not None:
                return hit
    return None


def _avro_field(field: dict[str, Any]) -> AvroField:
    ftype = field["type"]
    branches = ftype if isinstance(ftype, list) else [ftype]
    nullable = "null" in branches
    concrete = [b for b in branches if b != "null"]
    if len(concrete) != 1:
        raise ConfigError(f"alert field {field['name']!r}: unsupported union {ftype!r}")
    base = concrete[0]
    if isinstance(base, dict):
        base = base.get("logicalType") or base["type"]
    return AvroField(name=field["name"], avro_type=str(base), nullable=nullable)


def available_schema_versions() -> list[tuple[int, int]]:
    """``(major, minor)`` of every alert schema the installed package ships, oldest first."""
    from lsst.alert.packet import get_schema_root

    versions = []
    for major_dir in get_schema_root().iterdir():
        if not major_dir.is_dir() or not major_dir.name.isdigit():
            continue
        for minor_dir in major_dir.iterdir():
            if minor_dir.is_dir() and minor_dir.name.isdigit():
                versions.append((int(major_dir.name), int(minor_dir.name)))
    return sorted(versions)


def latest_schema_version() -> tuple[int, int]:
    """The version the installed ``lsst-alert-packet`` marks as latest."""
    from lsst.alert.packet import get_latest_schema_version

    major, minor = get_latest_schema_version()
    return int(major), int(minor)


def parse_schema_version(version: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"11.1"``, ``(11, 1)`` or None (latest) -> ``(major, minor)``."""
    if version is None or version == "" or version == "latest":
        return latest_schema_version()
    if isinstance(version, str):
        major, sep, minor = version.strip().lstrip("v").replace("_", ".").partition(".")
        if not sep or not major.isdigit() or not minor.isdigit():
            raise ConfigError(f"alert schema version {version!r} is not of the form MAJOR.MINOR")
        return int(major), int(minor)
    major, minor = version
    return int(major), int(minor)


def schema_version_of_id(schema_id: int) -> tuple[int, int]:
    """Inverse of the registry id: 1101 -> ``(11, 1)``."""
    return int(schema_id) // 100, int(schema_id) % 100


def load_alert_schema(version: str | tuple[int, int] | None = None) -> AlertSchema:
    """Load an alert schema from the installed ``lsst-alert-packet`` package.

    Parameters
    ----------
    version : str or (int, int), optional
        ``"11.1"`` or ``(11, 1)``; default the latest version the package ships.

    Raises
    ------
    ConfigError
        If the package does not ship that version.
    """
    return _load_alert_schema(parse_schema_version(version))


@functools.cache
def _load_alert_schema(version: tuple[int, int]) -> AlertSchema:
    from lsst.alert.packet import Schema, get_schema_path

    major, minor = version
    path = Path(get_schema_path(major, minor)) / f"lsst.v{major}_{minor}.alert.avsc"
    if not path.is_file():
        shipped = ", ".join(f"{a}.{b}" for a, b in available_schema_versions())
        raise ConfigError(
            f"lsst-alert-packet has no alert schema {major}.{minor} (it ships: {shipped})"
        )
    schema = Schema.from_file(str(path))
    definition = fastavro.parse_schema(schema.definition)
    return AlertSchema(version=version, definition=definition, schema_id=schema.get_schema_id())


def _as_definition(schema: AlertSchema | Mapping[str, Any] | Any | None) -> dict[str, Any]:
    if schema is None:
        return load_alert_schema().definition
    if isinstance(schema, AlertSchema):
        return schema.definition
    definition = getattr(schema, "definition", schema)  # an lsst.alert.packet.Schema
    if not isinstance(definition, Mapping):
        raise ConfigError(f"not an Avro schema: {type(schema).__name__}")
    return fastavro.parse_schema(dict(definition))


def write_alerts(
    alerts: Iterable[Mapping[str, Any]],
    schema: AlertSchema | Mapping[str, Any] | Any | None = None,
    *,
    codec: str = "null",
) -> bytes:
    """Encode alerts as one Avro object-container file (the full schema in its header).

    Parameters
    ----------
    alerts : iterable of dict
        Alert records; an empty iterable gives a valid container with zero records.
    schema : AlertSchema, lsst.alert.packet.Schema or dict, optional
        Writer schema; default the latest shipped alert schema.
    codec : str
        Avro block codec (``"null"`` as Rubin writes them, or ``"deflate"``).

    Returns
    -------
    bytes
        The file's content.
    """
    buffer = io.BytesIO()
    fastavro.writer(buffer, _as_definition(schema), alerts, codec=codec)
    return buffer.getvalue()


def frame_alert(
    alert: Mapping[str, Any], schema: AlertSchema | None = None, schema_id: int | None = None
) -> bytes:
    """One alert in the Confluent wire format: 5-byte header + schemaless Avro body.

    Parameters
    ----------
    alert : dict
        The alert record.
    schema : AlertSchema, optional
        Writer schema; default the latest shipped one.
    schema_id : int, optional
        Registry id written in the header; default ``schema.schema_id``.
    """
    schema = schema if schema is not None else load_alert_schema()
    buffer = io.BytesIO()
    buffer.write(WIRE_HEADER.pack(WIRE_MAGIC, schema.schema_id if schema_id is None else schema_id))
    fastavro.schemaless_writer(buffer, schema.definition, alert)
    return buffer.getvalue()


def unframe_alert(message: bytes, schema: AlertSchema | None = None) -> tuple[int, dict[str, Any]]:
    """Decode one Confluent-framed alert.

    Parameters
    ----------
    message : bytes
        Header + schemaless body.
    schema : AlertSchema, optional
        Reader schema; default the shipped schema whose id is in the header.

    Returns
    -------
    schema_id : int
    alert : dict

    Raises
    ------
    CorruptDatasetError
        If the header's magic byte is not 0 or the body does not decode.
    """
    stream = io.BytesIO(message)
    schema_id, alert = _read_framed(stream, schema, "message")
    return schema_id, alert


def _read_framed(
    stream: io.BytesIO, schema: AlertSchema | None, where: str
) -> tuple[int, dict[str, Any]]:
    header = stream.read(WIRE_HEADER.size)
    if len(header) != WIRE_HEADER.size:
        raise CorruptDatasetError("alerts", None, f"{where}: truncated Confluent wire header")
    magic, schema_id = WIRE_HEADER.unpack(header)
    if magic != WIRE_MAGIC:
        raise CorruptDatasetError(
            "alerts", None, f"{where}: wire header magic byte is {magic}, expected 0"
        )
    if schema is None:
        schema = load_alert_schema(schema_version_of_id(schema_id))
    try:
        alert = fastavro.schemaless_reader(stream, schema.definition, None)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptDatasetError(
            "alerts", None, f"{where}: alert body does not decode with {schema.name}: {exc}"
        ) from exc
    return schema_id, alert  # type: ignore[return-value]


def read_alerts(
    source: str | Path | bytes | bytearray, schema: AlertSchema | None = None
) -> list[dict[str, Any]]:
    """Read alerts from an Avro container file, Confluent-framed messages or JSON.

    Parameters
    ----------
    source : path or bytes
        A file name or its content. Recognised by content: an Avro object-container file; one
        or more concatenated Confluent-framed alerts (header + schemaless body, the schema taken
        from the id in each header); a JSON alert or list of alerts (the package's
        ``alert.json`` samples).
    schema : AlertSchema, optional
        Reader schema (container files: schema resolution from the writer schema; framed
        alerts: instead of the header's id).

    Returns
    -------
    list of dict

    Raises
    ------
    CorruptDatasetError
        If the content is none of the above or does not decode.
    """
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "alert bytes"
    else:
        data, where = Path(source).read_bytes(), str(source)
    if data.startswith(CONTAINER_MAGIC):
        try:
            reader_schema = schema.definition if schema is not None else None
            return list(fastavro.reader(io.BytesIO(data), reader_schema=reader_schema))
        except (ValueError, EOFError, fastavro.read.SchemaResolutionError) as exc:
            raise CorruptDatasetError("alerts", None, f"{where}: {exc}") from exc
    if data[:1] == bytes([WIRE_MAGIC]) and len(data) > WIRE_HEADER.size:
        stream = io.BytesIO(data)
        alerts = []
        while stream.tell() < len(data):
            alerts.append(_read_framed(stream, schema, where)[1])
        return alerts
    stripped = data.lstrip()
    if stripped[:1] in (b"{", b"["):
        try:
            parsed = json.loads(stripped)
        except ValueError as exc:
            raise CorruptDatasetError("alerts", None, f"{where}: invalid JSON: {exc}") from exc
        return parsed if isinstance(parsed, list) else [parsed]
    raise CorruptDatasetError(
        "alerts",
        None,
        f"{where}: neither an Avro container file, Confluent-framed alerts nor JSON",
    )


CUTOUT_FIELDS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")


def alert_id(alert: Mapping[str, Any]) -> int | None:
    """``diaSourceId`` of an alert (``alertId`` in schemas before v8)."""
    value = alert.get("diaSourceId", alert.get("alertId"))
    return int(value) if value is not None else None


def cutout_bytes(alert: Mapping[str, Any], name: str) -> bytes | None:
    """FITS bytes of one cutout field (schemas before v8 wrap them as ``stampData``)."""
    value = alert.get(name)
    if isinstance(value, Mapping):
        value = value.get("stampData")
    return bytes(value) if value else None


def cutout_image(data: bytes) -> Any:
    """The primary image of cutout FITS bytes, as a float array (``None`` if it has none)."""
    import numpy as np
    from astropy.io import fits

    with fits.open(io.BytesIO(data)) as hdus:
        for hdu in hdus:
            if hdu.data is not None and hdu.data.ndim == 2:
                return np.asarray(hdu.data, dtype=float)
    return None


def alert_summary(alert: Mapping[str, Any]) -> dict[str, Any]:
    """One row describing an alert: ids, position, flux, history length and cutout sizes."""
    source = alert.get("diaSource") or {}
    sizes = []
    for name in CUTOUT_FIELDS:
        data = cutout_bytes(alert, name)
        if data is None:
            sizes.append("-")
            continue
        header = _primary_header(data)
        sizes.append(f"{header.get('NAXIS1', '?')}x{header.get('NAXIS2', '?')}")
    history = alert.get("prvDiaSources") or []
    return {
        "diaSourceId": alert_id(alert),
        "ra": source.get("ra"),
        "dec": source.get("dec", source.get("decl")),
        "psfFlux": source.get("psfFlux"),
        "snr": source.get("snr"),
        "band": source.get("band", source.get("filterName")),
        "diaObjectId": source.get("diaObjectId"),
        "ssObjectId": source.get("ssObjectId"),
        "n_prv": len(history),
        "cutouts": "/".join(sizes),
    }


def _primary_header(data: bytes) -> dict[str, Any]:
    from astropy.io import fits

    for start in range(0, len(data), 80):
        if data[start : start + 8] == b"END     ":
            try:
                header = fits.Header.fromstring(data[: start + 80].decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                return {}
            return {key: header[key] for key in header if key}
    return {}


def cutouts_png(alert: Mapping[str, Any], title: str = "") -> bytes | None:
    """Difference, science and template cutouts side by side as PNG bytes (None if none).

    The difference image is shown with a symmetric linear stretch (negative residuals matter),
    the others with :func:`apflow.io.plots.scaled_image`.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from .plots import scaled_image

    images = {}
    for name in CUTOUT_FIELDS:
        data = cutout_bytes(alert, name)
        images[name] = cutout_image(data) if data is not None else None
    if all(v is None for v in images.values()):
        return None
    fig = Figure(figsize=(9, 3.4), dpi=100)
    for k, (name, image) in enumerate(images.items()):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.set_title(name.removeprefix("cutout"), fontsize=9)
        ax.set_axis_off()
        if image is None:
            ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            continue
        if name == "cutoutDifference":
            finite = image[np.isfinite(image)]
            limit = float(np.percentile(np.abs(finite), 99.5)) if finite.size else 1.0
            ax.imshow(
                np.where(np.isfinite(image), image, 0.0),
                origin="lower",
                cmap="RdBu_r",
                vmin=-limit,
                vmax=limit or 1.0,
                interpolation="nearest",
            )
        else:
            ax.imshow(scaled_image(image), origin="lower", cmap="gray", interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
