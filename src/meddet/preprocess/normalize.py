"""Intensity normalisation of model input.

Why three schemes: nnU-Net's rule is that CT intensities carry physical meaning (clip to the foreground's
percentiles, then one global z-score from the training set), while MR intensities do not (z-score per image).
Windowing to [0, 1] (:func:`meddet.preprocess.windowing.apply_window`) is the simple CT alternative.
"""

from __future__ import annotations

import numpy as np



def zscore(image: np.ndarray, mask: np.ndarray | None = None, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """(x − mean) / std; statistics from ``mask`` voxels (or all) unless given, as a plan stores them for CT."""
    values = image[mask] if mask is not None else image
    mu = float(np.mean(values)) if mean is None else float(mean)
    sigma = float(np.std(values)) if std is None else float(std)
    return ((np.asarray(image, dtype=np.float32) - mu) / max(sigma, 1e-8)).astype(np.float32)


def percentile_clip(image: np.ndarray, lower: float = 0.5, upper: float = 99.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Clip to the given percentiles (of ``mask`` voxels, or all): removes metal and air outliers."""
    values = image[mask] if mask is not None else image
    lo, hi = np.percentile(values, [lower, upper])
    return np.clip(np.asarray(image, dtype=np.float32), lo, hi)


def clip_zscore(image: np.ndarray, low: float, high: float, mean: float, std: float) -> np.ndarray:
    """nnU-Net's CT normalisation with dataset-wide numbers from a plan: clip to [low, high], then z-score."""
    return zscore(np.clip(np.asarray(image, dtype=np.float32), low, high), mean=mean, std=std)
