"""Fast threshold-based body and lung masks, and cropping to their bounding box.

Why: in a chest CT a third or more of the voxels are air around the patient and the table; a lung nodule detector
never needs them. Cropping to the lungs (with a margin) before sliding-window inference saves that compute. The
masks are deliberately simple (thresholds, connected components, hole filling on a half-resolution copy) because
they only need to be conservative boxes, not segmentations.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from meddet.volume import Volume

BODY_THRESHOLD_HU = -500.0  # soft tissue and fat are far above it, air far below
LUNG_THRESHOLD_HU = -400.0  # aerated lung is −950…−700; ground-glass nodules sit inside the filled lung mask
COARSE_SLICE_MM = 2.5  # lung_bounding_box keeps every k-th slice, k = this ÷ spacing rounded down (0.89 mm: 2; 0.8 mm: 3)


def _largest_components(mask: np.ndarray, count: int, min_fraction: float = 0.0) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    keep = [i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, keep)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def body_mask(volume: Volume) -> np.ndarray:
    """Boolean [z, y, x] mask of the patient's body (largest connected non-air region, holes filled per slice)."""
    body = np.asarray(volume.array) > BODY_THRESHOLD_HU
    body = ndimage.binary_opening(body, iterations=2)  # detaches the table and thin blankets
    body = _largest_components(body, 1)
    return _fill_holes_per_slice(body)


def lung_mask(volume: Volume) -> np.ndarray:
    """Boolean [z, y, x] mask of both lungs: air inside the body, the two largest parts, holes (vessels, nodules) filled."""
    body = body_mask(volume)
    air = (np.asarray(volume.array) < LUNG_THRESHOLD_HU) & body
    air = ndimage.binary_opening(air, iterations=1)
    lungs = _largest_components(air, 2, min_fraction=0.1)
    lungs = _fill_holes_per_slice(ndimage.binary_closing(lungs, iterations=3))
    return lungs


def bounding_box(mask: np.ndarray, margin_voxels: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice] | None:
    """Slices [z, y, x] of the mask's bounding box grown by ``margin_voxels`` and clipped to the array; None if empty."""
    if not mask.any():
        return None
    box = []
    for axis, margin in enumerate(margin_voxels):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def crop(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """The sub-volume ``box`` (array slices [z, y, x]) with its origin moved so every voxel keeps its world position."""
    return volume.with_array(np.ascontiguousarray(volume.array[box]), origin=crop_grid(volume, box).origin)


def crop_grid(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """The geometry of ``crop(volume, box)`` without copying voxels (a read-only zero array), for resampling onto."""
    start = [s.start or 0 for s in box]
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(box, volume.shape))
    origin = volume.index_zyx_to_lps(np.array(start, dtype=float))[0]
    return Volume(np.broadcast_to(np.uint8(0), shape), volume.spacing, tuple(origin), volume.direction.copy())


def lung_bounding_box(volume: Volume, margin_mm: float = 10.0) -> tuple[slice, slice, slice] | None:
    """Bounding box of the lungs with ``margin_mm`` around it, or None when no lungs are found.

    The mask is computed on a coarse copy (every second pixel in-plane; every k-th slice, k = ``COARSE_SLICE_MM`` ÷
    slice spacing rounded down): a box does not need full detail, and on a 512² × 240-slice thin-slice scan the masks
    at full slice resolution cost more than a second of the prediction. Each coarse voxel stands for the block it
    starts, so the box is mapped back to cover whole blocks.
    """
    steps = (
        max(1, int(COARSE_SLICE_MM // volume.spacing_zyx[0])),
        *([2 if min(volume.shape[1:]) >= 128 else 1] * 2),
    )
    small = volume.with_array(np.asarray(volume.array)[:: steps[0], :: steps[1], :: steps[2]])
    mask = lung_mask(small)
    if not mask.any():
        return None
    margin = tuple(-(-int(np.ceil(margin_mm / s)) // step) for s, step in zip(volume.spacing_zyx, steps))
    coarse = bounding_box(mask, margin)  # type: ignore[arg-type]
    assert coarse is not None
    return tuple(  # type: ignore[return-value]
        slice(box.start * step, min(box.stop * step, n)) for box, step, n in zip(coarse, steps, volume.shape)
    )
