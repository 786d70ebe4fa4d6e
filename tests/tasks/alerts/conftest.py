"""Fixtures of the alert-packaging tests: one synthetic (visit, detector) with known truth."""

from __future__ import annotations

import pytest

from apflow.tasks.alerts import PackageAlertsTask
from apflow.tasks.alerts.synthetic import AlertInputs, synthetic_alert_inputs


@pytest.fixture(scope="session")
def scene() -> AlertInputs:
    """24 DiaSources (about 1 in 5 SSO-associated) plus 2 on the image edge."""
    return synthetic_alert_inputs(24, seed=3, edge_sources=2, sso_fraction=0.25)


@pytest.fixture(scope="session")
def packaged(scene: AlertInputs):
    return PackageAlertsTask().run(**scene.inputs, data_id={"visit": 4242, "detector": 4})
