"""The TLS example: certificates from cluster/tls/make_certs.py, a TLS scheduler and worker on
127.0.0.1, and a workflow run through cluster/tls/tls.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security

import apflow

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def certificates(tls_dir, helpers) -> dict[str, str]:
    out = tls_dir / "certs"
    subprocess.run(
        [sys.executable, str(helpers.REPO_ROOT / "cluster" / "tls" / "make_certs.py"),
         "--out", str(out), "--host", "127.0.0.1", "--days", "1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    names = ["ca"] + [f"{p}{s}" for p in ("scheduler", "worker", "client") for s in ("", "-key")]
    paths = {name: str(out / f"{name}.pem") for name in names}
    assert (out / "client-key.pem").stat().st_mode & 0o077 == 0, "keys must not be world-readable"
    return paths


@pytest.fixture(scope="module")
def tls_cluster(tls_dir, certificates, helpers):
    security = Security(
        tls_ca_file=certificates["ca"],
        tls_client_cert=certificates["client"],
        tls_client_key=certificates["client-key"],
        require_encryption=True,
    )
    cluster = helpers.start_cluster(
        tls_dir / "dask", n_workers=1, tls=certificates, security=security
    )
    yield cluster
    cluster.stop()


def test_workflow_runs_over_a_tls_secured_cluster(tmp_path, tls_cluster, certificates, helpers):
    assert tls_cluster.address.startswith("tls://127.0.0.1:")
    # the checked-in cluster file, pointed at this scheduler and these certificates
    text = (helpers.REPO_ROOT / "cluster" / "tls" / "tls.yaml").read_text()
    text = text.replace("tls://127.0.0.1:8786", tls_cluster.address)
    cluster_file = tmp_path / "tls.yaml"
    cluster_file.write_text(text.replace("certs/", str(Path(certificates["ca"]).parent) + "/"))
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    summary = apflow.run("example", repo, cluster=cluster_file, progress=False)
    assert summary.ok and summary.count("done") == 19


def test_client_with_a_certificate_from_another_ca_is_refused(tmp_path, tls_cluster, helpers):
    other = tmp_path / "other"
    subprocess.run(
        [sys.executable, str(helpers.REPO_ROOT / "cluster" / "tls" / "make_certs.py"),
         "--out", str(other)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    stranger = Security(
        tls_ca_file=str(other / "ca.pem"),
        tls_client_cert=str(other / "client.pem"),
        tls_client_key=str(other / "client-key.pem"),
        require_encryption=True,
    )
    with pytest.raises((OSError, TimeoutError)):
        Client(tls_cluster.address, security=stranger, timeout=3)
