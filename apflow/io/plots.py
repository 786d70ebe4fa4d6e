"""PNG renderings of exposures (for ``apflow show --png`` and notebooks)."""

from __future__ import annotations

import io

import numpy as np

from ..core import Exposure


def scaled_image(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """Map an image to [0, 1] with an asinh stretch between two percentiles of its finite pixels."""
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape)
    lo, hi = np.percentile(image[finite], [low, high])
    span = hi - lo if hi > lo else 1.0
    scaled = np.arcsinh(
        np.clip((np.where(finite, image, lo) - lo) / span, 0, None) * 10
    ) / np.arcsinh(10)
    return np.clip(scaled, 0.0, 1.0)


def exposure_png(exposure: Exposure, title: str = "", max_pixels: int = 1024) -> bytes:
    """Render an exposure's image as PNG bytes (binned down to at most ``max_pixels`` per side)."""
    # Figure without pyplot: no GUI backend, safe in worker processes and threads.
    from matplotlib.figure import Figure

    image = exposure.image
    factor = max(1, int(np.ceil(max(image.shape) / max_pixels)))
    if factor > 1:
        h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
        image = np.nanmean(
            image[:h, :w].reshape(h // factor, factor, w // factor, factor), axis=(1, 3)
        )
    fig = Figure(figsize=(6, 6 * image.shape[0] / image.shape[1] + 0.4), dpi=120)
    ax = fig.add_subplot()
    ax.imshow(scaled_image(image), origin="lower", cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
