"""The data commands of the CLI: ingest, ls, show (with --png and --fits), and error handling."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from apflow.cli import main
from apflow.io import Repository


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.crpix = [32.0, 32.0]
    wcs.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600
    return wcs


def _write_fits(path, visit: int, detector: int, drop: str | None = None) -> None:
    header = _wcs().to_header()
    header.update(
        {"VISIT": visit, "DETECTOR": detector, "BAND": "r", "MJD-OBS": 60000.1, "EXPTIME": 30.0}
    )
    if drop:
        del header[drop]
    data = np.random.default_rng(visit).normal(100, 10, (1024, 1024)).astype(np.float32)
    fits.PrimaryHDU(data=data, header=header).writeto(path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_ingest_ls_show_round_trip(tmp_path, runner):
    repo = str(tmp_path / "repo")
    files = []
    for visit in (1, 2):
        path = tmp_path / f"v{visit}.fits"
        _write_fits(path, visit, 4)
        files.append(str(path))
    result = runner.invoke(main, ["ingest", repo, *files])
    assert result.exit_code == 0, result.output
    assert "ingested post_isr" in result.output

    result = runner.invoke(main, ["ls", repo])
    assert result.exit_code == 0, result.output
    assert "post_isr" in result.output and " 2 " in result.output

    result = runner.invoke(main, ["ls", repo, "post_isr"])
    assert result.output.split("\n")[:2] == ["visit=1 detector=4", "visit=2 detector=4"]

    png, out_fits = tmp_path / "x.png", tmp_path / "x.fits"
    result = runner.invoke(
        main,
        [
            "show",
            repo,
            "post_isr",
            "visit=2",
            "detector=4",
            "--png",
            str(png),
            "--fits",
            str(out_fits),
        ],
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with fits.open(out_fits) as hdul:
        back = WCS(hdul["IMAGE"].header)
    original = Repository(repo).get("post_isr", visit=2, detector=4)
    np.testing.assert_allclose(
        back.all_pix2world([[5.0, 7.0]], 0), original.wcs.all_pix2world([[5.0, 7.0]], 0), atol=1e-10
    )


def test_missing_keyword_is_one_clear_line(tmp_path, runner):
    path = tmp_path / "bad.fits"
    _write_fits(path, 1, 4, drop="VISIT")
    result = runner.invoke(main, ["ingest", str(tmp_path / "repo"), str(path)])
    assert result.exit_code != 0
    assert "bad.fits" in result.output and "visit" in result.output.lower()
    assert "Traceback" not in result.output


def test_show_missing_dataset_and_bad_data_id(tmp_path, runner):
    repo = str(tmp_path / "repo")
    Repository.create(repo, camera="mini")
    result = runner.invoke(main, ["show", repo, "calexp", "visit=1", "detector=4"])
    assert result.exit_code != 0 and "calexp" in result.output and "visit=1" in result.output
    result = runner.invoke(main, ["show", repo, "calexp", "visit=../../etc", "detector=4"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    result = runner.invoke(main, ["ls", str(tmp_path / "nothing-here")])
    assert result.exit_code != 0 and "nothing-here" in result.output
