"""Integer ids of APDB rows, packed from the data id so that every worker can make them alone.

A DiaSource id packs ``(visit, detector, index)`` as Rubin's do: no central counter, no
collision between CCDs processed in parallel, and a rerun of a (visit, detector) makes the same
ids (so re-writing it replaces rows rather than adding new ones). A new DiaObject takes the id of
its first DiaSource, again as Rubin's association does.

Layout of the 63 usable bits: ``visit`` (35 bits) | ``detector`` (8 bits) | ``index`` (20 bits).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

_INDEX_BITS = 20
_DETECTOR_BITS = 8
_VISIT_BITS = 63 - _INDEX_BITS - _DETECTOR_BITS

MAX_INDEX = (1 << _INDEX_BITS) - 1
MAX_DETECTOR = (1 << _DETECTOR_BITS) - 1
MAX_VISIT = (1 << _VISIT_BITS) - 1


def pack_source_ids(visit: int, detector: int, index: np.ndarray | int) -> np.ndarray:
    """Ids of the sources ``index`` (0-based) of one (visit, detector).

    Raises
    ------
    ConfigError
        When the visit, detector or an index does not fit its bits (ids would collide).
    """
    visit, detector = int(visit), int(detector)
    idx = np.asarray(index, dtype=np.int64)
    if not 0 <= visit <= MAX_VISIT:
        raise ConfigError(f"visit {visit} does not fit a DiaSource id (0..{MAX_VISIT})")
    if not 0 <= detector <= MAX_DETECTOR:
        raise ConfigError(f"detector {detector} does not fit a DiaSource id (0..{MAX_DETECTOR})")
    if idx.size and (idx.min() < 0 or idx.max() > MAX_INDEX):
        raise ConfigError(
            f"visit {visit} detector {detector}: source index outside 0..{MAX_INDEX} "
            "(too many sources on one CCD for a DiaSource id)"
        )
    base = (visit << (_DETECTOR_BITS + _INDEX_BITS)) | (detector << _INDEX_BITS)
    return np.int64(base) | idx


def unpack_source_ids(ids: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(visit, detector, index)`` arrays of packed ids."""
    ids = np.asarray(ids, dtype=np.int64)
    index = ids & MAX_INDEX
    detector = (ids >> _INDEX_BITS) & MAX_DETECTOR
    visit = ids >> (_INDEX_BITS + _DETECTOR_BITS)
    return visit, detector, index
