"""Voxel-level agreement of lesion masks: Dice and HD95 in millimetres, on lesion voxels (any instance id > 0).

Conventions, stated because papers differ and every report repeats them:

- both masks empty → Dice 1 and HD95 0: nothing to find and nothing found is perfect agreement;
- exactly one mask empty → Dice 0 and HD95 undefined (NaN): there is no surface to measure a distance to. The
  report shows it as missing, leaves it out of the mean and says how many cases that was;
- HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)``: the 95th percentile of the distances from each
  mask's surface voxels to the other's surface, taken in each direction, and the larger of the two. (medpy pools
  both directions before the percentile, which hides a small far-away blob; the larger directed value does not.)
  Distances use the voxel spacing, so anisotropic CT (5 mm slices) is measured in mm, not voxels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of the lesion voxels (``> 0``) of two masks on the same grid; 1 when both are empty."""
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    denominator = int(pred.sum()) + int(truth.sum())
    return 1.0 if denominator == 0 else 2.0 * int(np.count_nonzero(pred & truth)) / denominator


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (outside the array counts as outside), as MONAI finds edges."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between the lesion voxels of two masks.

    Returns 0.0 when both are empty and NaN when exactly one is (see the module docstring).
    """
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.nan
    # crop to the union's bounding box (+1 voxel) so the distance transform stays small on a full CT; the margin
    # keeps the result identical to the uncropped one
    box = ndimage.find_objects((pred | truth).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    surface_pred, surface_truth = _surface(pred[box]), _surface(truth[box])
    spacing = tuple(float(s) for s in spacing_zyx)
    to_truth = ndimage.distance_transform_edt(~surface_truth, sampling=spacing)[surface_pred]
    to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)[surface_truth]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def summarize(dices: Sequence[float], distances: Sequence[float]) -> dict:
    """Means over cases, HD95 leaving out undefined (NaN) cases and counting them."""
    defined = [d for d in distances if not math.isnan(d)]
    return {
        "cases": len(dices),
        "dice_mean": round(float(np.mean(dices)), 4) if len(dices) else None,
        "dice_median": round(float(np.median(dices)), 4) if len(dices) else None,
        "hd95_mm_mean": round(float(np.mean(defined)), 3) if defined else None,
        "hd95_mm_median": round(float(np.median(defined)), 3) if defined else None,
        "hd95_undefined_cases": len(distances) - len(defined),
    }
