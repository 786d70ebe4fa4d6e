"""Workers of the clusters the engine starts run quanta as fast as a plain process.

``apflow.engine.cluster.WORKER_CONFIG`` gives them one malloc arena (a quantum runs in the
worker's executor thread, whose own glibc arena page-faulted CCD-size temporaries in afresh:
``FocalPlanePartialTask`` took 0.45-0.55 CPU s per LSSTCam CCD instead of 0.38-0.40) and a
100 ms profiler interval (at the 10 ms default the worker's other threads used 6-9% of
``MaskObjectsTask``'s CPU time, at 100 ms 3%).
Checked on real worker processes of ``connect(workers=1)``: the environment and Dask config
they see, the profiler's running period, and how many arenas glibc reports after the task
thread allocated a CCD plane.
"""

from __future__ import annotations

import sys

import pytest

from apflow.engine.cluster import WORKER_CONFIG, connect


def test_engine_workers_use_one_malloc_arena_and_a_slower_profiler():
    # nested, so that it is pickled by value: workers cannot import the test modules
    def probe() -> dict:
        import ctypes
        import os
        import re
        import tempfile

        import dask
        import numpy as np
        from distributed import get_worker

        plane = np.ones(4096 * 4096, dtype=np.float32)  # the task thread allocates a CCD plane
        arenas = None
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.fopen.restype = ctypes.c_void_p
            libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            libc.fclose.argtypes = [ctypes.c_void_p]
            with tempfile.TemporaryDirectory() as directory:
                path = os.path.join(directory, "malloc.xml")
                handle = libc.fopen(path.encode(), b"w")
                libc.malloc_info(0, handle)
                libc.fclose(handle)
                with open(path) as xml:
                    arenas = len(re.findall(r"<heap nr=", xml.read()))
        except (OSError, AttributeError):  # not glibc
            pass
        worker = get_worker()
        return {
            "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX"),
            "profile_interval": dask.config.get("distributed.worker.profile.interval"),
            "profile_period_ms": worker.periodic_callbacks["profile"].callback_time,
            "arenas": arenas,
            "plane_sum": float(plane.sum()),
        }

    with connect(workers=1) as connection:
        seen = connection.client.submit(probe, pure=False).result()
    assert seen["MALLOC_ARENA_MAX"] == "1"
    assert seen["profile_interval"] == WORKER_CONFIG["distributed.worker.profile.interval"]
    assert seen["profile_period_ms"] == pytest.approx(100.0)
    if sys.platform.startswith("linux") and seen["arenas"] is not None:
        # Dask's defaults give such a worker 4 arenas (main, event-loop helpers, task thread)
        assert seen["arenas"] == 1
    assert seen["plane_sum"] == 4096 * 4096
