"""Simulator of a Rubin-like survey field, with truth, written through :mod:`apflow.io`.

High level::

    from apflow.sim import simulate
    summary = simulate("demo-repo", camera="mini", n_visits=10, seed=0)

In memory (tests, benchmarks)::

    from apflow.sim import SkyModel, render_exposure
    sky = SkyModel.generate("mini", seed=0)
    visit = sky.visits(1)[0]
    sim = render_exposure(sky, visit, detector=4, noise=False)
    sim.exposure, sim.model, sim.true_wcs, sim.sources, sim.truth

Every random draw comes from a stream keyed by ``(seed, purpose, visit, detector, ...)``, so
outputs are bit-identical for a seed and do not depend on order or parallelism.
"""

from .background import background_image, bin_image, sky_pattern
from .catalog import SOURCE_COLUMNS, make_catalog, make_reference_catalog
from .coadd import TractGeometry, coadd_reference, coadd_truth, make_tract, render_coadd
from .config import BANDS, SimConfig
from .exposure import SimulatedExposure, SkyModel, counts_per_njy, render_exposure
from .simulate import TRUTH_DATASET_TYPES, simulate
from .visits import VisitParameters, detector_psf, make_visits
from .wcs import initial_wcs_header, pixel_to_sky, sky_to_pixel, true_wcs_header, wcs_from_header

__all__ = [
    "BANDS",
    "SOURCE_COLUMNS",
    "TRUTH_DATASET_TYPES",
    "SimConfig",
    "SimulatedExposure",
    "SkyModel",
    "TractGeometry",
    "VisitParameters",
    "background_image",
    "bin_image",
    "coadd_reference",
    "coadd_truth",
    "counts_per_njy",
    "detector_psf",
    "initial_wcs_header",
    "make_catalog",
    "make_reference_catalog",
    "make_tract",
    "make_visits",
    "pixel_to_sky",
    "render_coadd",
    "render_exposure",
    "simulate",
    "sky_pattern",
    "sky_to_pixel",
    "true_wcs_header",
    "wcs_from_header",
]
