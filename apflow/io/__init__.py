"""Storage: a repository of datasets on local disk, ``memory://`` or S3, and FITS import/export.

- :class:`Repository` (:mod:`apflow.io.repository`): datasets addressed by a dataset type and a
  data id, laid out as ``<root>/<type>/<dim>=<value>/.../<type>.<ext>``.
- Dataset types and storage classes (:mod:`apflow.io.datasets`): ``exposure`` (Zarr v3 group,
  :mod:`apflow.io.exposure_zarr`), ``arrays`` (:class:`ArrayBundle`, a Zarr group of named
  arrays with JSON attributes; a plain ``dict`` of arrays is accepted on writing),
  ``dataframe`` (Parquet), ``json`` (``dict``), ``avro``/``png``/``fits`` (file bytes).
- Atomic writes on every backend through a commit marker written last (:mod:`apflow.io.atomic`).
- Nothing is ever unpickled: only JSON, Zarr, Parquet and the bytes of Avro, PNG and FITS files.
- Sky regions of stored exposures from their headers, for planning (:mod:`apflow.io.regions`).
- FITS (:mod:`apflow.io.fits`): :func:`read_exposure_fits`, :func:`ingest_fits`,
  :func:`write_exposure_fits`.

>>> from apflow.io import Repository
>>> repo = Repository.create("memory://demo", camera="mini")
>>> repo.put({"seeing": 0.7}, "truth_wcs", visit=1, detector=4)
>>> repo.get("truth_wcs", visit=1, detector=4)
{'seeing': 0.7}
"""

from .datasets import BUILTIN_DATASET_TYPES, STORAGE_EXTENSIONS, DatasetType
from .exposure_zarr import ArrayBundle
from .fits import ingest_fits, read_exposure_fits, write_exposure_fits
from .regions import DatasetRegion, RegionReader
from .repository import Repository

__all__ = [
    "BUILTIN_DATASET_TYPES",
    "STORAGE_EXTENSIONS",
    "ArrayBundle",
    "DatasetRegion",
    "DatasetType",
    "RegionReader",
    "Repository",
    "ingest_fits",
    "read_exposure_fits",
    "write_exposure_fits",
]
