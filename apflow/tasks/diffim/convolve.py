"""Apply a spatially varying PSF-matching kernel to a whole image, and grow masks by it.

The kernel at pixel ``p`` is ``K(p) = sum_s P_s(p) K_s`` (``P_s`` the spatial polynomial
terms, ``K_s`` fixed kernel images), so ``(K * I)(p) = sum_s P_s(p) (K_s * I)(p)`` exactly: a
handful of fixed convolutions combined with polynomial weights. Before convolving, the kernels
are compressed: the kernel evaluated on a grid of positions is decomposed by SVD and only the
components above ``1e-6`` of the leading one are kept (a kernel that hardly varies needs one
or two convolutions instead of six).

Each fixed convolution is done by FFT on blocks of ``block`` output pixels (with the kernel
margin), sharing one forward transform per block among the components: on 4k x 4k images this
is several times faster than whole-image transforms and than separable direct convolution of
the ~30 basis functions.

The variance of the convolved image is ``K(p)^2 * var``, computed with the kernel of the
detector centre squared and scaled per pixel by ``sum K(p)^2 / sum K(centre)^2`` (a
polynomial of twice the spatial order): exact for a locally constant variance, and the variance
plane is smooth on the kernel's scale. Covariances created by the convolution are not tracked, as in Rubin.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from .kernel_fit import KernelSolution

#: Components of the spatial kernel whose singular value is below this fraction of the leading
#: one are dropped.
_COMPONENT_TOLERANCE = 1e-6


def kernel_components(solution: KernelSolution, n_grid: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal kernel images and the spatial coefficients of their weights.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n_comp, size, size)`` images ``E_m`` and ``(n_comp, n_spatial)`` coefficients ``D``
        with ``K(p) = sum_m (P(p) . D[m]) E_m``.
    """
    basis = solution.basis
    size = 2 * basis.half + 1
    spatial_kernels = np.einsum("ks,kij->sij", solution.coefficients, basis.images)
    flat = spatial_kernels.reshape(spatial_kernels.shape[0], -1)
    gx, gy = np.meshgrid(
        np.linspace(0, solution.width - 1, n_grid), np.linspace(0, solution.height - 1, n_grid)
    )
    sampled = solution.spatial_terms(gx.ravel(), gy.ravel()) @ flat
    _, singular, vt = np.linalg.svd(sampled, full_matrices=False)
    keep = singular > _COMPONENT_TOLERANCE * singular[0] if singular[0] > 0 else singular > 0
    keep[0] = True
    components = vt[keep]
    weights = flat @ components.T  # (n_spatial, n_comp)
    return components.reshape(-1, size, size), weights.T


def convolve_with_solution(
    image: np.ndarray,
    variance: np.ndarray,
    solution: KernelSolution,
    block: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Convolve an image and its variance with a spatially varying kernel, add the background.

    Parameters
    ----------
    image, variance : numpy.ndarray
        ``(height + 2 half, width + 2 half)``: the image to convolve with a margin of the
        kernel half-width on every side (finite everywhere: put 0 in missing pixels and mask
        the result).
    solution : KernelSolution
        Kernel over the ``(height, width)`` detector.
    block : int
        Output block side for the FFTs.

    Returns
    -------
    tuple of numpy.ndarray
        float32 ``(height, width)`` ``K * image + background`` and ``K^2 * variance``;
        output pixel ``[y, x]`` is centred on ``image[y + half, x + half]``.
    """
    half = solution.basis.half
    height, width = solution.height, solution.width
    if image.shape != (height + 2 * half, width + 2 * half):
        raise ValueError(
            f"image with margin must be {(height + 2 * half, width + 2 * half)}, got {image.shape}"
        )
    components, weights = kernel_components(solution)
    centre_kernel = solution.kernel_image(0.5 * (width - 1), 0.5 * (height - 1))
    centre_sq_sum = float(np.sum(centre_kernel**2))
    # sum K(p)^2 is a quadratic form in the spatial terms
    spatial_kernels = np.einsum("ks,kij->sij", solution.coefficients, solution.basis.images)
    gram = np.einsum("sij,tij->st", spatial_kernels, spatial_kernels)
    square_table = _square_sum_table(solution, gram)
    if centre_sq_sum <= 0:
        square_table[:] = 0.0
        square_table[0, 0] = centre_sq_sum = 1.0
    length = fft.next_fast_len(block + 2 * half, real=True)
    shape = (length, length)
    component_ft = fft.rfft2(components.astype(np.float32), s=shape, axes=(1, 2))
    square_ft = fft.rfft2((centre_kernel**2).astype(np.float32), s=shape)
    out = np.empty((height, width), dtype=np.float32)
    out_var = np.empty((height, width), dtype=np.float32)
    chunk = np.zeros(shape, dtype=np.float32)
    for y0 in range(0, height, block):
        y1 = min(height, y0 + block)
        ys = np.arange(y0, y1, dtype=float)
        for x0 in range(0, width, block):
            x1 = min(width, x0 + block)
            xs = np.arange(x0, x1, dtype=float)
            # the solution's polynomials are held constant beyond its stamps (valid_box)
            cx, cy = solution.clamp(xs, ys)
            u = 2.0 * cx / max(width - 1, 1) - 1.0
            v = 2.0 * cy / max(height - 1, 1) - 1.0
            h, w = y1 - y0, x1 - x0
            # output [y0:y1] needs input rows [y0, y1 + 2 half) of the margin-extended image;
            # the circular wrap of the FFT only touches the discarded first 2 half rows
            chunk[:] = 0.0
            chunk[: h + 2 * half, : w + 2 * half] = image[y0 : y1 + 2 * half, x0 : x1 + 2 * half]
            image_ft = fft.rfft2(chunk)
            result = _polynomial_grid(solution.background, solution.background_order, u, v)
            for m in range(components.shape[0]):
                conv = fft.irfft2(image_ft * component_ft[m], s=shape)
                result += (
                    _polynomial_grid(weights[m], solution.spatial_order, u, v)
                    * conv[2 * half : 2 * half + h, 2 * half : 2 * half + w]
                )
            out[y0:y1, x0:x1] = result
            chunk[:] = 0.0
            chunk[: h + 2 * half, : w + 2 * half] = variance[y0 : y1 + 2 * half, x0 : x1 + 2 * half]
            conv = fft.irfft2(fft.rfft2(chunk) * square_ft, s=shape)
            scale = _table_grid(square_table, u, v) / centre_sq_sum
            out_var[y0:y1, x0:x1] = scale * conv[2 * half : 2 * half + h, 2 * half : 2 * half + w]
    return out, out_var


def _square_sum_table(solution: KernelSolution, gram: np.ndarray) -> np.ndarray:
    """Coefficients ``[j, i]`` of ``sum K(p)^2 = P(p)^T gram P(p)`` as a polynomial in u, v."""
    order = solution.spatial_order
    powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    table = np.zeros((2 * order + 1, 2 * order + 1))
    for s, (i1, j1) in enumerate(powers):
        for t, (i2, j2) in enumerate(powers):
            table[j1 + j2, i1 + i2] += gram[s, t]
    return table


def _polynomial_grid(coeffs: np.ndarray, order: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum c_ij u^i v^j`` on the grid ``v x u`` as one small matrix product."""
    table = np.zeros((order + 1, order + 1))  # [j, i]
    k = 0
    for i in range(order + 1):
        for j in range(order + 1 - i):
            table[j, i] = coeffs[k]
            k += 1
    return _table_grid(table, u, v)


def _polynomial_grids(coeffs: np.ndarray, order: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """:func:`_polynomial_grid` of each row of ``coeffs``, sharing the powers of u and v."""
    powers_u = u[None, :] ** np.arange(order + 1)[:, None]
    powers_v = v[:, None] ** np.arange(order + 1)[None, :]
    tables = np.zeros((coeffs.shape[0], order + 1, order + 1))
    k = 0
    for i in range(order + 1):
        for j in range(order + 1 - i):
            tables[:, j, i] = coeffs[:, k]
            k += 1
    return powers_v[None] @ tables @ powers_u[None]


def _table_grid(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum table[j, i] u^i v^j`` on the grid ``v x u``."""
    powers_u = u[None, :] ** np.arange(table.shape[1])[:, None]
    powers_v = v[:, None] ** np.arange(table.shape[0])[None, :]
    return powers_v @ table @ powers_u


def grow_mask(mask: np.ndarray, half: int) -> np.ndarray:
    """OR of an integer (or bool) mask over a ``(2 half + 1)`` square box around every pixel.

    Pixels beyond the array count as 0. Done by doubling (OR over runs of 1, 2, 4, ... pixels)
    along each axis: ~2 log2(2 half + 1) in-place whole-array operations.
    """
    if not mask.any():
        return np.zeros_like(mask)
    out = mask
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        # run[i] of the padded array is the OR over values[i - half : i + half + 1]
        run = or_over_window(np.pad(out, pad), 2 * half + 1, axis)
        out = run[:n] if axis == 0 else run[:, :n]
    return out


def or_over_window(values: np.ndarray, length: int, axis: int) -> np.ndarray:
    """``out[i] = OR(values[i : i + length])`` along an axis of a 2-D array (0 beyond the end)."""
    run = values.copy()
    span = 1
    while 2 * span <= length:
        _or_shifted(run, span, axis)
        span *= 2
    if span < length:
        _or_shifted(run, length - span, axis)
    return run


def _or_shifted(run: np.ndarray, offset: int, axis: int) -> None:
    """``run[i] |= run[i + offset]`` along an axis, in place."""
    if offset >= run.shape[axis]:
        return
    if axis == 0:
        run[:-offset] |= run[offset:]
    else:
        run[:, :-offset] |= run[:, offset:]
