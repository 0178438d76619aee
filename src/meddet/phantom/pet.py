"""A co-registered PET-like channel (SUV-like float32) on the CT grid.

Why on the CT grid: detectors with a second input channel (nnU-Net's ``_0001``) expect both channels on one grid.
The activity map comes from the same layers as the CT (uptake in most solid nodules, the myocardium, liver, marrow;
low in lung, fat and blood vessels); the scanner's resolution is a strong blur (FWHM 5–7 mm), and the noise is
Poisson-like (variance proportional to the counts), correlated by the reconstruction's post-filter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from meddet.phantom.imaging import FWHM_TO_SIGMA

PET_FWHM_MM = (5.0, 7.0)


def make_pet(activity: np.ndarray, spacing_zyx: tuple[float, float, float], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Blurred, noisy SUV map from a noiseless activity map (z, y, x); returns ``(suv, parameters)``."""
    fwhm = float(rng.uniform(*PET_FWHM_MM))
    post = float(rng.uniform(2.5, 3.5))  # reconstruction post-filter, also correlates the noise
    pre = float(np.sqrt(max(fwhm**2 - post**2, 1.0)))
    counts_per_suv = float(rng.uniform(3.0, 12.0))  # per mm³: sets the noise level
    sig = lambda f: tuple(f * FWHM_TO_SIGMA / s for s in spacing_zyx)  # noqa: E731
    img = ndimage.gaussian_filter(activity.astype(np.float32), sig(pre), output=np.float32, truncate=3.0)
    voxel_mm3 = float(np.prod(spacing_zyx))
    lam = np.maximum(img, 0) * np.float32(counts_per_suv * voxel_mm3)
    # Poisson-like: Gaussian with variance equal to the mean counts (exact Poisson is slow on 10⁸ voxels)
    noisy = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
    noisy *= np.float32(1.0 / (counts_per_suv * voxel_mm3))
    out = ndimage.gaussian_filter(noisy, sig(post), output=np.float32, truncate=3.0)
    np.maximum(out, 0, out=out)
    return out, {"fwhm_mm": round(fwhm, 3), "counts_per_suv_mm3": round(counts_per_suv, 3)}
