"""The example workflow on a real cluster: a ``dask scheduler`` and two ``dask worker`` processes.

Covers: same outputs as the in-process scheduler, a worker SIGKILLed mid-run, the client
SIGKILLed mid-run and a rerun that does only the rest, and a failing quantum through the CLI.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from distributed import Client

import apflow
from apflow.engine import plan
from apflow.engine.progress import event_topic
from apflow.io import Repository

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory, helpers) -> Repository:
    """The example workflow's outputs from the in-process synchronous scheduler."""
    repo = helpers.make_repo(tmp_path_factory.mktemp("reference") / "repo")
    summary = apflow.run("example", repo, scheduler="synchronous", progress=False)
    assert summary.ok and summary.count("done") == 57
    return repo


def test_cluster_run_matches_synchronous_run_bit_for_bit(
    tmp_path, dask_cluster, reference, helpers
):
    on_cluster = helpers.make_repo(tmp_path / "cluster")
    stream = io.StringIO()
    summary = apflow.run("example", on_cluster, scheduler=dask_cluster.address, stream=stream)
    assert summary.ok
    assert summary.count("done") == 27 + 3 + 27
    helpers.assert_same_outputs(reference, on_cluster)
    # not a terminal: one line per stage instead of bars
    assert stream.getvalue().count("[apflow] ") == 3


def test_two_runs_on_one_scheduler_for_two_repositories_do_not_share_quanta(
    tmp_path, dask_cluster, helpers
):
    # same workflow, same data ids: the quantum keys are equal, so the keys on the cluster must
    # tell the repositories apart or the second run would be handed the first run's futures
    repos = [helpers.make_repo(tmp_path / name, visits=(1, 2)) for name in ("a", "b")]
    summaries = {}

    def run(repo):
        summaries[repo.url] = apflow.run(
            "example",
            repo,
            scheduler=dask_cluster.address,
            progress=False,
            config={"image_stats.repeat": 30},  # long enough for the two runs to overlap
        )

    threads = [threading.Thread(target=run, args=(repo,)) for repo in repos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    for repo in repos:
        summary = summaries[repo.url]
        assert summary.ok and summary.count("done") == 18 + 2 + 18
        assert len(repo.data_ids("normalized")) == 18
        assert repo.provenance("visit_stats", visit=2)["run_id"] == summary.run_id


def test_quanta_publish_events_to_the_run_topic(tmp_path, dask_cluster, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    summary = apflow.run("example", repo, scheduler=dask_cluster.address, progress=False)
    with Client(dask_cluster.address) as client:
        events = [message for _, message in client.get_events(event_topic(summary.run_id))]
    kinds = {(e["stage"], e["kind"]) for e in events}
    assert ("image_stats", "started") in kinds and ("normalize", "finished") in kinds
    finished = [e for e in events if e["kind"] == "finished" and e["stage"] == "visit_stats"]
    assert finished[0]["summary"]["n_detectors"] == 9


def test_run_survives_sigkill_of_a_worker(tmp_path, fresh_cluster, reference, helpers):
    repo = helpers.make_repo(tmp_path / "cluster")
    repeat = helpers.stats_repeat_for(0.15)
    outcome: dict = {}

    def client_side() -> None:
        try:
            outcome["summary"] = apflow.run(
                "example",
                repo,
                scheduler=fresh_cluster.address,
                config={"image_stats.repeat": repeat},
                progress=False,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=client_side)
    thread.start()
    helpers.wait_until(lambda: helpers.count(repo, "image_stats") >= 3, timeout=60)
    fresh_cluster.kill(fresh_cluster.workers[0])
    killed_at = helpers.count(repo, "image_stats")
    killed = time.monotonic()
    thread.join(timeout=120)
    print(f"run finished {time.monotonic() - killed:.1f} s after the kill")
    assert not thread.is_alive(), "run did not finish after a worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["summary"]
    assert killed_at < 27, "the kill landed after the per-CCD stage had finished"
    assert summary.ok, summary.as_table()
    assert summary.count("done") == 57
    helpers.assert_same_outputs(reference, repo)


def test_rerun_after_client_sigkill_does_only_the_missing_quanta(
    tmp_path, dask_cluster, reference, helpers
):
    repo = helpers.make_repo(tmp_path / "cluster")
    config = f"image_stats.repeat={helpers.stats_repeat_for(0.3)}"
    client_process = subprocess.Popen(
        [sys.executable, "-m", "apflow.engine.cli", "example", str(repo.url),
         "--scheduler", dask_cluster.address, "--config", config, "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        helpers.wait_until(lambda: helpers.count(repo, "image_stats") >= 6, timeout=60)
        os.killpg(client_process.pid, signal.SIGKILL)
    finally:
        if client_process.poll() is None:
            os.killpg(client_process.pid, signal.SIGKILL)
        client_process.wait(timeout=10)
    # quanta already running on the workers may still finish and write; wait until quiet
    _wait_until_stable(repo, helpers)
    graph = plan("example", Repository(repo.url))
    already = sum(1 for q in graph.quanta.values() if q.skip)
    assert 0 < already < len(graph)

    summary = apflow.run(
        "example", repo, scheduler=dask_cluster.address, config=[config], progress=False
    )
    assert summary.ok, summary.as_table()
    assert summary.count("skipped") == already
    assert summary.count("done") == len(graph) - already
    helpers.assert_same_outputs(reference, repo)


def test_failing_quantum_is_reported_and_the_rest_completes(tmp_path, dask_cluster, helpers):
    repo = helpers.make_repo(tmp_path / "repo", nan_data_ids=((2, 4),))
    result = subprocess.run(
        [sys.executable, "-m", "apflow.engine.cli", "example", str(repo.url),
         "--scheduler", dask_cluster.address, "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED  image_stats [detector=4, visit=2]: TaskError: only 0 of" in result.stdout
    assert "Traceback" not in result.stderr
    # everything that does not depend on the failed CCD was done
    assert helpers.count(repo, "image_stats") == 26
    assert repo.data_ids("visit_stats") == [{"visit": 1}, {"visit": 3}]
    assert helpers.count(repo, "normalized") == 18
    summary_line = next(line for line in result.stdout.splitlines() if line.startswith("total"))
    assert summary_line.split()[1:6] == ["57", "46", "0", "1", "10"]


def _wait_until_stable(repo: Repository, helpers, quiet: float = 2.0) -> None:
    def snapshot() -> tuple[int, ...]:
        return tuple(helpers.count(repo, t) for t in helpers.OUTPUT_TYPES)

    last, since = snapshot(), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.2)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()


@pytest.mark.slow
def test_rerun_after_scheduler_sigkill_finishes_the_rest(
    tmp_path, fresh_cluster, reference, helpers
):
    repo = helpers.make_repo(tmp_path / "cluster")
    config = {"image_stats.repeat": helpers.stats_repeat_for(0.2)}
    outcome: dict = {}

    def client_side() -> None:
        try:
            apflow.run(
                "example", repo, scheduler=fresh_cluster.address, config=config, progress=False
            )
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=client_side)
    thread.start()
    helpers.wait_until(lambda: helpers.count(repo, "image_stats") >= 3, timeout=60)
    fresh_cluster.kill(fresh_cluster.scheduler)
    thread.join(timeout=120)  # the client gives up reconnecting after ~30 s
    assert not thread.is_alive()
    assert "lost the connection to the Dask scheduler" in str(outcome.get("error"))
    fresh_cluster.stop()
    _wait_until_stable(repo, helpers)
    summary = apflow.run("example", repo, scheduler="threads", workers=2, progress=False)
    assert summary.ok and summary.count("skipped") > 0 and summary.count("done") > 0
    helpers.assert_same_outputs(reference, repo)
