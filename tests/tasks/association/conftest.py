"""Fixtures of the association tests: a fresh SQLite APDB per test."""

from __future__ import annotations

import pytest

from apflow.tasks.association import AssociationConfig, AssociationTask


@pytest.fixture
def apdb_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'apdb.sqlite3'}"


@pytest.fixture
def task(apdb_url) -> AssociationTask:
    return AssociationTask(AssociationConfig(apdb_url=apdb_url))
