"""Workers get glibc's large-array allocator behaviour back (see ``tune_allocator``).

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which pins glibc's mmap
threshold at 128 KiB: every CCD-size numpy temporary became a fresh mmap and image tasks ran
1.4-1.9x slower in workers than in a plain process. The check is what the allocator does with
a 16 MiB array, read from ``mallinfo2`` in a child process started with the nanny's setting.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from apflow.engine.quantum import tune_allocator

CHILD = """
import ctypes, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from apflow.engine.quantum import tune_allocator
    assert tune_allocator()
before = libc.mallinfo2().hblks
array = np.ones(4 * 1024 * 1024, dtype=np.float32)  # 16 MiB
print(libc.mallinfo2().hblks - before)
"""


def _mmapped_blocks(mode: str) -> int:
    env = {"MALLOC_TRIM_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_worker_setting_mmaps_every_large_array_and_tuning_undoes_it():
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33")
    assert _mmapped_blocks("plain") == 1  # the nanny's setting: a fresh mmap per array
    assert _mmapped_blocks("tuned") == 0  # from the heap, reused without page faults


def test_tuning_is_idempotent():
    assert tune_allocator() == tune_allocator()
