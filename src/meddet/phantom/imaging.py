"""Image formation: slice profile, scanner blur, noise, quantisation.

Why in this order: the scanner integrates the object over the slice thickness (the box slice profile, done by
averaging thin sub-slices rendered across each slice) and blurs it in-plane with its point spread function (a
Gaussian of FWHM 0.6–1.2 mm); quantum noise is added to the reconstructed image afterwards, so it is not blurred
by the PSF but has its own in-plane correlation (the reconstruction kernel's noise texture).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
HU_MIN, HU_MAX = -1024, 3071
NOISE_SIGMA_HU = (8.0, 40.0)


@dataclass(frozen=True)
class NoiseModel:
    """σ in soft tissue at the body's centre (HU), its fall-off towards the body's edge, in-plane correlation."""

    sigma_hu: float
    edge_falloff: float
    corr_px: float  # Gaussian σ of the noise correlation in pixels (0: white)

    @staticmethod
    def sample(rng: np.random.Generator) -> "NoiseModel":
        corr = float(rng.uniform(0.4, 1.3)) if rng.random() < 0.75 else 0.0
        return NoiseModel(sigma_hu=float(rng.uniform(*NOISE_SIGMA_HU)), edge_falloff=float(rng.uniform(0.0, 0.3)),
                          corr_px=corr)


def average_sub_slices(fine: np.ndarray, n_sub: int) -> np.ndarray:
    """Box slice profile: mean over each group of ``n_sub`` consecutive sub-slices."""
    if n_sub == 1:
        return fine
    nz = fine.shape[0] // n_sub
    return fine.reshape(nz, n_sub, *fine.shape[1:]).mean(axis=1, dtype=np.float32)


def psf_blur(img: np.ndarray, fwhm_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """In-plane Gaussian point spread (``pixel_mm`` = (row, column) spacing)."""
    sig = fwhm_mm * FWHM_TO_SIGMA
    return ndimage.gaussian_filter(img, (0, sig / pixel_mm[0], sig / pixel_mm[1]), output=np.float32, truncate=3.0)


def noise_sigma_map(shape_yx: tuple[int, int], centre_px: tuple[float, float], half_axes_px: tuple[float, float],
                    model: NoiseModel) -> np.ndarray:
    """σ per pixel: highest at the body's centre (longest paths through the patient), lower at its edge."""
    yy = (np.arange(shape_yx[0], dtype=np.float32)[:, None] - centre_px[0]) / half_axes_px[0]
    xx = (np.arange(shape_yx[1], dtype=np.float32)[None, :] - centre_px[1]) / half_axes_px[1]
    rho2 = xx * xx + yy * yy
    inside = 1.0 - model.edge_falloff * np.minimum(rho2, 1.0)
    # outside the body fewer rays cross attenuating tissue: noise falls off further, to about half
    outside = np.clip(1.0 - 0.6 * (np.sqrt(np.maximum(rho2, 1.0)) - 1.0), 0.5, 1.0)
    return (model.sigma_hu * inside * outside).astype(np.float32)


def add_noise(img: np.ndarray, rng: np.random.Generator, model: NoiseModel, sigma_map: np.ndarray) -> np.ndarray:
    """Add (optionally in-plane correlated) Gaussian noise with the given σ map, in place; returns ``img``."""
    for z0 in range(0, img.shape[0], 16):
        z1 = min(z0 + 16, img.shape[0])
        n = rng.standard_normal((z1 - z0, *img.shape[1:]), dtype=np.float32)
        if model.corr_px > 0:
            n = ndimage.gaussian_filter(n, (0, model.corr_px, model.corr_px), output=np.float32, truncate=3.0)
            n *= np.float32(1.0 / _white_to_filtered_std(model.corr_px))
        n *= sigma_map
        img[z0:z1] += n
    return img


def _white_to_filtered_std(sigma_px: float) -> float:
    delta = np.zeros(64)
    delta[32] = 1.0
    k = ndimage.gaussian_filter1d(delta, sigma_px, truncate=3.0)
    return float(np.sum(k * k))  # separable 2D: std factor = (Σk²)^(2/2)


def quantize(img: np.ndarray) -> np.ndarray:
    """Round and clip to the stored CT range; int16 HU."""
    out = np.rint(img, out=img)
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out.astype(np.int16)
