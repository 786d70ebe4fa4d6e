"""The ``apflow`` command line.

Every command prints one clear line and exits non-zero on a user error (bad data id, missing
dataset, unreadable file) rather than a traceback; ``APFLOW_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import ApflowError


def _friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ApflowError, FileNotFoundError, KeyError, ValueError, TypeError) as exc:
            if os.environ.get("APFLOW_DEBUG"):
                raise
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            click.echo(f"apflow: error: {message}", err=True)
            sys.exit(2)

    return wrapper


def _parse_data_id(pairs: tuple[str, ...]) -> dict[str, int | str]:
    from .core.dataid import normalize_data_id, parse_data_id_value

    data_id: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="DATA_ID")
        data_id[key] = parse_data_id_value(value)
    return normalize_data_id(data_id)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="apflow")
def main() -> None:
    """apflow: survey image processing as Dask graphs over Zarr-backed exposures."""


@main.command()
@click.argument("repo")
@click.option("--camera", type=click.Choice(["mini", "lsstcam"]), default="mini", show_default=True)
@click.option("--visits", "n_visits", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--snaps", "n_snaps", type=click.IntRange(1, 2), default=1, show_default=True)
@click.option("--detectors", help="Comma-separated detector ids to simulate (default: all).")
@click.option("--no-coadds", is_flag=True, help="Do not simulate deep coadd patches.")
@_friendly_errors
def sim(repo, camera, n_visits, seed, n_snaps, detectors, no_coadds) -> None:
    """Simulate a camera's exposures, reference catalog, coadds and truth into REPO."""
    from .sim import simulate

    kwargs: dict[str, Any] = {}
    if detectors:
        kwargs["detectors"] = [int(d) for d in detectors.split(",")]
    truth = simulate(
        repo,
        camera=camera,
        n_visits=n_visits,
        seed=seed,
        n_snaps=n_snaps,
        coadds=not no_coadds,
        **kwargs,
    )
    click.echo(_describe_truth(truth))


def _describe_truth(truth: dict[str, Any]) -> str:
    lines = []
    for key, value in truth.items():
        if isinstance(value, (int, float, str)):
            lines.append(f"  {key}: {value}")
        elif isinstance(value, dict) and all(
            isinstance(v, (int, float, str)) for v in value.values()
        ):
            lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
    return "simulated:\n" + "\n".join(lines)


@main.command()
@click.argument("repo")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--dataset", default="post_isr", show_default=True, help="Dataset type to write.")
@click.option(
    "--map",
    "header_map",
    multiple=True,
    metavar="FIELD=KEYWORD",
    help="Header keyword for a field (visit, detector, band, physical_filter, mjd, exposure_time).",
)
@click.option("--camera", default="mini", show_default=True, help="Camera if REPO is new.")
@click.option("--overwrite", is_flag=True, help="Replace datasets that already exist.")
@_friendly_errors
def ingest(repo, files, dataset, header_map, camera, overwrite) -> None:
    """Ingest FITS FILES (single-HDU or IMAGE/MASK/VARIANCE extensions) into REPO."""
    from .io import Repository
    from .io.fits import ingest_fits

    mapping = {}
    for item in header_map:
        field, sep, keyword = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not FIELD=KEYWORD", param_hint="--map")
        mapping[field] = keyword
    repository = Repository.create(repo, camera=camera, exist_ok=True)
    ids = ingest_fits(
        repository,
        list(files),
        dataset_type=dataset,
        header_map=mapping or None,
        overwrite=overwrite,
    )
    for data_id in ids:
        click.echo(f"ingested {dataset} " + " ".join(f"{k}={v}" for k, v in data_id.items()))


@main.command(name="ls")
@click.argument("repo")
@click.argument("dataset", required=False)
@_friendly_errors
def ls_command(repo, dataset) -> None:
    """List the dataset types in REPO with their counts, or the data ids of DATASET."""
    from .io import Repository

    repository = Repository(repo)
    if dataset is None:
        click.echo(f"{repository.url}  camera={repository.camera.name}")
        for name in repository.dataset_types():
            dims = repository.dataset_type(name).dimensions
            n = len(repository.data_ids(name))
            click.echo(f"  {name:<22} {n:>6}  [{', '.join(dims)}]")
        return
    repository.dataset_type(dataset)  # clear error for an unknown type
    for data_id in repository.data_ids(dataset):
        click.echo(" ".join(f"{k}={v}" for k, v in data_id.items()))


@main.command()
@click.argument("repo")
@click.option("--yes", is_flag=True, help="Do it (without it: only say what would change).")
@_friendly_errors
def upgrade(repo, yes) -> None:
    """Bring REPO's dataset types up to this apflow's definitions.

    A built-in type whose keys changed (sky frames became per physical_filter) is redefined
    and its stored datasets, derived products, are deleted: rerun the workflow that made them
    (apflow run sky_frame REPO). Run it when nothing else writes REPO.
    """
    from .engine.workflow import load_workflow, workflows_dir
    from .io import DatasetType, Repository

    # the types the shipped workflows declare have current definitions too
    declared = {
        name: DatasetType(name, spec.dimensions, spec.storage)
        for path in sorted(workflows_dir().glob("*.yaml"))
        for name, spec in load_workflow(path).dataset_types.items()
    }
    repository = Repository(repo)
    outdated = repository.outdated_dataset_types(declared)
    if not outdated:
        click.echo(f"{repository.url}: up to date")
        return
    for name, (old, new) in outdated.items():
        n = len(repository.data_ids(name))
        change = f"{name}: [{', '.join(old.dimensions)}] -> [{', '.join(new.dimensions)}]"
        if yes:
            repository.upgrade_dataset_type(name, declared)
            click.echo(f"{change}; deleted {n} datasets")
        else:
            click.echo(f"{change}; would delete {n} datasets")
    if not yes:
        click.echo("rerun with --yes to apply")


@main.command()
@click.argument("repo")
@click.argument("dataset")
@click.argument("data_id", nargs=-1)
@click.option("--png", type=click.Path(dir_okay=False), help="Write a scaled image (exposures).")
@click.option("--fits", type=click.Path(dir_okay=False), help="Export an exposure to FITS.")
@click.option("--rows", type=int, default=10, show_default=True, help="Catalog rows to print.")
@_friendly_errors
def show(repo, dataset, data_id, png, fits, rows) -> None:
    """Show one dataset: metadata of an exposure, head of a catalog, or JSON."""
    import pandas as pd

    from .core import Exposure
    from .io import Repository

    repository = Repository(repo)
    did = _parse_data_id(data_id)
    obj = repository.get(dataset, **did)
    if isinstance(obj, Exposure):
        click.echo(json.dumps(_exposure_summary(obj), indent=2, default=str))
        if png:
            from .io.plots import exposure_png

            Path(png).write_bytes(exposure_png(obj, title=f"{dataset} {' '.join(data_id)}"))
            click.echo(f"wrote {png}")
        if fits:
            from .io.fits import write_exposure_fits

            write_exposure_fits(obj, fits, overwrite=True)
            click.echo(f"wrote {fits}")
    elif isinstance(obj, pd.DataFrame):
        click.echo(f"{len(obj)} rows x {len(obj.columns)} columns")
        with pd.option_context("display.width", 160, "display.max_columns", 12):
            click.echo(obj.head(rows).to_string())
    elif isinstance(obj, (bytes, bytearray)):
        click.echo(f"{len(obj)} bytes at {repository.uri(dataset, **did)}")
    else:
        click.echo(json.dumps(_jsonable(obj), indent=2, default=str))
    if (png or fits) and not isinstance(obj, Exposure):
        raise click.UsageError(f"--png/--fits need an exposure; {dataset} is {type(obj).__name__}")


def _exposure_summary(exp: Any) -> dict[str, Any]:
    import numpy as np

    finite = np.isfinite(exp.image)
    return {
        "shape": list(exp.shape),
        "detector": exp.detector,
        "visit_info": exp.visit_info.to_dict() if exp.visit_info else None,
        "image": {
            "median": float(np.median(exp.image[finite])) if finite.any() else None,
            "min": float(exp.image[finite].min()) if finite.any() else None,
            "max": float(exp.image[finite].max()) if finite.any() else None,
        },
        "masked_fraction": float((exp.mask != 0).mean()),
        "wcs": exp.wcs.to_header_string(relax=True).count("=") if exp.wcs else None,
        "wcs_center": (
            [float(v) for v in exp.wcs.all_pix2world([[exp.width / 2, exp.height / 2]], 0)[0]]
            if exp.wcs
            else None
        ),
        "psf": exp.psf.to_dict() if exp.psf else None,
        "photo_calib": exp.photo_calib.to_dict() if exp.photo_calib else None,
        "metadata_keys": sorted(exp.metadata),
    }


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {
            k: (f"array{list(v.shape)} {v.dtype}" if isinstance(v, np.ndarray) else _jsonable(v))
            for k, v in obj.items()
        }
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj))
    return obj


@main.command()
@click.argument("directory", required=False, default="demo-repo")
@click.option("--visits", "n_visits", type=click.IntRange(min=2), default=10, show_default=True)
@click.option(
    "--workers", type=int, default=None, help="Local Dask workers (default: one per core)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@_friendly_errors
def demo(directory, n_visits, workers, seed) -> None:
    """Simulate the mini camera into DIRECTORY and run the main workflows end to end."""
    from .demo import run_demo

    status = run_demo(directory, n_visits=n_visits, workers=workers, seed=seed, echo=click.echo)
    sys.exit(status)


@main.group()
def alerts() -> None:
    """Inspect Avro alert files (containers, Confluent-framed messages, JSON samples)."""


@alerts.command(name="read")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Alerts to show.")
@click.option(
    "--png",
    "png_dir",
    type=click.Path(file_okay=False),
    help="Write <diaSourceId>.png (difference, science, template cutouts) into this directory.",
)
@_friendly_errors
def alerts_read(file, limit, png_dir) -> None:
    """Print a table of the alerts in FILE and optionally their cutouts as PNG."""
    from .io.alerts import alert_summary, cutouts_png, read_alerts

    records = read_alerts(file)
    shown = records if limit is None else records[:limit]
    click.echo(f"{file}: {len(records)} alert(s)" + (f", showing {len(shown)}" if limit else ""))
    header = (
        f"{'diaSourceId':>20} {'ra':>11} {'dec':>11} {'psfFlux':>11} {'snr':>7} {'band':>4} "
        f"{'diaObjectId':>20} {'ssObjectId':>12} {'n_prv':>5}  cutouts(diff/sci/tmpl)"
    )
    click.echo(header)
    for record in shown:
        row = alert_summary(record)
        click.echo(
            f"{_cell(row['diaSourceId'], 20)} {_cell(row['ra'], 11, '.6f')} "
            f"{_cell(row['dec'], 11, '.6f')} {_cell(row['psfFlux'], 11, '.1f')} "
            f"{_cell(row['snr'], 7, '.1f')} {_cell(row['band'], 4)} "
            f"{_cell(row['diaObjectId'], 20)} {_cell(row['ssObjectId'], 12)} "
            f"{row['n_prv']:>5}  {row['cutouts']}"
        )
    if png_dir:
        out = Path(png_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = 0
        for record in shown:
            row = alert_summary(record)
            image = cutouts_png(record, title=f"diaSourceId {row['diaSourceId']}")
            if image is not None:
                (out / f"{row['diaSourceId']}.png").write_bytes(image)
                written += 1
        click.echo(f"wrote {written} PNG file(s) to {out}")


def _cell(value: Any, width: int, fmt: str = "") -> str:
    if value is None:
        return f"{'-':>{width}}"
    try:
        return f"{value:>{width}{fmt}}"
    except (TypeError, ValueError):
        return f"{value!s:>{width}}"


def _register_engine_commands() -> None:
    # Imported here rather than at the top so that `apflow --help` does not import the engine
    # before the group exists; the engine's CLI module itself imports Dask lazily.
    from .engine.cli import run_command

    main.add_command(run_command, name="run")


_register_engine_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
