"""Exceptions raised by apflow.

Every error that concerns stored data names the dataset type and the data id, so an operator
reading a log of thousands of quanta can find the one that failed without a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_data_id(data_id: Mapping[str, Any] | None) -> str:
    """Render a data id as ``visit=12, detector=4`` (keys in sorted order)."""
    if not data_id:
        return "{}"
    return ", ".join(f"{key}={data_id[key]}" for key in sorted(data_id))


class ApflowError(Exception):
    """Base class of every apflow error."""


class DatasetError(ApflowError):
    """A problem with one dataset in a repository.

    Parameters
    ----------
    dataset_type : str
        Name of the dataset type, e.g. ``"calexp"``.
    data_id : mapping or None
        Data id of the dataset.
    message : str
        What is wrong.
    """

    def __init__(self, dataset_type: str, data_id: Mapping[str, Any] | None, message: str):
        self.dataset_type = dataset_type
        self.data_id = dict(data_id or {})
        self.reason = message
        super().__init__(f"{dataset_type} [{format_data_id(data_id)}]: {message}")


class DatasetNotFoundError(DatasetError, LookupError):
    """The requested dataset does not exist (or is not complete) in the repository."""

    def __init__(self, dataset_type: str, data_id: Mapping[str, Any] | None, where: str = ""):
        detail = f"no such dataset{f' in {where}' if where else ''}"
        super().__init__(dataset_type, data_id, detail)


class DatasetExistsError(DatasetError):
    """A dataset already exists and overwriting was not requested."""

    def __init__(self, dataset_type: str, data_id: Mapping[str, Any] | None):
        super().__init__(dataset_type, data_id, "already exists (use overwrite=True to replace it)")


class CorruptDatasetError(DatasetError):
    """A stored dataset could not be decoded (truncated, wrong format, checksum mismatch)."""


class StorageTypeError(DatasetError, TypeError):
    """An object's Python type does not fit the storage class of its dataset type."""


class InvalidDataIdError(ApflowError, ValueError):
    """A data id key or value is not allowed (wrong type, unsafe characters, missing keys)."""


class UnknownDatasetTypeError(ApflowError, KeyError):
    """A dataset type name that the repository does not know."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DatasetTypeConflictError(ApflowError, ValueError):
    """A dataset type is registered again with different dimensions or storage."""


class RepositoryError(ApflowError):
    """The repository itself cannot be created or opened."""


class IngestError(ApflowError):
    """A file could not be ingested (unreadable, missing header keyword, bad shape)."""


class ConfigError(ApflowError, ValueError):
    """A task or workflow configuration value is invalid."""


class WorkflowError(ApflowError):
    """A workflow definition is invalid (unknown task, dataset type, cycle, bad dimensions)."""


class ApdbError(ApflowError):
    """The APDB cannot be opened, has another schema version, or a write is inconsistent."""


class TaskError(ApflowError):
    """An algorithm could not produce a valid result for its input."""


class AstrometryError(TaskError):
    """The astrometric fit failed (no overlap with the reference catalog, too few matches, ...)."""


class PhotometryError(TaskError):
    """The photometric calibration failed (too few matched stars, ...)."""


class PsfError(TaskError):
    """A PSF model could not be determined."""
