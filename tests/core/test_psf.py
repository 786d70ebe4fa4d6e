import math

import numpy as np
import pytest

from apflow.core import GaussianPsf, MoffatPsf, VariablePsf, psf_from_dict
from apflow.core.psf import GAUSSIAN_FWHM_PER_SIGMA


def _moments(image: np.ndarray) -> tuple[float, float, float, float]:
    y, x = np.indices(image.shape)
    total = image.sum()
    mx = (image * x).sum() / total
    my = (image * y).sum() / total
    ixx = (image * (x - mx) ** 2).sum() / total
    iyy = (image * (y - my) ** 2).sum() / total
    return mx, my, ixx, iyy


@pytest.mark.parametrize(
    "psf", [GaussianPsf(3.0), MoffatPsf(3.5, beta=4.0), GaussianPsf(4.0, e1=0.1)]
)
def test_images_are_normalised(psf):
    assert psf.compute_image(10.0, 20.0).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("dx,dy", [(0.0, 0.0), (0.3, -0.2), (-0.49, 0.45)])
def test_subpixel_centring_places_the_centroid(dx, dy):
    psf = GaussianPsf(3.0)
    x, y = 100.0 + dx, 50.0 + dy
    image = psf.compute_image(x, y, size=41)
    mx, my, _, _ = _moments(image)
    # stamp centre pixel is (round(x), round(y)) at index 20
    assert mx - 20 == pytest.approx(x - round(x), abs=1e-6)
    assert my - 20 == pytest.approx(y - round(y), abs=1e-6)


def test_gaussian_width_matches_fwhm():
    psf = GaussianPsf(4.0)
    _, _, ixx, iyy = _moments(psf.compute_image(0.0, 0.0, size=61))
    sigma = 4.0 / GAUSSIAN_FWHM_PER_SIGMA
    # pixel integration adds 1/12 px^2 to the second moment
    assert ixx == pytest.approx(sigma**2 + 1 / 12, rel=1e-4)
    assert iyy == pytest.approx(ixx, rel=1e-9)


def test_elliptical_gaussian_oversampled_matches_exact_when_round():
    exact = GaussianPsf(3.0).compute_image(5.2, 7.7, size=25)
    sampled = GaussianPsf(3.0)._render(5.2, 7.7, 5.2 - 5, 7.7 - 8, 25)
    assert np.max(np.abs(exact - sampled)) < 1e-5 * exact.max()


def test_moffat_half_maximum_at_fwhm():
    psf = MoffatPsf(6.0, beta=3.0)
    assert psf._profile(np.array([3.0**2]))[0] == pytest.approx(0.5, rel=1e-12)


def test_variable_psf_varies_and_round_trips():
    psf = VariablePsf("moffat", 1024, 1024, fwhm_coeffs=(4.0, 0.2, 0.0, 0.4, 0.0, 0.0))
    assert psf.fwhm_at(0, 0) == pytest.approx(4.0 - 0.2 - 0.4)
    assert psf.fwhm_at(1023, 1023) == pytest.approx(4.6)
    restored = psf_from_dict(psf.to_dict())
    assert restored == psf
    np.testing.assert_array_equal(restored.compute_image(3.3, 4.4), psf.compute_image(3.3, 4.4))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="FWHM"):
        GaussianPsf(-1.0)
    with pytest.raises(ValueError, match="ellipticity"):
        GaussianPsf(3.0, e1=1.2)
    with pytest.raises(ValueError, match="coefficients"):
        VariablePsf("gaussian", 10, 10, fwhm_coeffs=(1.0, 2.0))
    with pytest.raises(ValueError, match="unknown PSF model"):
        psf_from_dict({"type": "nope"})
    assert math.isfinite(MoffatPsf(3.0).alpha)
