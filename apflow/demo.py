"""``apflow demo``: simulate the mini camera and run the main workflows on a local cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The workflows the demo runs, in order (each is a file in workflows/), with the data ids each
# runs on: the night's processing takes the first visits only, to keep the demo to minutes.
DEMO_WORKFLOWS: tuple[tuple[str, str | None], ...] = (
    ("sky_frame", None),
    ("forced_phot", None),
    ("nightly", "visit <= 4"),
)


def run_demo(
    directory: str | Path,
    n_visits: int = 10,
    workers: int | None = None,
    seed: int = 0,
    echo: Callable[[str], Any] = print,
) -> int:
    """Simulate a small camera into ``directory`` and run :data:`DEMO_WORKFLOWS` on it.

    Parameters
    ----------
    directory : str or Path
        Repository root; created if missing. An existing demo repository is reused and its
        finished quanta are skipped (resume).
    n_visits : int
        Number of simulated visits.
    workers : int, optional
        Local Dask workers (default: sized to the machine).
    seed : int
        Simulator seed.
    echo : callable
        Where progress lines go.

    Returns
    -------
    int
        Process exit status: 0 when every quantum of every workflow succeeded.
    """
    from .engine import run
    from .engine.cluster import connect
    from .io import Repository
    from .sim import simulate

    root = Path(directory).resolve()
    url = str(root)
    start = time.perf_counter()
    if (root / "apflow.json").exists() and Repository(url).data_ids("post_isr"):
        echo(f"reusing simulated repository {url}")
    else:
        echo(f"simulating the mini camera ({n_visits} visits, seed {seed}) into {url} ...")
        truth = simulate(url, camera="mini", n_visits=n_visits, seed=seed)
        echo(
            "simulated "
            + ", ".join(f"{k}={v}" for k, v in truth.items() if isinstance(v, (int, float, str)))
        )
    repo = Repository(url)
    status = 0
    # One local cluster for every workflow: starting a cluster costs seconds per workflow.
    with connect(workers=workers) as connection:
        if connection.dashboard:
            echo(f"Dask dashboard: {connection.dashboard}")
        for workflow, where in DEMO_WORKFLOWS:
            echo(f"\n== workflow {workflow}{f' (where {where})' if where else ''} ==")
            summary = run(workflow, repo, where=where, client=connection.client)
            echo(summary.as_table())
            status |= 0 if summary.ok else 1
    echo("\nrepository contents:")
    for name in repo.dataset_types():
        echo(f"  {name:<22} {len(repo.data_ids(name)):>5}")
    _report_alerts(repo, echo)
    _report_dia_truth(repo, echo)
    echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s; data in {url}")
    return status


def _report_alerts(repo: Any, echo: Callable[[str], Any]) -> None:
    """How many alerts the night produced and where they are."""
    from .io.alerts import read_alerts

    ids = repo.data_ids("alerts") if "alerts" in repo.dataset_types() else []
    if not ids:
        echo("\nno alerts were produced")
        return
    n_alerts = n_sso = 0
    for data_id in ids:
        alerts = read_alerts(repo.get("alerts", **data_id))
        n_alerts += len(alerts)
        n_sso += sum(1 for a in alerts if a.get("ssSource"))
    first = repo.uri("alerts", **ids[0])
    echo(
        f"\n{n_alerts} alerts ({n_sso} of known asteroids) in {len(ids)} Avro files under "
        f"{first.rsplit('/alerts/', 1)[0]}/alerts/\n  read one:  apflow alerts read {first}"
    )


def _report_dia_truth(repo: Any, echo: Callable[[str], Any]) -> None:
    """DiaSources scored against the simulated truth: the science check an operator can read."""
    from .sim import score_dia_sources

    if "dia_source" not in repo.dataset_types() or not repo.data_ids("dia_source"):
        return
    score = score_dia_sources(repo)
    n_ccd = len(score)
    echo(
        f"\nDiaSources against the simulated truth: {score['n_dia_sources'].sum()} in {n_ccd} "
        f'CCD-visits, {score["n_real"].sum()} real (within 1" of a simulated variable, '
        f"transient or asteroid), {score['n_false'].sum()} false "
        f"({score['n_false'].mean():.1f} per CCD-visit, at most {score['n_false'].max()})"
    )
