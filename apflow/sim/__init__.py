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

Alert-production inputs: ``sky.transients`` (variable stars and supernova-like transients,
:mod:`apflow.sim.transients`), ``sky.movers`` (asteroids with consistent geometry and an
ephemeris, :mod:`apflow.sim.movers`), templates (:mod:`apflow.sim.template`) and their truth per
visit (:func:`dia_truth`).

Every random draw comes from a stream keyed by ``(seed, purpose, visit, detector, ...)``, so
outputs are bit-identical for a seed and do not depend on order or parallelism.
"""

from .background import background_image, bin_image, sky_pattern
from .catalog import SOURCE_COLUMNS, make_catalog, make_reference_catalog
from .coadd import TractGeometry, coadd_reference, coadd_truth, make_tract, render_coadd
from .config import BANDS, SimConfig
from .dynamic import DIA_TRUTH_COLUMNS, dia_truth, dynamic_sky_at
from .exposure import SimulatedExposure, SkyModel, counts_per_njy, render_exposure
from .movers import (
    EPHEMERIS_COLUMNS,
    MoverPopulation,
    ephemeris,
    mover_state,
    pack_designation,
    unpack_designation,
)
from .scoring import DIA_SCORE_COLUMNS, nearest_truth_arcsec, score_dia_sources
from .simulate import TRUTH_DATASET_TYPES, simulate
from .template import render_template, template_mjd
from .transients import light_curve_flux, make_transient_catalog, template_flux
from .visits import VisitParameters, detector_psf, make_visits
from .wcs import initial_wcs_header, pixel_to_sky, sky_to_pixel, true_wcs_header, wcs_from_header

__all__ = [
    "BANDS",
    "DIA_SCORE_COLUMNS",
    "DIA_TRUTH_COLUMNS",
    "EPHEMERIS_COLUMNS",
    "MoverPopulation",
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
    "dia_truth",
    "dynamic_sky_at",
    "ephemeris",
    "initial_wcs_header",
    "light_curve_flux",
    "make_catalog",
    "make_reference_catalog",
    "make_transient_catalog",
    "make_tract",
    "make_visits",
    "mover_state",
    "nearest_truth_arcsec",
    "pack_designation",
    "pixel_to_sky",
    "render_coadd",
    "render_exposure",
    "render_template",
    "score_dia_sources",
    "simulate",
    "sky_pattern",
    "sky_to_pixel",
    "template_flux",
    "template_mjd",
    "true_wcs_header",
    "unpack_designation",
    "wcs_from_header",
]
