"""Shared fixtures of the simulator tests: one small sky and its first visits, built once."""

from __future__ import annotations

import pytest

from apflow.sim import SkyModel


@pytest.fixture(scope="session")
def sky() -> SkyModel:
    return SkyModel.generate("mini", seed=3)


@pytest.fixture(scope="session")
def visits(sky):
    return sky.visits(2)
