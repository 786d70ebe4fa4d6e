"""``apflow alerts read``: a table of the alerts in a file, optional cutout PNGs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from lsst.alert.packet import get_latest_schema_version, get_schema_path

from apflow.cli import main
from apflow.io.alerts import frame_alert
from apflow.tasks.alerts import PackageAlertsTask
from apflow.tasks.alerts.synthetic import synthetic_alert_inputs


@pytest.fixture(scope="module")
def alert_file(tmp_path_factory) -> tuple[Path, list[dict]]:
    scene = synthetic_alert_inputs(4, seed=5, sso_fraction=0.5, edge_sources=1)
    result = PackageAlertsTask().run(**scene.inputs)
    path = tmp_path_factory.mktemp("alerts") / "4242_4.avro"
    path.write_bytes(result.alerts)
    return path, result.records


def test_table_lists_each_alert(alert_file):
    path, records = alert_file
    out = CliRunner().invoke(main, ["alerts", "read", str(path)])
    assert out.exit_code == 0, out.output
    assert f"{path}: 5 alert(s)" in out.output
    lines = out.output.splitlines()[2:]
    assert len(lines) == 5
    for line, record in zip(lines, records, strict=True):
        fields = line.split()
        assert int(fields[0]) == record["diaSourceId"]
        assert float(fields[1]) == pytest.approx(record["diaSource"]["ra"], abs=1e-6)
        size = max(30, min(102, record["diaSource"]["bboxSize"]))
        assert fields[-1] == "/".join([f"{size}x{size}"] * 3)
        n_prv = len(record["prvDiaSources"] or [])
        assert int(fields[-2]) == n_prv


def test_limit_and_png(alert_file, tmp_path):
    path, records = alert_file
    out = CliRunner().invoke(
        main, ["alerts", "read", str(path), "--limit", "2", "--png", str(tmp_path / "png")]
    )
    assert out.exit_code == 0, out.output
    assert "showing 2" in out.output
    pngs = sorted((tmp_path / "png").iterdir())
    assert [p.stem for p in pngs] == sorted(str(r["diaSourceId"]) for r in records[:2])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_reads_the_package_samples_and_framed_messages(tmp_path):
    major, minor = get_latest_schema_version()
    sample_dir = Path(get_schema_path(major, minor)) / "sample_data"
    for name in ("fakeAlert.avro", "alert.json"):
        out = CliRunner().invoke(main, ["alerts", "read", str(sample_dir / name)])
        assert out.exit_code == 0, out.output
        assert "1231321321" in out.output and "-/-/-" in out.output
    from apflow.io.alerts import read_alerts

    framed = tmp_path / "message.bin"
    framed.write_bytes(frame_alert(read_alerts(sample_dir / "fakeAlert.avro")[0]))
    out = CliRunner().invoke(main, ["alerts", "read", str(framed)])
    assert out.exit_code == 0 and "1 alert(s)" in out.output


def test_not_an_alert_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.avro"
    bad.write_bytes(b"hello world")
    out = CliRunner().invoke(main, ["alerts", "read", str(bad)])
    assert out.exit_code == 2
    assert "neither an Avro container file" in out.output
