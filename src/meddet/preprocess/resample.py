"""Resampling a Volume to a target spacing and back onto its original grid.

Why SimpleITK: its Resample works in physical space, so origin, direction and the half-voxel conventions are right
by construction; meddet only chooses the output grid. Labels are never interpolated linearly as numbers (that
invents label 1 between 0 and 2): they use nearest neighbour, or nnU-Net's per-label linear scheme (each label's
one-hot mask resampled linearly, then argmax), which keeps small lesions smoother at coarse spacings.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk

from meddet.errors import MeddetInputError
from meddet.volume import Volume

ImageInterpolation = Literal["linear", "bspline", "nearest"]
LabelInterpolation = Literal["nearest", "label_linear"]

_SITK_INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def _check_spacing(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(spacing) != 3 or not all(np.isfinite(s) and 0.05 <= s <= 20 for s in spacing):
        raise MeddetInputError(
            f"Target spacing {spacing} mm is not usable: give three values (x, y, z) between 0.05 and 20 mm."
        )
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def grid_for_spacing(volume: Volume, spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Size (x, y, z) and origin of a grid with ``spacing`` covering the same physical extent as ``volume``.

    The extent is kept edge to edge (the outer voxel borders coincide), as nnU-Net and SimpleITK users expect.
    """
    spacing = _check_spacing(spacing)
    old_size = np.array(volume.shape[::-1], dtype=float)
    old_spacing = np.array(volume.spacing)
    new_spacing = np.array(spacing)
    new_size = np.maximum(np.round(old_size * old_spacing / new_spacing), 1).astype(int)
    # keep the outer edge: first voxel centre moves by half the change in voxel size
    shift = (new_spacing - old_spacing) / 2.0
    origin = np.asarray(volume.origin) + volume.direction @ shift
    return tuple(int(s) for s in new_size), tuple(float(o) for o in origin)  # type: ignore[return-value]


def _resample(image: sitk.Image, size, spacing, origin, direction, interpolator, default: float) -> sitk.Image:
    return sitk.Resample(
        image, [int(s) for s in size], sitk.Transform(), interpolator, [float(o) for o in origin],
        [float(s) for s in spacing], [float(d) for d in np.asarray(direction).ravel()], float(default),
        image.GetPixelID(),
    )


def _resample_labels(volume: Volume, size, spacing, origin, direction, method: LabelInterpolation) -> np.ndarray:
    labels = np.asarray(volume.array)
    if method == "nearest":
        out = _resample(volume.to_sitk(), size, spacing, origin, direction, sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(out)
    if method != "label_linear":
        raise MeddetInputError(f"Unknown label interpolation '{method}'; use 'nearest' or 'label_linear'.")
    values = [v for v in np.unique(labels) if v != 0]
    best = None
    result = None
    for value in [0, *values]:
        onehot = volume.with_array((labels == value).astype(np.float32))
        prob = sitk.GetArrayFromImage(
            _resample(onehot.to_sitk(), size, spacing, origin, direction, sitk.sitkLinear, 1.0 if value == 0 else 0.0)
        )
        if best is None:
            best, result = prob, np.zeros(prob.shape, dtype=labels.dtype)
        else:
            take = prob > best
            best = np.where(take, prob, best)
            result[take] = value
    return result  # type: ignore[return-value]


def resample_to_spacing(
    volume: Volume,
    spacing: tuple[float, float, float],
    *,
    is_label: bool = False,
    interpolation: ImageInterpolation | LabelInterpolation | None = None,
) -> Volume:
    """Resample onto a grid with ``spacing`` (x, y, z mm) over the same extent, same direction.

    Images default to linear, labels to nearest; ``interpolation`` picks bspline for images or label_linear for labels.
    """
    size, origin = grid_for_spacing(volume, spacing)
    return _resample_onto(volume, size, spacing, origin, volume.direction, is_label, interpolation)


def resample_like(
    volume: Volume,
    reference: Volume,
    *,
    is_label: bool = False,
    interpolation: ImageInterpolation | LabelInterpolation | None = None,
) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid, e.g. a prediction back onto the scan it came from."""
    return _resample_onto(
        volume, reference.shape[::-1], reference.spacing, reference.origin, reference.direction, is_label, interpolation
    )


def _resample_onto(volume, size, spacing, origin, direction, is_label, interpolation) -> Volume:
    if is_label:
        method = interpolation or "nearest"
        if method not in ("nearest", "label_linear"):
            raise MeddetInputError(f"Labels cannot use '{method}' interpolation; use 'nearest' or 'label_linear'.")
        array = _resample_labels(volume, size, spacing, origin, direction, method)  # type: ignore[arg-type]
    else:
        method = interpolation or "linear"
        if method not in _SITK_INTERPOLATORS:
            raise MeddetInputError(f"Unknown image interpolation '{method}'; use linear, bspline or nearest.")
        source = volume.to_sitk()
        if source.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            source = sitk.Cast(source, sitk.sitkFloat32)
        default = float(np.min(volume.array)) if volume.array.size else 0.0
        array = sitk.GetArrayFromImage(_resample(source, size, spacing, origin, direction, _SITK_INTERPOLATORS[method], default))
    return volume.with_array(array, spacing=tuple(spacing), origin=tuple(origin), direction=np.asarray(direction))


def correct_tilt(volume: Volume, is_label: bool = False) -> Volume:
    """Resample a gantry-tilted (sheared) volume onto an orthogonal grid covering it, as dcm2niix does.

    The output keeps the in-plane axes and spacing; its slice axis is their cross product, with the original
    slice-to-slice distance measured along it.
    """
    if volume.is_orthogonal:
        return volume
    d = volume.direction
    normal = np.cross(d[:, 0], d[:, 1])
    normal /= np.linalg.norm(normal)
    direction = np.column_stack([d[:, 0], d[:, 1], normal])
    # bounding box of the sheared grid's corners, in the new orthogonal frame
    nz, ny, nx = volume.shape
    corners = np.array([[z, y, x] for z in (0, nz - 1) for y in (0, ny - 1) for x in (0, nx - 1)], dtype=float)
    world = volume.index_zyx_to_lps(corners)
    local = (world - np.asarray(volume.origin)) @ direction  # coordinates along the new axes
    step = abs(float(np.dot(d[:, 2], normal))) * volume.spacing[2]
    spacing = (volume.spacing[0], volume.spacing[1], step)
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = np.floor((hi - lo) / np.array(spacing)).astype(int) + 1
    origin = np.asarray(volume.origin) + direction @ lo
    out = _resample_onto(volume, tuple(size), spacing, tuple(origin), direction, is_label, None)
    out.warnings.append(
        f"Gantry tilt corrected: resampled onto an orthogonal grid ({volume.shape} → {out.shape} voxels)."
    )
    return out
