"""Sky regions of stored exposures, read from their headers (no pixels).

An exposure's region is the footprint of its pixel grid through its WCS: the four outer pixel
corners that the writer stores beside the WCS (``sky_corners``), or, for exposures written
before that, the corners computed from the stored WCS cards and image shape.

The engine's spatial inputs (``{dataset: template, spatial: true}``) need the footprint of
every candidate dataset and of every quantum's own exposure when it plans a run. Reading a
header is two small JSON documents per exposure, so :class:`RegionReader` reads many at once
on a thread pool (object stores answer each request in tens of milliseconds; local disk in
well under one) and keeps what it read for the rest of the run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..core.region import SkyPolygon
from ..errors import DatasetError

__all__ = ["DatasetRegion", "RegionReader", "dataset_region"]

#: Headers read at once: enough to hide an object store's latency, small for local disk.
READ_THREADS = 16


@dataclass(frozen=True)
class DatasetRegion:
    """Where one exposure dataset lies on the sky.

    Attributes
    ----------
    polygon : SkyPolygon
        Footprint of the pixel bounding box through the stored WCS.
    band : str or None
        The data id's ``band``, else the visit info's, else ``metadata["band"]``; ``None``
        when none is known.
    """

    polygon: SkyPolygon
    band: str | None


def dataset_region(repo: Any, dataset_type: str, data_id: Mapping[str, Any]) -> DatasetRegion:
    """The sky region of one stored exposure.

    Raises
    ------
    DatasetError
        If the exposure has no WCS, or its corners do not map to the sky (the message names
        the dataset and data id).
    DatasetNotFoundError, CorruptDatasetError, StorageTypeError
        From :meth:`Repository.exposure_header`.
    """
    header = repo.exposure_header(dataset_type, **data_id)
    if header.wcs_cards is None:
        raise DatasetError(
            dataset_type, data_id, "has no WCS, so its sky region (for a spatial input) is unknown"
        )
    try:
        if header.sky_corners is not None:
            ra, dec = zip(*header.sky_corners, strict=True)
            polygon = SkyPolygon.from_radec(ra, dec)
        else:  # written before exposures stored their corners
            polygon = SkyPolygon.from_wcs(header.wcs, header.shape)
    except ValueError as exc:
        raise DatasetError(dataset_type, data_id, f"no sky region from its WCS: {exc}") from None
    band = data_id.get("band")
    if band is None and header.visit_info is not None and header.visit_info.band:
        band = header.visit_info.band
    if band is None:
        band = header.metadata.get("band")
    return DatasetRegion(polygon, None if band in (None, "") else str(band))


class RegionReader:
    """Reads and caches the regions of a repository's exposures for one planning run.

    Parameters
    ----------
    repo : Repository
    threads : int
        Headers read concurrently.
    """

    def __init__(self, repo: Any, threads: int = READ_THREADS):
        self.repo = repo
        self.threads = max(1, int(threads))
        self._cache: dict[tuple[str, tuple[tuple[str, Any], ...]], DatasetRegion] = {}
        self._lock = threading.Lock()

    def can_read(self, dataset_type: str) -> bool:
        """Whether datasets of this type are exposures (and so have a header to read)."""
        return self.repo.dataset_type(dataset_type).storage == "exposure"

    def read(self, dataset_type: str, data_ids: Sequence[Mapping[str, Any]]) -> list[DatasetRegion]:
        """Regions of the given datasets, in order; each header is read at most once.

        Raises
        ------
        DatasetError
            As :func:`dataset_region`, for the first failing dataset in ``data_ids`` order.
        """
        keys = [(dataset_type, tuple(sorted(d.items()))) for d in data_ids]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:

            def one(key: tuple[str, tuple[tuple[str, Any], ...]]) -> DatasetRegion:
                return dataset_region(self.repo, key[0], dict(key[1]))

            if len(missing) == 1 or self.threads == 1:
                found = [one(k) for k in missing]
            else:
                with ThreadPoolExecutor(min(self.threads, len(missing))) as pool:
                    found = list(pool.map(one, missing))
            with self._lock:
                self._cache.update(zip(missing, found, strict=True))
        return [self._cache[k] for k in keys]
