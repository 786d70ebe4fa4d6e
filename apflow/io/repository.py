"""The repository: datasets addressed by dataset type and data id under one root URL.

Layout::

    <root>/apflow.json                                   version, camera, dataset types
    <root>/<dataset_type>/<dim>=<value>/.../_COMMITTED.json   commit marker (see atomic.py)
    <root>/<dataset_type>/<dim>=<value>/.../<dataset_type>.<ext>   the payload

Directories follow the dataset type's dimension order, e.g.
``calexp/visit=12/detector=4/calexp.zarr``. A dataset exists when its commit marker exists
(:mod:`apflow.io.atomic`), so readers never see a half-written dataset on any backend.

A :class:`Repository` is cheap: it holds the URL, the storage options and a cached copy of
``apflow.json``. It pickles as its URL and options (never data), so it can be shipped to Dask
workers, which reopen it on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..core import Camera, get_camera
from ..core.dataid import IMPLIED_KEYS, DataId
from ..errors import (
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeConflictError,
    InvalidDataIdError,
    RepositoryError,
    StorageTypeError,
    UnknownDatasetTypeError,
)
from . import strict_json
from .atomic import MARKER, MarkerError, clean_dataset_dir, read_commit, read_dataset, write_dataset
from .backend import TMP_PREFIX, Backend
from .datasets import BUILTIN_DATASET_TYPES, DatasetType, parse_path_value
from .exposure_zarr import ExposureHeader, read_exposure_header
from .formats import FORMATS

CONFIG_FILE = "apflow.json"
#: Beside a dataset that a task chose not to produce (see :meth:`Repository.mark_not_produced`).
NOT_PRODUCED = "_NOT_PRODUCED.json"
CONFIG_VERSION = 1


class Repository:
    """Datasets of one survey under a root URL (local path, ``file://``, ``memory://``, ``s3://``).

    Parameters
    ----------
    url : str
        Root of an existing repository (made by :meth:`create`).
    storage_options : dict, optional
        fsspec options, e.g. ``{"key": ..., "secret": ..., "endpoint_url": ...}`` for S3.

    Raises
    ------
    RepositoryError
        If there is no readable ``apflow.json`` at ``url``.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self._open_lazily(url, storage_options)
        self._load_config()

    def _open_lazily(self, url: str, storage_options: dict[str, Any] | None) -> None:
        self._url_given = str(url)
        self._storage_options = dict(storage_options or {})
        self._backend_cache: Backend | None = None
        self._config: dict[str, Any] | None = None
        self._types: dict[str, DatasetType] | None = None
        self._camera: Camera | None = None

    @classmethod
    def create(
        cls,
        url: str,
        camera: str | Camera = "mini",
        exist_ok: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> Repository:
        """Create a repository (write ``<url>/apflow.json``) and return it opened.

        Parameters
        ----------
        url : str
            Root URL; directories are created as needed.
        camera : str or Camera
            Built-in camera name (``"mini"``, ``"lsstcam"``) or a :class:`~apflow.core.Camera`.
            Used only when the repository is new.
        exist_ok : bool
            Open an existing repository instead of raising.
        storage_options : dict, optional
            fsspec options.

        Raises
        ------
        RepositoryError
            If a repository exists and ``exist_ok`` is false, or the location is not writable.
        """
        backend = Backend(url, storage_options)
        config_path = backend.path(CONFIG_FILE)
        if backend.read_bytes_or_none(config_path) is not None:
            if not exist_ok:
                raise RepositoryError(f"{backend.url}: a repository already exists there")
            return cls(url, storage_options)
        if isinstance(camera, str):
            camera_obj = get_camera(camera)
        elif isinstance(camera, Camera):
            camera_obj = camera
        else:
            raise TypeError(f"camera must be a name or a Camera, got {type(camera).__name__}")
        config = {
            "apflow_repository": CONFIG_VERSION,
            "apflow_version": __version__,
            "created": _now(),
            "camera": camera_obj.to_dict(),
            "dataset_types": {n: t.to_dict() for n, t in BUILTIN_DATASET_TYPES.items()},
        }
        try:
            backend.makedirs(backend.root)
            backend.write_file_atomic(config_path, strict_json.dumps(config))
        except OSError as exc:
            raise RepositoryError(f"{backend.url}: cannot create a repository: {exc}") from exc
        return cls(url, storage_options)

    # --- pickling: URL and options only -----------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._url_given, self._storage_options))

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    # --- properties ---------------------------------------------------------------------------

    @property
    def _backend(self) -> Backend:
        if self._backend_cache is None:
            self._backend_cache = Backend(self._url_given, self._storage_options)
        return self._backend_cache

    @property
    def url(self) -> str:
        """Root URL (an absolute path for local repositories)."""
        return self._backend.url

    @property
    def storage_options(self) -> dict[str, Any]:
        """The fsspec options the repository was opened with."""
        return dict(self._storage_options)

    @property
    def camera(self) -> Camera:
        """The repository's camera."""
        if self._camera is None:
            self._camera = Camera.from_dict(self._load_config()["camera"])
        return self._camera

    # --- dataset types ------------------------------------------------------------------------

    def dataset_type(self, name: str) -> DatasetType:
        """The definition of a dataset type.

        Raises
        ------
        UnknownDatasetTypeError
            Listing the known names.
        """
        known = self._known_types()
        if name not in known:
            known = self._known_types(reload=True)  # registered by another process meanwhile?
        if name not in known:
            raise UnknownDatasetTypeError(
                f"unknown dataset type {name!r} in {self.url}; known: {', '.join(sorted(known))}"
            )
        return known[name]

    def register_dataset_type(self, name: str, dimensions: Iterable[str], storage: str) -> None:
        """Add a dataset type to ``apflow.json``; registering it again identically is a no-op.

        Raises
        ------
        DatasetTypeConflictError
            If ``name`` exists with other dimensions or storage.
        ValueError
            If the name, a dimension or the storage class is invalid.
        """
        new = DatasetType(name, tuple(dimensions), storage)
        # apflow.json is read-modify-written; re-reading after the write catches (and repeats) a
        # registration lost to a concurrent writer, which is good enough for a rare operation.
        for _ in range(5):
            existing = self._known_types(reload=True).get(name)
            if existing == new:
                return
            if existing is not None:
                raise DatasetTypeConflictError(
                    f"dataset type {name!r} is already {list(existing.dimensions)} "
                    f"{existing.storage!r}; cannot register it as {list(new.dimensions)} "
                    f"{new.storage!r}"
                )
            config = self._load_config(reload=True)
            config["dataset_types"][name] = new.to_dict()
            self._backend.write_file_atomic(
                self._backend.path(CONFIG_FILE), strict_json.dumps(config)
            )
        raise RepositoryError(f"{self.url}: could not register {name!r} (concurrent updates)")

    def outdated_dataset_types(
        self, definitions: Mapping[str, DatasetType] | None = None
    ) -> dict[str, tuple[DatasetType, DatasetType]]:
        """Dataset types this repository registered with an older definition.

        Parameters
        ----------
        definitions : mapping, optional
            Current definitions beyond the built-in types (those the workflows declare).

        Returns
        -------
        dict
            ``{name: (registered, current)}``; empty when the repository is up to date.
        """
        known = {**BUILTIN_DATASET_TYPES, **(definitions or {})}
        config = self._load_config(reload=True)
        out = {}
        for name, spec in config["dataset_types"].items():
            current = known.get(name)
            registered = DatasetType.from_dict(name, spec)
            if current is not None and registered != current:
                out[name] = (registered, current)
        return out

    def upgrade_dataset_type(
        self, name: str, definitions: Mapping[str, DatasetType] | None = None
    ) -> int:
        """Drop an outdated dataset type's registration (see :meth:`outdated_dataset_types`)
        and delete its stored datasets; a built-in type then has its current definition, and
        a workflow's type is registered anew by the next run.

        The datasets are laid out under the old data ids and cannot be moved without knowing
        the new keys' values; upgradable types are derived products (sky frames) that the
        workflow that made them rebuilds. Run it when nothing else writes the repository.

        Returns
        -------
        int
            Datasets deleted.

        Raises
        ------
        DatasetTypeConflictError
            If ``name`` is not outdated.
        """
        if name not in self.outdated_dataset_types(definitions):
            raise DatasetTypeConflictError(
                f"{self.url}: {name!r} is not a dataset type with an outdated definition"
            )
        ids = self.data_ids(name)
        for data_id in ids:
            self.remove(name, **data_id)
        for data_id in self.not_produced_ids(name):
            self.remove(name, **data_id)
        config = self._load_config(reload=True)
        del config["dataset_types"][name]
        self._backend.write_file_atomic(self._backend.path(CONFIG_FILE), strict_json.dumps(config))
        self._known_types(reload=True)
        return len(ids)

    def dataset_types(self) -> list[str]:
        """Sorted names of the dataset types that have at least one dataset."""
        known = self._known_types(reload=True)
        present = set(self._backend.list_dir(self._backend.root))
        return [n for n in sorted(known) if n in present and self._has_any(known[n])]

    # --- datasets -----------------------------------------------------------------------------

    def put(
        self,
        obj: Any,
        dataset_type: str,
        *,
        overwrite: bool = False,
        provenance: Mapping[str, Any] | None = None,
        **data_id: Any,
    ) -> None:
        """Store ``obj`` as one dataset, atomically.

        Parameters
        ----------
        obj : object
            Of the Python type of the dataset type's storage class (see :mod:`apflow.io.datasets`).
        dataset_type : str
        overwrite : bool
            Replace an existing dataset (the old one stays readable until the new one is complete).
        provenance : dict, optional
            JSON-serialisable record of how ``obj`` was made; read back with :meth:`provenance`.
        **data_id
            Exactly the dataset type's dimensions.

        Raises
        ------
        InvalidDataIdError, UnknownDatasetTypeError, DatasetExistsError
        StorageTypeError
            If ``obj`` is not of the storage class's Python type.
        """
        dtype = self.dataset_type(dataset_type)
        did = dtype.validate_data_id(data_id)
        fmt = FORMATS[dtype.storage]
        try:
            prepared = fmt.check(obj)
        except TypeError as exc:
            raise StorageTypeError(dataset_type, did, str(exc)) from None
        try:
            prov = strict_json.to_jsonable(dict(provenance or {}))
        except TypeError as exc:
            raise TypeError(f"{dataset_type} {did}: provenance is not JSON: {exc}") from None
        record = {
            "dataset_type": dataset_type,
            "data_id": did,
            "storage": dtype.storage,
            "written": _now(),
            "apflow_version": __version__,
            "provenance": prov,
        }
        backend = self._backend
        directory = self._dataset_dir(dtype, did)
        try:
            write_dataset(
                backend,
                directory,
                dtype.filename,
                lambda path: fmt.write(backend, path, prepared, prov),
                record,
                overwrite,
                lambda: DatasetExistsError(dataset_type, did),
            )
        except BaseException:
            backend.remove_empty_parents(directory, stop=backend.root)
            raise

    def get(self, dataset_type: str, **data_id: Any) -> Any:
        """Read one dataset.

        Keys that the others imply may be left out when the stored datasets leave one choice:
        ``get("sky_frame", detector=4)`` reads detector 4's frame when frames of only one
        ``physical_filter`` exist (:data:`~apflow.core.dataid.IMPLIED_DIMENSIONS`; the same in
        :meth:`exists`, :meth:`exposure_header` and :meth:`provenance`).

        Raises
        ------
        DatasetNotFoundError
            If it does not exist (or is not complete).
        InvalidDataIdError
            If the keys do not name one dataset (a left-out key with several stored values).
        CorruptDatasetError
            If it exists but cannot be decoded.
        """
        dtype = self.dataset_type(dataset_type)
        did = self._read_id(dtype, data_id)
        fmt = FORMATS[dtype.storage]
        backend = self._backend
        directory = self._dataset_dir(dtype, did)
        try:
            result = read_dataset(
                backend, directory, lambda path: fmt.read(backend, path), fmt.is_directory
            )
        except MarkerError as exc:
            raise CorruptDatasetError(dataset_type, did, str(exc)) from exc
        except Exception as exc:
            raise CorruptDatasetError(
                dataset_type,
                did,
                f"cannot read {backend.full_url(directory)}: {type(exc).__name__}: {exc}",
            ) from exc
        if result is None:
            raise DatasetNotFoundError(dataset_type, did, where=self.url)
        return result[0]

    def exposure_header(self, dataset_type: str, **data_id: Any) -> ExposureHeader:
        """Read an exposure's shape, WCS, visit info and metadata without its pixels.

        Planning uses it to place datasets on the sky (:mod:`apflow.io.regions`).

        Raises
        ------
        StorageTypeError
            If the dataset type is not stored as an exposure.
        DatasetNotFoundError, CorruptDatasetError
        """
        dtype = self.dataset_type(dataset_type)
        did = self._read_id(dtype, data_id)
        if dtype.storage != "exposure":
            raise StorageTypeError(
                dataset_type, did, f"storage is {dtype.storage!r}, not an exposure: no header"
            )
        backend = self._backend
        directory = self._dataset_dir(dtype, did)
        try:
            result = read_dataset(
                backend,
                directory,
                lambda path: read_exposure_header(backend, path),
                multi_object=True,
            )
        except MarkerError as exc:
            raise CorruptDatasetError(dataset_type, did, str(exc)) from exc
        except Exception as exc:
            raise CorruptDatasetError(
                dataset_type,
                did,
                f"cannot read the header of {backend.full_url(directory)}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        if result is None:
            raise DatasetNotFoundError(dataset_type, did, where=self.url)
        return result[0]

    def exists(self, dataset_type: str, **data_id: Any) -> bool:
        """True if the dataset exists and is complete (see :meth:`get` for implied keys)."""
        dtype = self.dataset_type(dataset_type)
        try:
            did = self._read_id(dtype, data_id)
        except DatasetNotFoundError:
            return False
        path = f"{self._dataset_dir(dtype, did)}/{MARKER}"
        return self._backend.read_bytes_or_none(path) is not None

    def _read_id(self, dtype: DatasetType, data_id: Mapping[str, Any]) -> DataId:
        """The full data id a read names, filling left-out implied keys from what is stored."""
        missing = [d for d in dtype.dimensions if d not in data_id]
        if not missing or not set(missing) <= IMPLIED_KEYS:
            return dtype.validate_data_id(data_id)
        found = self.data_ids(dtype.name, **data_id)
        if len(found) == 1:
            return found[0]
        given = dtype.validate_constraints(data_id)
        if not found:
            raise DatasetNotFoundError(dtype.name, given, where=self.url)
        choices = sorted({tuple(str(i[d]) for d in missing) for i in found})
        raise InvalidDataIdError(
            f"{dtype.name} {given}: stored for several {missing} ({choices}); give one"
        )

    def data_ids(self, dataset_type: str, **constraints: Any) -> list[DataId]:
        """Data ids of the complete datasets of a type, sorted.

        Parameters
        ----------
        dataset_type : str
        **constraints
            Keep only data ids with these values (e.g. ``visit=3``).

        Returns
        -------
        list of dict
            Keys in dimension order; sorted by the values in that order (integers before names).
        """
        return self._find_ids(dataset_type, constraints, MARKER)

    def mark_not_produced(
        self,
        dataset_type: str,
        *,
        provenance: Mapping[str, Any] | None = None,
        **data_id: Any,
    ) -> None:
        """Record that a completed task chose not to produce this dataset (its result was None).

        The engine's resume treats the dataset as done, so the quantum is not rerun. The record
        is a small JSON file beside where the dataset would be (``_NOT_PRODUCED.json``), written
        atomically; the dataset itself still does not exist. :meth:`remove` deletes it, and a
        dataset written later takes precedence.

        Raises
        ------
        InvalidDataIdError, UnknownDatasetTypeError
        """
        dtype = self.dataset_type(dataset_type)
        did = dtype.validate_data_id(data_id)
        record = {
            "dataset_type": dataset_type,
            "data_id": did,
            "written": _now(),
            "apflow_version": __version__,
            "provenance": strict_json.to_jsonable(dict(provenance or {})),
        }
        path = f"{self._dataset_dir(dtype, did)}/{NOT_PRODUCED}"
        self._backend.write_file_atomic(path, strict_json.dumps(record))

    def not_produced_ids(self, dataset_type: str, **constraints: Any) -> list[DataId]:
        """Data ids recorded by :meth:`mark_not_produced`, sorted as :meth:`data_ids`.

        Some of them may exist as well (produced by a later run); :meth:`exists` decides.
        """
        return self._find_ids(dataset_type, constraints, NOT_PRODUCED)

    def _find_ids(
        self, dataset_type: str, constraints: Mapping[str, Any], filename: str
    ) -> list[DataId]:
        """Data ids of the dataset directories of a type that hold ``filename``."""
        dtype = self.dataset_type(dataset_type)
        wanted = dtype.validate_constraints(dict(constraints))
        dims = dtype.dimensions
        # leading dimensions fixed by the constraints narrow the listing to one subdirectory
        fixed = 0
        while fixed < len(dims) and dims[fixed] in wanted:
            fixed += 1
        base = self._backend.path(dtype.name, *(f"{d}={wanted[d]}" for d in dims[:fixed]))
        depth = len(dims) - fixed + 1
        found = []
        for rel in self._backend.find_files(base, max_depth=depth):
            parts = rel.split("/")
            if len(parts) != depth or parts[-1] != filename:
                continue
            did = {d: wanted[d] for d in dims[:fixed]}
            for dim, part in zip(dims[fixed:], parts[:-1], strict=True):
                key, sep, value = part.partition("=")
                if key != dim or not sep:
                    break
                did[dim] = parse_path_value(value)
            else:
                if all(did[k] == v for k, v in wanted.items()):
                    found.append({d: did[d] for d in dims})
        return sorted(found, key=lambda d: [_sort_key(d[k]) for k in dims])

    def remove(self, dataset_type: str, **data_id: Any) -> None:
        """Delete a dataset (its marker first, so it disappears at once), and any record that it
        was not produced (:meth:`mark_not_produced`).

        Raises
        ------
        DatasetNotFoundError
        """
        dtype = self.dataset_type(dataset_type)
        did = dtype.validate_data_id(data_id)
        directory = self._dataset_dir(dtype, did)
        backend = self._backend
        if backend.read_bytes_or_none(f"{directory}/{MARKER}") is None:
            if backend.read_bytes_or_none(f"{directory}/{NOT_PRODUCED}") is None:
                raise DatasetNotFoundError(dataset_type, did, where=self.url)
        else:
            backend.remove(f"{directory}/{MARKER}")
        # a "not produced" record must not outlive the dataset: a resume would skip its quantum
        backend.remove(f"{directory}/{NOT_PRODUCED}")
        clean_dataset_dir(backend, directory, dtype.filename)
        backend.remove_empty_parents(directory, stop=backend.root)

    def provenance(self, dataset_type: str, **data_id: Any) -> dict[str, Any]:
        """What ``put(provenance=...)`` recorded, plus ``written`` (UTC) and ``apflow_version``."""
        dtype = self.dataset_type(dataset_type)
        did = self._read_id(dtype, data_id)
        record = self._commit_record(dtype, did)
        return {
            **(record.get("provenance") or {}),
            "written": record.get("written"),
            "apflow_version": record.get("apflow_version"),
        }

    def uri(self, dataset_type: str, **data_id: Any) -> str:
        """URL of the dataset's payload (where it would be written if it does not exist)."""
        dtype = self.dataset_type(dataset_type)
        did = dtype.validate_data_id(data_id)
        directory = self._dataset_dir(dtype, did)
        try:
            commit = read_commit(self._backend, directory)
        except MarkerError:
            commit = None
        name = commit.file if commit is not None else dtype.filename
        return self._backend.full_url(f"{directory}/{name}")

    def clean_incomplete(self) -> list[str]:
        """Remove leftovers of interrupted writes and finish interrupted overwrites.

        Run it when no process is writing to the repository: it cannot tell a temporary of a
        running write from one of a crashed write.

        Returns
        -------
        list of str
            URLs of what was removed.
        """
        backend = self._backend
        removed = []
        for name in backend.list_dir(backend.root):
            if name.startswith(TMP_PREFIX):  # an interrupted apflow.json update
                backend.remove(backend.path(name))
                removed.append(backend.path(name))
        for dtype in self._known_types(reload=True).values():
            type_dir = backend.path(dtype.name)
            dims = dtype.dimensions
            dataset_dirs = set()
            for rel in backend.find_files(type_dir):
                parts = rel.split("/")
                if len(parts) > len(dims) and all(
                    p.startswith(f"{d}=") for d, p in zip(dims, parts, strict=False)
                ):
                    dataset_dirs.add("/".join(parts[: len(dims)]))
            for rel_dir in sorted(dataset_dirs):
                directory = f"{type_dir}/{rel_dir}" if rel_dir else type_dir
                removed += clean_dataset_dir(backend, directory, dtype.filename)
            backend.remove_empty_dirs(type_dir)
        return [backend.full_url(p) for p in removed]

    # --- helpers ------------------------------------------------------------------------------

    def _dataset_dir(self, dtype: DatasetType, data_id: DataId) -> str:
        return self._backend.path(dtype.relative_dir(data_id))

    def _commit_record(self, dtype: DatasetType, data_id: DataId) -> dict[str, Any]:
        try:
            commit = read_commit(self._backend, self._dataset_dir(dtype, data_id))
        except MarkerError as exc:
            raise CorruptDatasetError(dtype.name, data_id, str(exc)) from exc
        if commit is None:
            raise DatasetNotFoundError(dtype.name, data_id, where=self.url)
        return commit.record

    def _has_any(self, dtype: DatasetType) -> bool:
        """True if at least one dataset of the type exists (stops at the first one found)."""
        backend = self._backend

        def search(directory: str, level: int) -> bool:
            if level == len(dtype.dimensions):
                return backend.exists(f"{directory}/{MARKER}")
            prefix = f"{dtype.dimensions[level]}="
            return any(
                search(f"{directory}/{entry}", level + 1)
                for entry in backend.list_dir(directory)
                if entry.startswith(prefix)
            )

        return search(backend.path(dtype.name), 0)

    def _load_config(self, reload: bool = False) -> dict[str, Any]:
        if self._config is not None and not reload:
            return self._config
        backend = self._backend
        data = backend.read_bytes_or_none(backend.path(CONFIG_FILE))
        if data is None:
            raise RepositoryError(
                f"{backend.url} is not an apflow repository (no {CONFIG_FILE}; "
                "create one with Repository.create)"
            )
        try:
            config = strict_json.loads(data)
            config["camera"], config["dataset_types"]  # noqa: B018 (presence check)
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{backend.url}/{CONFIG_FILE} is unreadable: {exc}") from exc
        self._config = config
        self._types = None
        return config

    def _known_types(self, reload: bool = False) -> dict[str, DatasetType]:
        if reload or self._types is None:
            config = self._load_config(reload=reload)
            known = dict(BUILTIN_DATASET_TYPES)
            for name, spec in config["dataset_types"].items():
                known[name] = DatasetType.from_dict(name, spec)
            self._types = known
        return self._types


def _reopen(url: str, storage_options: dict[str, Any]) -> Repository:
    """Unpickle: the configuration is read on first use, on the worker."""
    repo = Repository.__new__(Repository)
    repo._open_lazily(url, storage_options)
    return repo


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sort_key(value: int | str) -> tuple[int, int | str]:
    return (0, value) if isinstance(value, int) else (1, value)


__all__ = ["Repository"]
