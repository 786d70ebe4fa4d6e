"""``apflow run``: the command line of :func:`apflow.run`.

The lead's ``apflow/cli.py`` registers :data:`run_command`; ``python -m apflow.engine.cli`` runs it
alone. Exit status: 0 when every quantum succeeded (or was already done), 1 when a quantum failed
or was blocked, 2 when the run could not start (bad workflow, repository, selection or options),
with the reason on one line and no traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

__all__ = ["run_command"]


@click.command(name="run")
@click.argument("workflow")
@click.argument("repo")
@click.option(
    "--where",
    "where",
    metavar="EXPR",
    help='Select data ids, e.g. "visit in (1, 2) and detector < 5".',
)
@click.option(
    "--scheduler",
    metavar="ADDR",
    help="Attach to a running scheduler (tcp://host:8786, tls://..., scheduler.json), or "
    "'synchronous' / 'threads' to run in this process.",
)
@click.option(
    "--cluster",
    "cluster_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Start a cluster from a cluster file (cluster/local.yaml, slurm.yaml, pbs.yaml, "
    "kubernetes/cluster.yaml, tls/tls.yaml).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Workers of the local cluster (default: one per core).",
)
@click.option(
    "--config",
    "config",
    metavar="STAGE.FIELD=VALUE",
    multiple=True,
    help="Override a task config field; repeat for several.",
)
@click.option("--redo", is_flag=True, help="Recompute quanta whose outputs already exist.")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Retries of a quantum that raised.",
)
@click.option(
    "--report",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Save Dask's performance report (HTML).",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    help="Most quanta on the cluster at once (default: four per worker thread, at least 16).",
)
@click.option(
    "--no-progress", is_flag=True, help="No progress bars or lines (the summary is still printed)."
)
def run_command(
    workflow: str,
    repo: str,
    where: str | None,
    scheduler: str | None,
    cluster_file: str | None,
    workers: int | None,
    config: tuple[str, ...],
    redo: bool,
    retries: int,
    report: str | None,
    max_in_flight: int | None,
    no_progress: bool,
) -> None:
    """Run WORKFLOW (a name in workflows/ or a YAML file) over the repository REPO.

    Quanta whose outputs exist are skipped, so running again after a crash finishes the rest.
    """
    # imported here so that `apflow --help` does not pay for Dask and astropy
    from ..errors import ApflowError

    if scheduler is not None and cluster_file is not None:
        _fail("give only one of --scheduler and --cluster")
    if workers is not None and cluster_file is not None:
        _fail("--workers sizes the local cluster; set the size in the cluster file instead")
    try:
        from .runner import run

        summary = run(
            workflow,
            repo,
            where=where,
            config=list(config),
            redo=redo,
            retries=retries,
            scheduler=scheduler,
            cluster=cluster_file,
            workers=workers,
            progress=not no_progress,
            report=report,
            max_in_flight=max_in_flight,
        )
    except (ApflowError, OSError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("apflow run: interrupted; run again to finish the rest", err=True)
        sys.exit(130)
    click.echo(summary.as_table())
    if not summary.ok:
        click.echo(
            f"apflow run: {len(summary.failures)} quanta failed, {len(summary.blocked)} blocked",
            err=True,
        )
        sys.exit(1)


def _fail(message: str) -> NoReturn:
    click.echo(f"apflow run: error: {message}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    run_command()
