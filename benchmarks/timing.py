"""Timing helpers shared by the benchmark scripts (imported from this folder, not installed)."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Timing:
    """CPU and wall seconds of one call (the best of several by CPU)."""

    cpu: float
    wall: float


def timed(func: Callable[[], Any], repeats: int = 1) -> tuple[Any, Timing]:
    """Result and :class:`Timing` of the call with the least CPU time of ``repeats``."""
    best: tuple[Any, Timing] = (None, Timing(math.inf, math.inf))
    for _ in range(repeats):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = func()
        timing = Timing(time.process_time() - cpu0, time.perf_counter() - wall0)
        if timing.cpu < best[1].cpu:
            best = (result, timing)
    return best


def environment(extra: str = "") -> str:
    """One line: Python, numpy (and ``extra``), cores, load, thread settings."""
    threads = ",".join(
        f"{v}={os.environ.get(v)}" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    )
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return (
        f"python {platform.python_version()}, numpy {np.__version__}{extra}, "
        f"{os.cpu_count()} cores ({usable} usable by this process), load average "
        f"{os.getloadavg()[0]:.1f}; {threads}"
    )
