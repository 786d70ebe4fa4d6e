import numpy as np
import pytest

from apflow.apdb.ids import MAX_INDEX, pack_source_ids, unpack_source_ids
from apflow.errors import ConfigError


def test_round_trip_and_uniqueness():
    ids = np.concatenate(
        [pack_source_ids(v, d, np.arange(50)) for v in (1, 2, 2**34) for d in (0, 4, 188)]
    )
    assert len(np.unique(ids)) == len(ids)
    assert ids.dtype == np.int64 and ids.min() >= 0
    visit, detector, index = unpack_source_ids(pack_source_ids(2**34, 188, [0, MAX_INDEX]))
    assert visit.tolist() == [2**34, 2**34]
    assert detector.tolist() == [188, 188]
    assert index.tolist() == [0, MAX_INDEX]


@pytest.mark.parametrize(
    "visit,detector,index", [(-1, 0, 0), (1, 256, 0), (1, 0, MAX_INDEX + 1), (2**36, 0, 0)]
)
def test_out_of_range_is_an_error(visit, detector, index):
    with pytest.raises(ConfigError):
        pack_source_ids(visit, detector, index)
