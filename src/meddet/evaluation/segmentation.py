"""Voxel-level agreement of lesion masks: Dice and HD95 in millimetres.

Conventions, stated because papers differ: both masks empty → Dice 1 and HD95 0 (nothing to find, nothing found);
exactly one empty → Dice 0 and HD95 undefined (None), which is counted and left out of the mean.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred > 0, truth > 0
    denominator = int(pred.sum()) + int(truth.sum())
    return 1.0 if denominator == 0 else 2.0 * int((pred & truth).sum()) / denominator


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing_zyx) -> np.ndarray:
    """Distances (mm) from the surface voxels of ``a`` to the surface of ``b``."""
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    distance_to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_zyx)
    return distance_to_b[surface_a]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> float | None:
    """95th percentile of the symmetric surface distances (mm)."""
    pred, truth = pred > 0, truth > 0
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return None
    # crop to the union's bounding box (+1 voxel) so the distance transform stays small on a full CT
    box = ndimage.find_objects((pred | truth).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    a, b = pred[box], truth[box]
    distances = np.concatenate([_surface_distances(a, b, spacing_zyx), _surface_distances(b, a, spacing_zyx)])
    return float(np.percentile(distances, 95))
