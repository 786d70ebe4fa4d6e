"""Cluster files: batch job scripts (generated, never submitted), Kubernetes spec, local cluster."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest

import apflow
from apflow.engine.cluster import cluster_from_file, read_cluster_file
from apflow.errors import ConfigError

# the scheduler a jobqueue cluster starts in this process stays on the loopback interface here
LOCAL_SCHEDULER = {"scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}


def job_script(helpers, name: str) -> str:
    with cluster_from_file(helpers.REPO_ROOT / "cluster" / name, **LOCAL_SCHEDULER) as cluster:
        return cluster.job_script()


def assert_valid_bash(script: str) -> None:
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_slurm_cluster_file_makes_a_valid_job_script(helpers):
    script = job_script(helpers, "slurm.yaml")
    assert script.startswith("#!/usr/bin/env bash")
    for directive in ("#SBATCH -n 1", "#SBATCH --cpus-per-task=32", "#SBATCH --mem=120G",
                      "#SBATCH -t 04:00:00", "#SBATCH --exclusive"):  # fmt: skip
        assert directive in script
    assert "source $HOME/apflow/.venv/bin/activate" in script
    command = script.strip().splitlines()[-1]
    assert command.startswith("python -m distributed.cli.dask_worker tcp://127.0.0.1:")
    assert "--nworkers 8" in command and "--nthreads 4" in command
    assert "--lifetime 3h50m" in command
    assert_valid_bash(script)


def test_pbs_cluster_file_makes_a_valid_job_script(helpers):
    script = job_script(helpers, "pbs.yaml")
    assert "#PBS -l select=1:ncpus=24:mem=90GB" in script
    assert "#PBS -l walltime=04:00:00" in script
    command = script.strip().splitlines()[-1]
    assert "--nworkers 6" in command and "--nthreads 4" in command
    assert_valid_bash(script)


def test_kubernetes_file_is_a_dask_operator_cluster_spec(helpers):
    spec = read_cluster_file(helpers.REPO_ROOT / "cluster" / "kubernetes" / "cluster.yaml")
    assert spec["type"] == "kubernetes"
    resource = spec["spec"]
    assert resource["apiVersion"] == "kubernetes.dask.org/v1"
    assert resource["kind"] == "DaskCluster"
    (worker,) = resource["spec"]["worker"]["spec"]["containers"]
    (scheduler,) = resource["spec"]["scheduler"]["spec"]["containers"]
    assert worker["args"][0] == "dask-worker" and scheduler["args"][0] == "dask-scheduler"
    assert worker["image"] == scheduler["image"]
    assert resource["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    assert (helpers.REPO_ROOT / "cluster" / "kubernetes" / "Dockerfile").is_file()


def test_kubernetes_without_dask_kubernetes_says_what_to_install(helpers):
    try:
        import dask_kubernetes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'apflow\[kubernetes\]'"):
            cluster_from_file(helpers.REPO_ROOT / "cluster" / "kubernetes" / "cluster.yaml")
    else:
        pytest.skip("dask-kubernetes is installed; creating a cluster needs Kubernetes")


def test_remote_and_tls_files_resolve_paths_relative_to_the_file(helpers):
    remote = read_cluster_file(helpers.REPO_ROOT / "cluster" / "remote.yaml")
    assert remote["address"] == "tcp://127.0.0.1:8786"
    tls = read_cluster_file(helpers.REPO_ROOT / "cluster" / "tls" / "tls.yaml")
    assert tls["address"].startswith("tls://")
    assert tls["security"]["ca_file"] == str(helpers.REPO_ROOT / "cluster/tls/certs/ca.pem")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("type: yarn\n", "'type' must be one of"),
        ("type: local\nworkers: 3\n", "unknown key(s) workers"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_invalid_cluster_file_is_reported(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_cluster_file(path)


def test_local_cluster_file_runs_a_workflow_and_saves_a_report(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    local = tmp_path / "local.yaml"
    shutil.copy(helpers.REPO_ROOT / "cluster" / "local.yaml", local)
    # port 0: the test must not depend on 8787 being free; one worker starts faster than two
    text = local.read_text().replace("127.0.0.1:8787", "127.0.0.1:0")
    local.write_text(text.replace("n_workers: null", "n_workers: 1"))
    stream = io.StringIO()
    report = tmp_path / "run.html"
    summary = apflow.run("example", repo, cluster=local, report=report, stream=stream)
    assert summary.ok and summary.count("done") == 19
    assert summary.dashboard and summary.dashboard.startswith("http://127.0.0.1:")
    assert f"Dashboard: {summary.dashboard}" in stream.getvalue()
    assert "<html" in report.read_text()[:2000].lower()
