"""Benchmark of difference imaging, DiaSources and association on one LSSTCam CCD, on one core.

One simulated LSSTCam CCD (detector 94, 4096 x 4004, about 5,000 stars and 1,000 galaxies,
variables, transients and asteroids; :mod:`apflow.sim`), built in memory:

- ``post_isr`` of visit 1 rendered by the simulator; the **calexp** made from it by the real
  :class:`~apflow.tasks.calibrate.CalibrateImageTask` with the reference catalog and the
  detector's sky frame (the simulator's true sky pattern stands in for the ``sky_frame``
  workflow's product; without one the pattern's residuals give thousands of DiaSources);
- the ``template`` patches that overlap the CCD (sharp, deep coadd patches of the simulated
  tract; the other ~250 patches of the LSSTCam tract are not rendered) and the visit's
  ``ss_ephemeris``.

Then, CPU seconds of this single-threaded process (wall seconds beside them):

1. per stage: calibrate, difference imaging (:class:`SubtractImagesTask`), DiaSource detection
   and measurement, SSO association, association into a fresh SQLite APDB, and association after
   ``--earlier`` earlier visits are stored (replays of this visit's DiaSources, 1 day apart and
   moved by up to 50 mas, so every DiaSource has a candidate DiaObject with a history);
2. difference imaging in parts, each against a baseline on the same inputs: the template warp
   (ours: Lanczos-5 with variance, mask and flux conservation) against the per-pixel astropy
   transform plus ``scipy.ndimage.map_coordinates(order=3)`` of image and variance; the whole-image
   spatially varying convolution (ours: SVD-compressed kernel, blocked FFTs) against one
   full-image ``scipy.signal.fftconvolve`` per basis function combined with the spatial weights
   (``--baseline-bases`` of them timed, the rest extrapolated: they cost the same);
3. the APDB write rate (DiaSources per second through :meth:`Apdb.store`, CCD-sized batches,
   DiaObjects and DiaForcedSources included) on SQLite and, when ``pgserver`` starts, PostgreSQL,
   against a naive loop of one ``INSERT`` per row of the same rows in one transaction.

Run: ``OPENBLAS_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/diffim.py``
(``--skip-postgres``, ``--earlier N``, ``--baseline-bases N``, ``--full-baselines``).
"""

from __future__ import annotations

import os

# One core: every figure is per core, and BLAS/numba threads would blur them.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from astropy.wcs import WCS  # noqa: E402
from timing import Timing, environment, timed  # noqa: E402

from apflow.apdb import Apdb  # noqa: E402
from apflow.apdb.ids import pack_source_ids  # noqa: E402
from apflow.apdb.schema import conform  # noqa: E402
from apflow.core import Camera, Exposure  # noqa: E402
from apflow.sim.coadd import TractGeometry, make_tract  # noqa: E402
from apflow.sim.exposure import SkyModel, render_exposure  # noqa: E402
from apflow.sim.movers import ephemeris, field_radius_deg  # noqa: E402
from apflow.sim.template import render_template  # noqa: E402
from apflow.tasks.association import AssociationConfig, AssociationTask  # noqa: E402
from apflow.tasks.calibrate import CalibrateImageTask  # noqa: E402
from apflow.tasks.dia import DetectAndMeasureTask  # noqa: E402
from apflow.tasks.diffim import SubtractImagesTask  # noqa: E402
from apflow.tasks.sso import SsoAssociationTask  # noqa: E402

DETECTOR = 94


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
@dataclass
class CcdScene:
    """Everything one (visit, detector) of alert production needs, before calibration."""

    camera: Camera
    detector: int
    visit: int
    post_isr: Exposure
    ref_cat: pd.DataFrame
    sky_frame: Exposure
    templates: list[Exposure]
    patches: list[int]
    tract: TractGeometry
    ss_ephemeris: pd.DataFrame
    true_wcs: dict[str, Any]
    seconds: float


def make_scene(seed: int = 0, detector: int = DETECTOR) -> CcdScene:
    """Simulate one LSSTCam CCD of visit 1 with its templates, sky frame and ephemeris."""
    start = time.perf_counter()
    sky = SkyModel.generate("lsstcam", seed=seed)
    visits = sky.visits(1)
    visit = visits[0]
    sim = render_exposure(sky, visit, detector)
    tract = make_tract(sky.camera, visits, sky.config)
    patches = overlapping_patches(tract, WCS(sim.true_wcs), sim.exposure.shape)
    templates = [
        render_template(tract, p, visit.band, sky.catalog, sky.transients, sky.config, seed)
        for p in patches
    ]
    pattern, _ = sky.sky_pattern(detector)
    # the simulator's pattern is a fraction of the local sky level, like a "local" sky frame
    sky_frame = Exposure(
        image=pattern.astype(np.float32), metadata={"normalization": "local"}, detector=detector
    )
    radius = field_radius_deg(sky.camera)
    eph = ephemeris(sky.movers, visit.mjd, visit.boresight_ra, visit.boresight_dec, radius)
    return CcdScene(
        camera=sky.camera,
        detector=detector,
        visit=visit.visit,
        post_isr=sim.exposure,
        ref_cat=sky.reference_catalog(),
        sky_frame=sky_frame,
        templates=templates,
        patches=patches,
        tract=tract,
        ss_ephemeris=eph,
        true_wcs=dict(sim.true_wcs),
        seconds=time.perf_counter() - start,
    )


def overlapping_patches(
    tract: TractGeometry, wcs: WCS, shape: tuple[int, int], margin: float = 100.0
) -> list[int]:
    """Patches of ``tract`` that a CCD (its WCS and shape) overlaps, with a pixel margin."""
    height, width = shape
    x = np.array([0, width - 1, 0, width - 1, 0.5 * width, 0, width - 1, 0.5 * width, 0.5 * width])
    y = np.array(
        [0, 0, height - 1, height - 1, 0.5 * height, 0.5 * height, 0.5 * height, 0, height - 1]
    )
    ra, dec = wcs.all_pix2world(x, y, 0)
    tx, ty = tract.wcs().all_world2pix(ra, dec, 0)
    ix = range(
        max(0, int((tx.min() - margin) // tract.patch_width)),
        min(tract.nx, int((tx.max() + margin) // tract.patch_width) + 1),
    )
    iy = range(
        max(0, int((ty.min() - margin) // tract.patch_height)),
        min(tract.ny, int((ty.max() + margin) // tract.patch_height) + 1),
    )
    return [j * tract.nx + i for j in iy for i in ix]


# --------------------------------------------------------------------------------------------
# The per-CCD chain
# --------------------------------------------------------------------------------------------
@dataclass
class ChainProducts:
    """Outputs of the per-CCD stages, kept for the later measurements."""

    calexp: Exposure
    diff_image: Exposure
    template_warped: Exposure
    kernel: Any
    dia_source: pd.DataFrame
    ss_source: pd.DataFrame


def run_chain(
    scene: CcdScene, apdb_url: str, earlier: int = 5
) -> tuple[ChainProducts, dict[str, Timing], dict[str, Any]]:
    """Calibrate, subtract, detect, SSO-associate and associate one CCD, timing each stage.

    Association runs twice: into ``apdb_url`` (a SQLite file URL ending in ``.sqlite3``) as
    found (fresh), and into a second SQLite APDB next to it (``-steady.sqlite3``) after
    ``earlier`` replays of this visit were stored there (see :func:`replay`).

    Returns
    -------
    products, timings, numbers
        ``timings`` keys: ``calibrate``, ``diffim``, ``detect``, ``sso``, ``associate_fresh``,
        ``associate`` (with candidates), ``store`` (the APDB write inside the latter, wall).
    """
    data_id = {"visit": scene.visit, "detector": scene.detector}
    timings: dict[str, Timing] = {}
    calibrated, timings["calibrate"] = timed(
        lambda: CalibrateImageTask().run(
            scene.post_isr,
            scene.ref_cat,
            sky_frame=scene.sky_frame,
            camera=scene.camera,
            detector=scene.camera[scene.detector],
            data_id=data_id,
        )
    )
    calexp = calibrated.calexp
    subtracted, timings["diffim"] = timed(
        lambda: SubtractImagesTask().run(calexp, scene.templates, data_id=data_id)
    )
    diff = subtracted.diff_image
    detected, timings["detect"] = timed(
        lambda: DetectAndMeasureTask().run(
            diff, calexp, subtracted.template_warped, data_id=data_id
        )
    )
    sso, timings["sso"] = timed(
        lambda: SsoAssociationTask().run(
            detected.dia_source, scene.ss_ephemeris, diff, data_id=data_id
        )
    )
    products = ChainProducts(
        calexp, diff, subtracted.template_warped, subtracted.kernel, detected.dia_source,
        sso.ss_source,
    )  # fmt: skip

    def associate(url: str) -> Any:
        task = AssociationTask(AssociationConfig(apdb_url=url))
        return task.run(detected.dia_source, diff, calexp, ss_source=sso.ss_source, data_id=data_id)

    Apdb.create(apdb_url)
    fresh, timings["associate_fresh"] = timed(lambda: associate(apdb_url))
    steady_url = apdb_url.replace(".sqlite3", "-steady.sqlite3")
    Apdb.create(steady_url)
    for k in range(earlier):
        replay(products, steady_url, scene.detector, days_before=earlier - k, visit=100 + k)
    steady, timings["associate"] = timed(lambda: associate(steady_url))
    timings["store"] = Timing(math.nan, float(steady.store_report["seconds"]))
    numbers = {
        "diffim": subtracted.summary(),
        "detect": detected.summary(),
        "sso": sso.summary(),
        "associate_fresh": fresh.summary(),
        "associate": steady.summary(),
        "steady_url": steady_url,
        "association": steady,
    }
    return products, timings, numbers


def replay(
    products: ChainProducts, apdb_url: str, detector: int, days_before: float, visit: int
) -> Any:
    """Associate this visit's DiaSources again as an earlier visit (``days_before``, new ids).

    Positions move by up to 50 mas (uniform), so averages are not trivially exact; SSO rows are
    left out (an asteroid is elsewhere on another night).
    """
    rng = np.random.default_rng(visit)
    shift_days = float(days_before)
    sources = products.dia_source.copy()
    n = len(sources)
    sources["visit"] = visit
    sources["diaSourceId"] = pack_source_ids(visit, detector, np.arange(n))
    sources["midpointMjdTai"] = sources["midpointMjdTai"] - shift_days
    jitter = rng.uniform(-0.05, 0.05, (2, n)) / 3600.0
    sources["dec"] = sources["dec"] + jitter[1]
    sources["ra"] = sources["ra"] + jitter[0] / np.cos(np.radians(sources["dec"]))
    info = products.diff_image.visit_info
    visit_info = dataclasses.replace(info, visit=visit, mjd=info.mjd - shift_days)
    diff = dataclasses.replace(products.diff_image, visit_info=visit_info)
    calexp = dataclasses.replace(products.calexp, visit_info=visit_info)
    task = AssociationTask(AssociationConfig(apdb_url=apdb_url))
    return task.run(sources, diff, calexp, data_id={"visit": visit, "detector": detector})


# --------------------------------------------------------------------------------------------
# Difference imaging in parts, with baselines
# --------------------------------------------------------------------------------------------
def warp_comparison(calexp: Exposure, templates: list[Exposure], half: int) -> dict[str, Any]:
    """Our warp of the template patches vs per-pixel astropy + ``map_coordinates(order=3)``.

    Both produce the template on the calexp grid extended by the kernel half-width ``half``
    (what the subtraction needs). Ours also warps the mask and both variances and conserves
    flux; the baseline interpolates image and variance only. Returns our planes too (the
    convolution comparison convolves them).
    """
    from scipy import ndimage

    from apflow.tasks.diffim.warp import warp_planes

    height, width = calexp.shape
    shape = (height + 2 * half, width + 2 * half)
    ours, t_ours = timed(
        lambda: warp_planes(calexp.wcs, shape, templates, xy0=(-half, -half), lanczos_order=5)
    )
    mosaic_wcs, image, variance = _mosaic(templates)

    def baseline() -> tuple[np.ndarray, np.ndarray, float]:
        start = time.process_time()
        ys, xs = np.mgrid[-half : height + half, -half : width + half].astype(np.float64)
        ra, dec = calexp.wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
        del xs, ys
        u, v = mosaic_wcs.all_world2pix(ra, dec, 0)
        del ra, dec
        transform = time.process_time() - start
        # only the part of the mosaic the science grid needs (as our warp does)
        x0, y0 = max(0, int(np.floor(u.min())) - 4), max(0, int(np.floor(v.min())) - 4)
        x1, y1 = int(np.ceil(u.max())) + 5, int(np.ceil(v.max())) + 5
        coords = np.stack([np.asarray(v).reshape(shape) - y0, np.asarray(u).reshape(shape) - x0])
        del u, v
        warped, warped_var = (
            ndimage.map_coordinates(
                plane[y0:y1, x0:x1], coords, order=3, mode="constant", cval=np.nan
            )
            for plane in (image, variance)
        )
        return warped, warped_var, transform

    (base_image, _, transform_cpu), t_base = timed(baseline)
    inner = np.isfinite(ours.image) & np.isfinite(base_image)
    noise = float(np.sqrt(np.nanmedian(ours.variance)))
    return {
        "planes": ours,
        "ours": t_ours,
        "baseline": t_base,
        "baseline_transform_cpu": transform_cpu,
        "pixels": shape[0] * shape[1],
        "median_difference_sigma": float(
            np.median(np.abs(ours.image[inner] - base_image[inner])) / noise
        ),
    }


def _mosaic(templates: list[Exposure]) -> tuple[WCS, np.ndarray, np.ndarray]:
    """Paste patches of one tract (same TAN projection, whole-pixel offsets) into one array."""
    origins = [tuple(t.metadata["xy0"]) for t in templates]
    x0 = min(o[0] for o in origins)
    y0 = min(o[1] for o in origins)
    x1 = max(o[0] + t.shape[1] for o, t in zip(origins, templates, strict=True))
    y1 = max(o[1] + t.shape[0] for o, t in zip(origins, templates, strict=True))
    image = np.full((y1 - y0, x1 - x0), np.nan, dtype=np.float32)
    variance = np.full_like(image, np.nan)
    for (ox, oy), t in zip(origins, templates, strict=True):
        box = (slice(oy - y0, oy - y0 + t.shape[0]), slice(ox - x0, ox - x0 + t.shape[1]))
        image[box] = t.image
        variance[box] = t.variance
    first = templates[0]
    wcs = first.wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix + np.array([origins[0][0] - x0, origins[0][1] - y0])
    wcs.wcs.set()
    return wcs, image, variance


def convolution_comparison(
    planes: Any, solution: Any, n_baseline: int, block: int = 512
) -> dict[str, Any]:
    """Our whole-image spatially varying convolution vs full-image ``fftconvolve`` per basis.

    ``planes`` is the warped template with its kernel margin (what the task convolves). The
    baseline computes ``sum_k W_k(p) (B_k * I)(p)`` with one full-image FFT convolution per basis
    function ``B_k`` and its spatial weight map ``W_k``, plus one for the variance with the
    centre kernel squared (the same variance model as ours). ``n_baseline`` bases are timed and
    the total extrapolated (every basis costs the same). Ours is checked against the exact sum
    ``sum_d K(p; d) I(p - d)`` at 200 random pixels.
    """
    from scipy import signal

    from apflow.tasks.diffim.convolve import convolve_with_solution

    half = solution.basis.half
    height, width = solution.height, solution.width
    image = np.nan_to_num(planes.image, nan=0.0)
    variance = np.nan_to_num(planes.variance_uncorrelated, nan=0.0)
    (out, _), t_ours = timed(lambda: convolve_with_solution(image, variance, solution, block=block))

    n_basis = solution.basis.size
    n_timed = min(max(1, n_baseline), n_basis)

    def baseline() -> float:
        start = time.process_time()
        ys = np.arange(height, dtype=float)[:, None]
        xs = np.arange(width, dtype=float)[None, :]
        terms = solution.spatial_terms(xs, ys)  # (height, width, n_spatial)
        total = solution.background_terms(xs, ys) @ solution.background
        setup = time.process_time() - start
        for k in range(n_timed):
            weight = terms @ solution.coefficients[k]
            total += weight * signal.fftconvolve(image, solution.basis.images[k], mode="valid")
        centre = solution.kernel_image(0.5 * (width - 1), 0.5 * (height - 1))
        signal.fftconvolve(variance, centre**2, mode="valid")
        return setup

    setup_cpu, t_part = timed(baseline)
    per_basis = (t_part.cpu - setup_cpu) / (n_timed + 1)  # the variance pass costs one basis
    estimated_cpu = setup_cpu + per_basis * (n_basis + 1)

    rng = np.random.default_rng(5)
    px = rng.integers(0, width, 200)
    py = rng.integers(0, height, 200)
    exact = np.empty(200)
    for i, (x, y) in enumerate(zip(px, py, strict=True)):
        kernel = solution.kernel_image(float(x), float(y))
        window = image[y : y + 2 * half + 1, x : x + 2 * half + 1]
        exact[i] = np.sum(kernel[::-1, ::-1] * window) + float(solution.background_at(x, y))
    scale = float(np.sqrt(np.median(variance)))
    return {
        "ours": t_ours,
        "baseline_timed": t_part,
        "baseline_bases_timed": n_timed,
        "n_basis": n_basis,
        "baseline_cpu_estimated": estimated_cpu,
        "max_error_sigma": float(np.max(np.abs(out[py, px] - exact)) / scale),
    }


# --------------------------------------------------------------------------------------------
# APDB write rate
# --------------------------------------------------------------------------------------------
@dataclass
class CcdRows:
    """What one CCD writes: DiaObjects, DiaSources, DiaForcedSources (conformed frames)."""

    visit: int
    detector: int
    dia_objects: pd.DataFrame
    dia_sources: pd.DataFrame
    dia_forced_sources: pd.DataFrame


def ccd_rows(association: Any, n_sources: int, visit: int, detector: int, seed: int) -> CcdRows:
    """``n_sources`` new DiaSources of one (visit, detector), each with its new DiaObject and one
    forced source, drawn (with replacement) from a real association result and given new ids
    (conformed frames)."""
    rng = np.random.default_rng(seed)
    own = association.dia_association
    own = own[own["diaObjectId"].astype("int64") != 0]
    pick = rng.integers(0, len(own), n_sources)
    ids = pack_source_ids(visit, detector, np.arange(n_sources))
    sources = own.iloc[pick].reset_index(drop=True)
    sources["visit"] = visit
    sources["detector"] = detector
    sources["diaSourceId"] = ids
    sources["diaObjectId"] = pd.array(ids, dtype="Int64")
    sources["ssObjectId"] = pd.array([pd.NA] * n_sources, dtype="Int64")
    objects = association.dia_objects
    objects = objects.iloc[rng.integers(0, len(objects), n_sources)].reset_index(drop=True)
    objects["diaObjectId"] = ids
    forced = association.dia_forced_sources
    forced = forced.iloc[rng.integers(0, len(forced), n_sources)].reset_index(drop=True)
    forced["diaObjectId"] = ids
    forced["visit"] = visit
    forced["detector"] = detector
    if "diaForcedSourceId" in forced.columns:
        forced["diaForcedSourceId"] = ids
    # conformed, as the association task hands its frames to the APDB
    return CcdRows(
        visit,
        detector,
        conform(objects, "DiaObject"),
        conform(sources, "DiaSource"),
        conform(forced, "DiaForcedSource"),
    )


def store_rate(url: str, batches: list[CcdRows]) -> dict[str, float]:
    """Seconds and DiaSources/s of :meth:`Apdb.store` over the batches (one transaction each)."""
    apdb = Apdb.create(url)
    start = time.perf_counter()
    for b in batches:
        apdb.store(
            b.visit, b.detector, dia_objects=b.dia_objects, dia_sources=b.dia_sources,
            dia_forced_sources=b.dia_forced_sources,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    n = sum(len(b.dia_sources) for b in batches)
    apdb.close()
    return {"seconds": seconds, "per_s": n / seconds, "per_store_s": seconds / len(batches)}


def naive_insert_rate(url: str, batches: list[CcdRows]) -> dict[str, float]:
    """The same frames, one ``INSERT`` statement per row, one transaction per CCD.

    No idempotency (no deletion of a previous run's rows), no checks: only the inserts.
    """
    from apflow.apdb.engines import engine_for
    from apflow.apdb.rows import records
    from apflow.apdb.sql import sql_table

    Apdb.create(url)
    engine = engine_for(Apdb(url).url)
    start = time.perf_counter()
    for b in batches:
        with engine.begin() as conn:
            for name, frame in (
                ("DiaObject", b.dia_objects),
                ("DiaSource", b.dia_sources),
                ("DiaForcedSource", b.dia_forced_sources),
            ):
                insert = sql_table(name).insert()
                for row in records(frame):  # the same frame -> Python rows conversion
                    conn.execute(insert, row)  # one statement and round trip per row
    seconds = time.perf_counter() - start
    n = sum(len(b.dia_sources) for b in batches)
    Apdb(url).close()
    return {"seconds": seconds, "per_s": n / seconds, "per_store_s": seconds / len(batches)}


def start_postgres() -> tuple[Any, str, str] | None:
    """A throw-away PostgreSQL server from ``pgserver`` (default durability settings).

    Returns ``(server, url of a new database, data directory)`` or None when it cannot start.
    """
    try:
        import pgserver
        import sqlalchemy as sa
    except ImportError:
        return None
    # not under a private temporary directory: as root, pgserver runs postgres as another user
    data_dir = tempfile.mkdtemp(prefix="apflow-bench-pg-")
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        base = sa.engine.make_url(server.get_uri()).set(drivername="postgresql+psycopg")
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        name = f"apdb_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
    except Exception as exc:  # noqa: BLE001 - no server here is a result, not a failure
        print(f"PostgreSQL: pgserver could not start ({type(exc).__name__}: {exc})")
        shutil.rmtree(data_dir, ignore_errors=True)
        return None
    return server, base.set(database=name).render_as_string(hide_password=False), data_dir


def new_pg_database(server_url: str) -> str:
    """Another empty database on the same server."""
    import sqlalchemy as sa

    base = sa.engine.make_url(server_url)
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"apdb_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def write_rates(
    association: Any, tmp: str, pg_url: str | None, sizes: tuple[int, ...], n_ccds: int
) -> list[dict[str, Any]]:
    """Store and naive-insert rates for each batch size on each backend."""
    out = []
    for backend in ("sqlite", "postgresql"):
        if backend == "postgresql" and pg_url is None:
            continue
        for size in sizes:
            batches = [
                ccd_rows(association, size, visit=200 + i, detector=DETECTOR, seed=i)
                for i in range(n_ccds)
            ]

            def url(tag: str, backend: str = backend, size: int = size) -> str:
                if backend == "sqlite":
                    return f"sqlite:///{tmp}/rate-{tag}-{size}.sqlite3"
                return new_pg_database(pg_url)

            ours = store_rate(url("store"), batches)
            naive = naive_insert_rate(url("naive"), batches)
            out.append(
                {"backend": backend, "size": size, "n_ccds": n_ccds, "ours": ours, "naive": naive}
            )
    return out


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--earlier", type=int, default=5, help="earlier visits stored before")
    parser.add_argument("--baseline-bases", type=int, default=3, help="fftconvolve bases timed")
    parser.add_argument("--full-baselines", action="store_true", help="time every basis")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--batch-sizes", default="50,200,1000", help="DiaSources per CCD store")
    parser.add_argument("--ccds", type=int, default=4, help="CCD stores per write-rate test")
    args = parser.parse_args(argv)

    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print("environment:", environment())
    scene = make_scene(args.seed)
    print(
        f"scene: LSSTCam detector {scene.detector} {scene.post_isr.shape[1]} x "
        f"{scene.post_isr.shape[0]}, visit {scene.visit}, {len(scene.templates)} template "
        f"patches {scene.patches} of {scene.tract.patch_width} x {scene.tract.patch_height}, "
        f"{len(scene.ss_ephemeris)} ephemeris rows in the field; built in {scene.seconds:.1f} s"
    )
    with tempfile.TemporaryDirectory(prefix="apflow-bench-diffim-") as tmp:
        url = f"sqlite:///{tmp}/apdb.sqlite3"
        # the warp's numba kernel loads (or compiles) on first use: not part of the timing
        from apflow.tasks.diffim.warp import warp_planes

        warp_planes(scene.post_isr.wcs, (64, 64), scene.templates[:1])
        products, t, numbers = run_chain(scene, url, args.earlier)
        d = numbers["diffim"]
        print(
            f"\n1. per-CCD stages, one core: CPU s (wall s); "
            f"{numbers['detect']['n_dia_sources']} DiaSources "
            f"({numbers['detect']['n_positive']} positive, {numbers['detect']['n_negative']} "
            f"negative, {numbers['detect']['n_dipoles']} dipoles), "
            f"{numbers['sso']['n_associated']} of {numbers['sso']['n_known_in_footprint']} known "
            f"asteroids associated"
        )
        for name, label in (
            ("calibrate", "calibrate (CalibrateImageTask, with sky frame)"),
            ("diffim", "difference imaging (warp + kernel fit + convolution + subtraction)"),
            ("detect", "DiaSource detection + measurement"),
            ("sso", "SSO association"),
            ("associate_fresh", "association, fresh SQLite APDB"),
            ("associate", f"association after {args.earlier} earlier visits stored"),
        ):
            print(f"   {label:<72} {t[name].cpu:7.2f} ({t[name].wall:6.2f})")
        steady = numbers["associate"]
        print(
            f"     (with {args.earlier} earlier visits: {steady['n_matched']} matched, "
            f"{steady['n_new_dia_objects']} new, {steady['n_dia_forced_sources']} forced sources; "
            f"APDB store {steady['store_seconds']:.3f} s wall)"
        )
        per_ccd = sum(t[k].cpu for k in ("diffim", "detect", "associate"))
        per_ccd_wall = sum(t[k].wall for k in ("diffim", "detect", "associate"))
        print(
            f"   total difference imaging + detection + association: {per_ccd:.2f} s CPU "
            f"({per_ccd_wall:.2f} s wall) per LSSTCam CCD; with calibrate and SSO "
            f"{per_ccd + t['calibrate'].cpu + t['sso'].cpu:.2f} s CPU"
        )
        # held-out stars exist only when the kernel fit reserves some (default: none)
        reserved = d["residual_rms_reserved"]
        held_out = f" (held-out {reserved:.3f})" if reserved is not None else ""
        print(
            f"   subtraction quality: {d['n_stamps_used']} kernel stamps, residual rms "
            f"{d['residual_rms_used']:.3f}{held_out}, "
            f"sky std {d['sky_std']:.3f}, kernel sum {d['kernel_sum']:.4f}"
        )

        half = products.kernel.basis.half
        w = warp_comparison(products.calexp, scene.templates, half)
        c = convolution_comparison(
            w.pop("planes"),
            products.kernel,
            products.kernel.basis.size if args.full_baselines else args.baseline_bases,
        )
        mpix = w["pixels"] / 1e6
        print(f"\n2. difference imaging in parts ({mpix:.1f} Mpix with the kernel margin), CPU s")
        interpolation = w["baseline"].cpu - w["baseline_transform_cpu"]
        print(
            f"   warp, ours (Lanczos-5, image + 2 variances + mask)   {w['ours'].cpu:7.2f}\n"
            f"   warp, astropy per pixel + map_coordinates order 3     {w['baseline'].cpu:7.2f} "
            f"(of which the per-pixel WCS transform {w['baseline_transform_cpu']:.2f})\n"
            f"   ratio baseline / ours: {w['baseline'].cpu / w['ours'].cpu:.1f}x "
            f"(interpolation alone: {interpolation / w['ours'].cpu:.1f}x); "
            f"median |difference| of the two warps {w['median_difference_sigma']:.2f} sigma of the "
            "template noise"
        )
        timed_note = (
            "all timed"
            if c["baseline_bases_timed"] >= c["n_basis"]
            else f"{c['baseline_bases_timed']} timed, rest extrapolated"
        )
        print(
            f"   convolution, ours (SVD components, blocked FFT)       {c['ours'].cpu:7.2f}   "
            f"(max |ours - exact sum| at 200 pixels: {c['max_error_sigma']:.1e} sigma)\n"
            f"   convolution, fftconvolve per basis x {c['n_basis']} + variance   "
            f"{c['baseline_cpu_estimated']:7.2f}   ({timed_note})\n"
            f"   ratio baseline / ours: {c['baseline_cpu_estimated'] / c['ours'].cpu:.1f}x"
        )
        rest = t["diffim"].cpu - w["ours"].cpu - c["ours"].cpu
        print(
            f"   rest of difference imaging (candidates, stamps, kernel fit, masks, metrics): "
            f"{rest:.2f} (total {t['diffim'].cpu:.2f} minus warp and convolution)"
        )

        sizes = tuple(int(s) for s in args.batch_sizes.split(","))
        pg = None if args.skip_postgres else start_postgres()
        try:
            rates = write_rates(
                numbers["association"], tmp, pg[1] if pg else None, sizes, args.ccds
            )
        finally:
            if pg is not None:
                pg[0].cleanup()
                shutil.rmtree(pg[2], ignore_errors=True)
        print(
            f"\n3. APDB write rate: {args.ccds} CCD stores per case, each new DiaSources + as many "
            "new DiaObjects + DiaForcedSources, wall s"
        )
        if pg is None:
            print("   PostgreSQL: not measured (pgserver unavailable or --skip-postgres)")
        for r in rates:
            o, n = r["ours"], r["naive"]
            print(
                f"   {r['backend']:<10} {r['size']:5d} DiaSources/CCD: Apdb.store "
                f"{o['per_s']:8.0f} DiaSources/s ({1000 * o['per_store_s']:6.1f} ms/CCD); "
                f"row-by-row INSERT {n['per_s']:7.0f}/s ({1000 * n['per_store_s']:7.1f} ms/CCD); "
                f"ratio {o['per_s'] / n['per_s']:.1f}x"
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
