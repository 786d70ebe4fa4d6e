"""Timings of the simulator: one LSSTCam-size CCD in memory, and a whole mini-camera repository.

Run ``python -m apflow.sim.bench [--repo-url URL] [--skip-simulate]``; prints one line per
measurement. Single-threaded numpy throughout, so the numbers are single-core numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from .exposure import SkyModel, render_exposure


def time_lsstcam_ccd(
    detector: int = 94, star_density: float = 100_000.0, seed: int = 0
) -> dict[str, Any]:
    """Render one 4k x 4k LSSTCam CCD with about 5,000 stars (and ~1,000 galaxies).

    Returns
    -------
    dict
        ``n_stars``, ``n_galaxies`` on the CCD, ``catalog_s`` (whole-camera catalog),
        ``render_s`` (first render, includes the sky pattern), ``render_again_s`` (pattern cached).
    """
    t0 = time.perf_counter()
    sky = SkyModel.generate("lsstcam", seed=seed, star_density=star_density)
    t1 = time.perf_counter()
    visit = sky.visits(1)[0]
    sim = render_exposure(sky, visit, detector)
    t2 = time.perf_counter()
    render_exposure(sky, visit, detector)
    t3 = time.perf_counter()
    return {
        "shape": list(sim.exposure.shape),
        "n_stars": sim.truth["n_stars"],
        "n_galaxies": sim.truth["n_galaxies"],
        "n_catalog": len(sky.catalog),
        "catalog_s": round(t1 - t0, 3),
        "render_s": round(t2 - t1, 3),
        "render_again_s": round(t3 - t2, 3),
    }


def time_mini_simulate(url: str | None = None, n_visits: int = 10, seed: int = 0) -> dict[str, Any]:
    """Run :func:`apflow.sim.simulate` on the mini camera into ``url`` (a temporary directory)."""
    from .simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        target = url or f"{tmp}/repo"
        t0 = time.perf_counter()
        summary = simulate(target, camera="mini", n_visits=n_visits, seed=seed)
        elapsed = time.perf_counter() - t0
    return {"n_visits": n_visits, "elapsed_s": round(elapsed, 2), "written": summary["written"]}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--repo-url", default=None, help="where simulate() writes (default: temp dir)"
    )
    parser.add_argument("--skip-simulate", action="store_true", help="only time the CCD render")
    args = parser.parse_args(argv)
    print("lsstcam CCD render:", time_lsstcam_ccd())
    if not args.skip_simulate:
        print("mini simulate, 10 visits:", time_mini_simulate(args.repo_url))


if __name__ == "__main__":
    main()
