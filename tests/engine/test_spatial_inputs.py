"""Spatial inputs: a quantum gets only the template patches whose sky region is near its own.

Regions come from stored WCSs and bounding boxes. Each selection is checked against a brute
force computed independently, from points sampled every few pixels along the pixel-edge
boundaries of both exposures (astropy ``all_pix2world`` / ``all_world2pix``): a patch overlaps
when a boundary point of one falls inside the other, otherwise its distance is the smallest
angle between boundary points. The sampled distance over-estimates the true one by at most the
sample spacing, so patches closer than that to the margin are ambiguous and each layout checks
it has none.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.wcs import WCS

import apflow
from apflow.core import Exposure, VisitInfo
from apflow.core.region import SkyPolygon, radec_to_unit
from apflow.engine import plan
from apflow.engine.workflow import load_workflow
from apflow.errors import DatasetError, WorkflowError
from apflow.io import Repository
from apflow.tasks.base import Task

#: Points per pixel edge of the brute force's boundary sampling.
EDGE_SAMPLES = 160


@dataclass
class _Received:
    patches: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {}


class ReceivedPatchesTask(Task):
    """Records the template data ids its quantum was given."""

    def run(self, exposure: Any, template: list[Any], input_data_ids: dict[str, Any]) -> _Received:
        return _Received({"ids": input_data_ids["template"], "n": len(template)})


WORKFLOW = """
    name: spatial
    dataset_types:
      received: {dimensions: [visit, detector], storage: json}
    stages:
      pick:
        task: tests.engine.test_spatial_inputs:ReceivedPatchesTask
        dimensions: [visit, detector]
        inputs:
          exposure: post_isr
          template: {dataset: template, spatial: true, margin_arcsec: MARGIN}
        outputs: {patches: received}
"""


def _workflow(tmp_path: Path, margin: float = 60.0) -> Path:
    path = tmp_path / "spatial.yaml"
    path.write_text(textwrap.dedent(WORKFLOW).replace("MARGIN", repr(margin)))
    return path


def _tan(ra: float, dec: float, crpix: tuple[float, float], scale: float, angle: float) -> WCS:
    """TAN WCS, ``scale`` arcsec/px, x axis at position angle ``angle`` deg, East left."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]  # FITS pixels are 1-based
    s, c = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    wcs.wcs.cd = (scale / 3600.0) * np.array([[-c, s], [s, c]])
    return wcs


def _exposure(wcs: WCS | None, shape: tuple[int, int], band: str, visit: int | None) -> Exposure:
    return Exposure(
        image=np.zeros(shape, np.float32),
        variance=np.ones(shape, np.float32),
        wcs=wcs,
        visit_info=VisitInfo(visit=visit, band=band) if visit is not None else None,
        metadata={"band": band},
    )


@dataclass
class Layout:
    """A CCD and a tract of template patches, as placed in a repository."""

    ccd_wcs: WCS
    ccd_shape: tuple[int, int]
    patch_wcs: dict[int, WCS]
    patch_shape: tuple[int, int]


def make_layout(
    repo: Repository,
    ccd_center: tuple[float, float],
    tract_center: tuple[float, float],
    rotation: float,
    n_side: int = 8,
    bands: tuple[str, ...] = ("r",),
    ccd_band: str = "r",
) -> Layout:
    """A 24x20 px CCD at 8"/px (rotated) and ``n_side**2`` 20x16 px patches at 10"/px.

    Few pixels keep the repository fast; the sky sizes (3.2' x 2.7' CCD, 3.3' x 2.7' patches)
    are what matters to the geometry.
    """
    ccd_shape = (20, 24)
    ccd_wcs = _tan(*ccd_center, (11.5, 9.5), 8.0, rotation)
    repo.put(_exposure(ccd_wcs, ccd_shape, ccd_band, 1), "post_isr", visit=1, detector=4)
    patch_shape = (16, 20)
    height, width = n_side * patch_shape[0], n_side * patch_shape[1]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    patch_wcs = {}
    for patch in range(n_side * n_side):
        x0, y0 = (patch % n_side) * patch_shape[1], (patch // n_side) * patch_shape[0]
        patch_wcs[patch] = _tan(*tract_center, (cx - x0, cy - y0), 10.0, 0.0)
        for band in bands:
            exposure = _exposure(patch_wcs[patch], patch_shape, band, None)
            repo.put(exposure, "template", tract=0, patch=patch, band=band)
    return Layout(ccd_wcs, ccd_shape, patch_wcs, patch_shape)


def _boundary(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = shape
    t = np.linspace(0.0, 1.0, EDGE_SAMPLES, endpoint=False)
    x = np.concatenate([-0.5 + width * t, np.full_like(t, width - 0.5),
                        width - 0.5 - width * t, np.full_like(t, -0.5)])  # fmt: skip
    y = np.concatenate([np.full_like(t, -0.5), -0.5 + height * t,
                        np.full_like(t, height - 0.5), height - 0.5 - height * t])  # fmt: skip
    return x, y


def _inside(wcs: WCS, shape: tuple[int, int], ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    x, y = wcs.all_world2pix(ra, dec, 0)
    height, width = shape
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def brute_force_distance(
    wcs_a: WCS, shape_a: tuple[int, int], wcs_b: WCS, shape_b: tuple[int, int]
) -> tuple[float, float]:
    """(sampled distance, its over-estimate bound), arcsec, between two pixel footprints."""
    ra_a, dec_a = wcs_a.all_pix2world(*_boundary(shape_a), 0)
    ra_b, dec_b = wcs_b.all_pix2world(*_boundary(shape_b), 0)
    if _inside(wcs_b, shape_b, ra_a, dec_a).any() or _inside(wcs_a, shape_a, ra_b, dec_b).any():
        return 0.0, 0.0
    va, vb = radec_to_unit(ra_a, dec_a), radec_to_unit(ra_b, dec_b)
    cosine = np.clip(va @ vb.T, -1.0, 1.0)
    distance = math.degrees(math.acos(float(cosine.max()))) * 3600.0
    # the nearest true points lie within half a sample step of sampled ones on each boundary
    step = max(
        math.degrees(math.acos(float(np.clip(v[0] @ v[1], -1, 1)))) * 3600.0 for v in (va, vb)
    )
    return distance, step


def brute_force_patches(layout: Layout, margin: float) -> set[int]:
    """Patches within ``margin`` arcsec of the CCD; fails on a patch too close to call."""
    chosen = set()
    for patch, wcs in layout.patch_wcs.items():
        distance, step = brute_force_distance(
            layout.ccd_wcs, layout.ccd_shape, wcs, layout.patch_shape
        )
        assert not (margin < distance <= margin + step), f"patch {patch} is too close to call"
        if distance <= margin:
            chosen.add(patch)
    return chosen


def _planned_patches(graph: Any, stage: str = "pick") -> list[dict[str, Any]]:
    (quantum,) = [q for q in graph.quanta.values() if q.stage == stage]
    ref = next(r for r in quantum.inputs if r.dataset_type == "template")
    return [dict(i) for i in ref.ids]


@pytest.mark.parametrize(
    ("ccd_center", "tract_center", "rotation"),
    [
        ((150.01, 2.203), (150.0, 2.2), 25.0),
        # across RA 0/360: patches on both sides; a naive RA box would take none or all
        ((359.995, -30.0), (0.0, -30.0), 40.0),
        ((120.0, 89.97), (0.0, 90.0), 10.0),  # next to the pole
    ],
    ids=["plain", "ra-wrap", "pole"],
)
def test_quantum_gets_exactly_the_patches_within_the_margin(
    tmp_path, ccd_center, tract_center, rotation
):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    layout = make_layout(repo, ccd_center, tract_center, rotation)
    margin = 60.0
    expected = brute_force_patches(layout, margin)
    overlapping = brute_force_patches(layout, 0.0)
    # the layout exercises every case: overlapping, within the margin only, and left out
    assert overlapping and expected - overlapping and len(expected) < len(layout.patch_wcs)
    graph = plan(_workflow(tmp_path, margin), repo)
    planned = _planned_patches(graph)
    assert [d["patch"] for d in planned] == sorted(expected)
    assert all(d["band"] == "r" and d["tract"] == 0 for d in planned)
    if tract_center[0] == 0.0 and ccd_center[1] < 0:  # the RA-wrap layout
        ras = [layout.patch_wcs[p].all_pix2world(9.5, 7.5, 0)[0] for p in expected]
        assert min(ras) < 1.0 and max(ras) > 359.0


def test_the_quantum_reads_exactly_the_planned_patches(tmp_path):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    layout = make_layout(repo, (150.01, 2.203), (150.0, 2.2), 25.0)
    summary = apflow.run(_workflow(tmp_path), repo, scheduler="synchronous", progress=False)
    assert summary.ok
    received = repo.get("received", visit=1, detector=4)
    expected = sorted(brute_force_patches(layout, 60.0))
    assert [d["patch"] for d in received["ids"]] == expected
    assert received["n"] == len(expected)


@pytest.mark.parametrize(("offset", "chosen"), [(-4.0, True), (4.0, False)])
def test_a_patch_just_beyond_the_margin_is_left_out(tmp_path, offset, chosen):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    ccd_wcs = _tan(10.0, 0.0, (11.5, 9.5), 8.0, 0.0)
    repo.put(_exposure(ccd_wcs, (20, 24), "r", 1), "post_isr", visit=1, detector=4)
    # one patch due North of the CCD, its lower edge `margin + offset` arcsec above the CCD's
    # upper edge (TAN about a shared tangent point: pixel distances are sky distances here)
    margin = 30.0
    gap_px = (margin + offset) / 8.0
    patch_wcs = _tan(10.0, 0.0, (11.5, 9.5 - 20 - gap_px), 8.0, 0.0)
    repo.put(_exposure(patch_wcs, (20, 24), "r", None), "template", tract=0, patch=0, band="r")
    distance, _ = brute_force_distance(ccd_wcs, (20, 24), patch_wcs, (20, 24))
    assert distance == pytest.approx(margin + offset, abs=0.05)
    planned = _planned_patches(plan(_workflow(tmp_path, margin), repo))
    assert planned == ([{"band": "r", "patch": 0, "tract": 0}] if chosen else [])


def test_only_templates_of_the_visits_band_are_chosen(tmp_path):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    layout = make_layout(repo, (150.01, 2.203), (150.0, 2.2), 25.0, bands=("g", "r", "i"),
                         ccd_band="i")  # fmt: skip
    planned = _planned_patches(plan(_workflow(tmp_path), repo))
    expected = sorted(brute_force_patches(layout, 60.0))
    assert [(d["patch"], d["band"]) for d in planned] == [(p, "i") for p in expected]


def test_a_template_without_wcs_is_named_in_the_error(tmp_path):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    make_layout(repo, (150.01, 2.203), (150.0, 2.2), 25.0, n_side=2)
    repo.put(_exposure(None, (16, 20), "r", None), "template", tract=0, patch=7, band="r")
    with pytest.raises(DatasetError, match=r"template \[band=r, patch=7, tract=0\]: has no WCS"):
        plan(_workflow(tmp_path), repo)


def test_an_exposure_without_wcs_cannot_place_its_quantum(tmp_path):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    make_layout(repo, (150.01, 2.203), (150.0, 2.2), 25.0, n_side=2)
    repo.put(_exposure(None, (20, 24), "r", 2), "post_isr", visit=2, detector=4)
    with pytest.raises(DatasetError) as caught:
        plan(_workflow(tmp_path), repo)
    message = str(caught.value)
    assert message.startswith("post_isr [detector=4, visit=2]: has no WCS")
    assert "stage 'pick'" in message


def test_a_quantum_without_an_exposure_input_cannot_be_placed(tmp_path):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    make_layout(repo, (150.01, 2.203), (150.0, 2.2), 25.0, n_side=2)
    repo.put({"not": "an exposure"}, "truth_wcs", visit=1, detector=4)
    path = tmp_path / "json.yaml"
    path.write_text(
        _workflow(tmp_path).read_text().replace("exposure: post_isr", "exposure: truth_wcs")
    )
    with pytest.raises(WorkflowError, match=r"\[detector=4, visit=1\]: cannot place the quantum"):
        plan(path, repo)


class CopyTemplateTask(Task):
    """Passes a template through (a stage that writes the spatial input in the same run)."""

    def run(self, template: Any) -> Any:
        return dataclasses.make_dataclass("Copied", ["copy"])(template)


def test_spatial_candidates_must_exist_before_the_run(tmp_path):
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    make_layout(repo, (150.01, 2.203), (150.0, 2.2), 25.0, n_side=2)
    text = _workflow(tmp_path).read_text()
    text = text.replace(
        "storage: json}",
        "storage: json}\n  template_copy: {dimensions: [tract, patch, band], storage: exposure}",
    )
    text = text.replace("dataset: template,", "dataset: template_copy,")
    text += (
        "  copy:\n"
        "    task: tests.engine.test_spatial_inputs:CopyTemplateTask\n"
        "    dimensions: [tract, patch, band]\n"
        "    inputs: {template: template}\n"
        "    outputs: {copy: template_copy}\n"
    )
    path = tmp_path / "copy.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowError, match=r"template_copy \[band=r, patch=0, tract=0\] does not"):
        plan(path, repo)


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        ("{exposure: {dataset: post_isr, spatial: true}, template: template}", "not gathered"),
        ("{exposure: post_isr, template: {dataset: template, margin_arcsec: 5}}", "needs spatial"),
        ("{exposure: post_isr, template: {dataset: template, spatial: yes please}}", "true or"),
        ("{exposure: post_isr, template: {dataset: template, spatial: true, margin_arcsec: -1}}",
         "margin_arcsec must be"),
    ],
)  # fmt: skip
def test_spatial_input_specs_are_validated(tmp_path, inputs, error):
    text = textwrap.dedent(WORKFLOW).split("    inputs:")[0] + (
        f"    inputs: {inputs}\n    outputs: {{patches: received}}\n"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowError, match=error):
        load_workflow(path)


# --- the simulator and alert production ------------------------------------------------------

DETECTOR = 4


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One visit of the mini camera's centre CCD with 7 x 7 template patches, not calibrated."""
    from apflow.sim import simulate

    path = tmp_path_factory.mktemp("spatial-sim") / "repo"
    simulate(
        str(path), camera="mini", n_visits=1, seed=3, detectors=[DETECTOR], coadds=False,
        max_patch_size=600, sky_pattern_rms=0.0,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def calibrated(simulated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spatial-cal") / "repo"
    shutil.copytree(simulated, path)
    summary = apflow.run("calibrate", str(path), scheduler="synchronous", progress=False)
    assert summary.ok
    return path


def _sim_layout(repo: Repository, dataset_type: str) -> Layout:
    header = repo.exposure_header(dataset_type, visit=1, detector=DETECTOR)
    patches = {d["patch"]: repo.exposure_header("template", **d) for d in repo.data_ids("template")}
    (patch_shape,) = {h.shape for h in patches.values()}
    return Layout(header.wcs, header.shape, {p: h.wcs for p, h in patches.items()}, patch_shape)


def test_nightly_places_diffim_by_post_isr_before_calibration(simulated):
    repo = Repository(str(simulated))
    assert not repo.data_ids("calexp")
    graph = plan("nightly", repo)
    planned = [d["patch"] for d in _planned_patches(graph, "diffim")]
    expected = brute_force_patches(_sim_layout(repo, "post_isr"), 60.0)
    assert planned == sorted(expected)
    assert 0 < len(planned) < len(repo.data_ids("template")) == 49


def test_alert_production_places_diffim_by_the_calexp(calibrated):
    repo = Repository(str(calibrated))
    planned = [d["patch"] for d in _planned_patches(plan("alert_production", repo), "diffim")]
    assert planned == sorted(brute_force_patches(_sim_layout(repo, "calexp"), 60.0))
    # the margin holds every patch that the subtraction's kernel and warp can touch
    layout = _sim_layout(repo, "calexp")
    half = 17 + 6  # kernel_size_max // 2 + Lanczos-5 taps and a pixel, in calexp pixels (0.2")
    assert brute_force_patches(layout, half * 0.2 + 1.0) <= set(planned)


def test_spatial_diffim_matches_diffim_against_every_patch(calibrated, tmp_path):
    workflow = load_workflow("alert_production")
    diffim = workflow.stage("diffim")
    assert diffim.input("template").spatial
    every = dataclasses.replace(
        diffim,
        inputs=tuple(
            dataclasses.replace(i, spatial=False) if i.name == "template" else i
            for i in diffim.inputs
        ),
    )
    outputs = {}
    for name, stage in (("spatial", diffim), ("every", every)):
        path = tmp_path / name
        shutil.copytree(calibrated, path)
        summary = apflow.run(
            dataclasses.replace(workflow, stages=(stage,)), str(path), scheduler="synchronous",
            progress=False,
        )  # fmt: skip
        assert summary.ok
        repo = Repository(str(path))
        outputs[name] = {
            dt: repo.get(dt, visit=1, detector=DETECTOR) for dt in ("diff_image", "template_warped")
        }
    n_spatial = outputs["spatial"]["template_warped"].metadata["n_template_patches"]
    assert n_spatial < outputs["every"]["template_warped"].metadata["n_template_patches"] == 49
    for dt in ("diff_image", "template_warped"):
        a, b = outputs["spatial"][dt], outputs["every"][dt]
        np.testing.assert_array_equal(a.mask, b.mask)
        # the same pixels up to float32 rounding: the mosaic's frame is its first patch's, and
        # the first patch differs (an integer shift of the coordinates)
        np.testing.assert_allclose(a.variance, b.variance, rtol=1e-6)
        sigma = np.sqrt(b.variance)
        good = np.isfinite(b.image)
        np.testing.assert_array_equal(good, np.isfinite(a.image))
        assert np.max(np.abs(a.image[good] - b.image[good]) / sigma[good]) < 1e-4


def test_polygon_of_a_wcs_is_its_pixel_footprint():
    wcs = _tan(359.999, 10.0, (3.5, 4.5), 20.0, 33.0)
    polygon = SkyPolygon.from_wcs(wcs, (10, 8))
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-3, 11, 4000), rng.uniform(-3, 13, 4000)
    ra, dec = wcs.all_pix2world(x, y, 0)
    inside = (x > -0.5) & (x < 7.5) & (y > -0.5) & (y < 9.5)
    assert 0 < inside.sum() < len(x)
    np.testing.assert_array_equal(polygon.contains(ra, dec), inside)
