"""Storage: the repository of datasets (Zarr exposures, Parquet catalogs, JSON, Avro, PNG) and FITS.

>>> from apflow.io import Repository
>>> repo = Repository.create("memory://demo", camera="mini")
>>> repo.put({"seeing": 0.7}, "truth_wcs", visit=1, detector=4)
>>> repo.get("truth_wcs", visit=1, detector=4)
{'seeing': 0.7}
"""

from .datasets import BUILTIN_DATASET_TYPES, STORAGE_EXTENSIONS, DatasetType
from .exposure_zarr import ArrayBundle
from .repository import Repository

__all__ = [
    "BUILTIN_DATASET_TYPES",
    "STORAGE_EXTENSIONS",
    "ArrayBundle",
    "DatasetType",
    "Repository",
]
