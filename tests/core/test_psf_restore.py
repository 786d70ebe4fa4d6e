"""A stored PSF model defined outside apflow.core restores in a fresh process.

Calibrate's pixel PSF registers itself when its module is imported; a process that reads a
calexp without having imported calibrate (a DIA worker, ``apflow show``) used to fail with
"unknown PSF model type 'pixel'".
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from apflow.core import Exposure, GaussianPsf, psf_from_dict, psf_to_dict
from apflow.io import Repository

READ = """
import sys
from apflow.io import Repository
exposure = Repository(sys.argv[1]).get("calexp", visit=1, detector=0)
print(type(exposure.psf).__name__, round(exposure.psf.fwhm_at(10.0, 10.0), 4))
"""


def test_pixel_psf_restores_without_importing_calibrate(tmp_path):
    from apflow.tasks.calibrate.psf.pixel_psf import PixelPsf

    kernel = GaussianPsf(fwhm=3.5).compute_kernel_image(0.0, 0.0, 15)
    psf = PixelPsf(kernel[None], width=32, height=32, order=0)
    exposure = Exposure(image=np.zeros((32, 32), np.float32), psf=psf)
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    repo.register_dataset_type("calexp", ("visit", "detector"), "exposure")
    repo.put(exposure, "calexp", visit=1, detector=0)
    out = subprocess.run(
        [sys.executable, "-c", READ, str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        check=True,
    )
    name, fwhm = out.stdout.split()
    assert name == "PixelPsf"
    assert float(fwhm) == pytest.approx(psf.fwhm_at(10.0, 10.0), abs=1e-4)


def test_unknown_type_and_unimportable_module_are_clear_errors():
    with pytest.raises(ValueError, match="unknown PSF model type 'nope'"):
        psf_from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="cannot import its module 'no.such.module'"):
        psf_from_dict({"type": "nope", "module": "no.such.module"})


def test_core_models_round_trip_with_their_module():
    data = psf_to_dict(GaussianPsf(fwhm=4.0))
    assert data["module"] == "apflow.core.psf"
    assert psf_from_dict(data).fwhm_at(0, 0) == pytest.approx(GaussianPsf(fwhm=4.0).fwhm_at(0, 0))
