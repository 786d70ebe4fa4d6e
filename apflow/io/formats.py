"""Reading and writing one payload per storage class.

Every storage class has a :class:`Format` that checks the Python type of an object before
anything is written, writes the payload at a backend path and reads it back. Formats know
nothing about commit markers or data ids; :mod:`apflow.io.repository` wraps them in the commit
protocol and turns their exceptions into errors that name the dataset.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.storage import FsspecStore, LocalStore

from .. import __version__
from ..core import Exposure
from . import exposure_zarr, strict_json
from .backend import Backend
from .exposure_zarr import ArrayBundle, StrictStore

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

PARQUET_METADATA_KEY = b"apflow"
# Leading bytes of each file-type payload: checked on writing (to refuse the wrong bytes) and on
# reading (to report a damaged file as corrupt rather than handing garbage to the consumer).
MAGIC = {
    "avro": b"Obj\x01",
    "png": b"\x89PNG\r\n\x1a\n",
    "fits": b"SIMPLE  =",
}
_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def zarr_store(backend: Backend, path: str, read_only: bool) -> Any:
    """A zarr store at a backend path; reading stores raise on missing chunks."""
    if backend.is_local:
        store: Any = LocalStore(path, read_only=read_only)
    else:
        store = FsspecStore.from_url(
            backend.full_url(path),
            storage_options=backend.storage_options or None,
            read_only=read_only,
        )
    return StrictStore(store) if read_only else store


class Format:
    """How one storage class is written and read."""

    storage: str = ""
    python_type: str = ""
    is_directory = False

    def check(self, obj: Any) -> Any:
        """Return ``obj`` ready to write, or raise ``TypeError`` naming the expected type."""
        raise NotImplementedError

    def write(self, backend: Backend, path: str, obj: Any, provenance: dict[str, Any]) -> None:
        """Write the payload at ``path`` (which does not exist yet)."""
        raise NotImplementedError

    def read(self, backend: Backend, path: str) -> Any:
        """Read the payload at ``path``; any exception means it is damaged or missing."""
        raise NotImplementedError

    def _wrong_type(self, obj: Any) -> TypeError:
        return TypeError(
            f"storage class {self.storage!r} stores {self.python_type}, "
            f"got {type(obj).__module__}.{type(obj).__qualname__}"
        )


class ExposureFormat(Format):
    storage = "exposure"
    python_type = "apflow.core.Exposure"
    is_directory = True

    def check(self, obj: Any) -> Exposure:
        if not isinstance(obj, Exposure):
            raise self._wrong_type(obj)
        return obj

    def write(self, backend: Backend, path: str, obj: Exposure, provenance: dict[str, Any]) -> None:
        exposure_zarr.write_exposure(zarr_store(backend, path, read_only=False), obj, provenance)

    def read(self, backend: Backend, path: str) -> Exposure:
        return exposure_zarr.read_exposure(zarr_store(backend, path, read_only=True))


class ArraysFormat(Format):
    storage = "arrays"
    python_type = "apflow.io.ArrayBundle or dict[str, numpy.ndarray]"
    is_directory = True

    def check(self, obj: Any) -> ArrayBundle:
        if isinstance(obj, ArrayBundle):
            arrays, attrs = obj.arrays, obj.attrs
        elif isinstance(obj, Mapping):
            arrays, attrs = obj, {}
        else:
            raise self._wrong_type(obj)
        checked = {}
        for name, value in arrays.items():
            if not isinstance(name, str) or not _ARRAY_NAME.match(name):
                raise TypeError(f"array name {name!r}: use letters, digits, '_', '.', '-'")
            if not isinstance(value, np.ndarray):
                raise TypeError(
                    f"{self.storage!r} storage: array {name!r} is a {type(value).__name__}, "
                    "not a numpy.ndarray"
                )
            if value.dtype.kind not in "biufc":
                raise TypeError(
                    f"{self.storage!r} storage: array {name!r} has dtype {value.dtype}; "
                    "only numeric and boolean arrays are stored"
                )
            checked[name] = value
        strict_json.to_jsonable(attrs)  # raises TypeError now rather than halfway through a write
        return ArrayBundle(checked, dict(attrs))

    def write(
        self, backend: Backend, path: str, obj: ArrayBundle, provenance: dict[str, Any]
    ) -> None:
        exposure_zarr.write_arrays(zarr_store(backend, path, read_only=False), obj, provenance)

    def read(self, backend: Backend, path: str) -> ArrayBundle:
        return exposure_zarr.read_arrays(zarr_store(backend, path, read_only=True))


class DataFrameFormat(Format):
    storage = "dataframe"
    python_type = "pandas.DataFrame"

    def check(self, obj: Any) -> pa.Table:
        # pandas and pyarrow load only when a catalog is stored: a worker that only touches
        # exposures starts about a second faster. An object cannot be a DataFrame unless
        # pandas has been imported.
        pandas = sys.modules.get("pandas")
        if pandas is None or not isinstance(obj, pandas.DataFrame):
            raise self._wrong_type(obj)
        import pyarrow as pa

        try:
            # pandas metadata in the schema restores dtypes, index and column order exactly
            return pa.Table.from_pandas(obj)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise TypeError(f"DataFrame cannot be stored as Parquet: {exc}") from exc

    def write(self, backend: Backend, path: str, obj: pa.Table, provenance: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        extra = {"provenance": provenance, "apflow_version": __version__}
        metadata = dict(obj.schema.metadata or {})
        metadata[PARQUET_METADATA_KEY] = strict_json.dumps(extra)
        table = obj.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        backend.write_file(path, sink.getvalue().to_pybytes())

    def read(self, backend: Backend, path: str) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if backend.is_local:
            table = pq.read_table(path, memory_map=True)
        else:
            table = pq.read_table(pa.BufferReader(backend.read_bytes(path)))
        return table.to_pandas()


class JsonFormat(Format):
    storage = "json"
    python_type = "dict (JSON values)"

    def check(self, obj: Any) -> bytes:
        if not isinstance(obj, Mapping):
            raise self._wrong_type(obj)
        return strict_json.dumps(obj)

    def write(self, backend: Backend, path: str, obj: bytes, provenance: dict[str, Any]) -> None:
        backend.write_file(path, obj)

    def read(self, backend: Backend, path: str) -> dict[str, Any]:
        value = strict_json.loads(backend.read_bytes(path))
        if not isinstance(value, dict):
            raise ValueError(f"JSON payload is a {type(value).__name__}, not an object")
        return value


class FileBytesFormat(Format):
    """Opaque bytes of a file another tool reads (Avro alerts, PNG plots, FITS cutouts)."""

    is_directory = False

    def __init__(self, storage: str):
        self.storage = storage
        self.python_type = f"bytes of a .{storage} file"

    def check(self, obj: Any) -> bytes:
        if not isinstance(obj, (bytes, bytearray, memoryview)):
            raise self._wrong_type(obj)
        data = bytes(obj)
        if not data.startswith(MAGIC[self.storage]):
            raise TypeError(
                f"{self.storage!r} storage: bytes do not start like a .{self.storage} file "
                f"(expected {MAGIC[self.storage]!r}, got {data[:8]!r})"
            )
        return data

    def write(self, backend: Backend, path: str, obj: bytes, provenance: dict[str, Any]) -> None:
        backend.write_file(path, obj)

    def read(self, backend: Backend, path: str) -> bytes:
        data = backend.read_bytes(path)
        if not data.startswith(MAGIC[self.storage]):
            raise ValueError(f"content does not start like a .{self.storage} file")
        return data


FORMATS: dict[str, Format] = {
    "exposure": ExposureFormat(),
    "arrays": ArraysFormat(),
    "dataframe": DataFrameFormat(),
    "json": JsonFormat(),
    "avro": FileBytesFormat("avro"),
    "png": FileBytesFormat("png"),
    "fits": FileBytesFormat("fits"),
}
