"""apflow: survey image processing as Dask graphs over Zarr-backed exposures.

The top-level names are imported lazily so that ``import apflow`` (and the CLI's ``--help``)
stays fast and does not start Dask.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("apflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_LAZY = {
    "Repository": "apflow.io",
    "run": "apflow.engine",
    "RunSummary": "apflow.engine",
    "simulate": "apflow.sim",
    "Exposure": "apflow.core",
    "Camera": "apflow.core",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'apflow' has no attribute {name!r}")
