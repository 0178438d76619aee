"""Turning a case's channels into model input exactly as its plan says: crop, resample, normalise.

Why one function for training and prediction: a model only works on input prepared the way its training data
was. Training caches the result on disk; prediction runs it on the fly and uses ``PreparedCase.grid`` and
``crop_box`` to put predictions back on the scan's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meddet.errors import MeddetInputError
from meddet.preprocess.crop import body_mask, bounding_box, crop, lung_bounding_box
from meddet.preprocess.normalize import clip_zscore, zscore
from meddet.preprocess.resample import resample_to_spacing
from meddet.volume import Volume

CROP_MARGIN_MM = 10.0


@dataclass
class PreparedCase:
    """Model input ``image`` (C, z, y, x) float32, optional ``label`` (z, y, x) uint8, on the grid ``grid``.

    ``grid`` is a Volume (holding the label or channel 0) whose geometry is that of the arrays: cropped and
    resampled. ``crop_box`` is the crop in the original scan's voxels ([z, y, x] slices).
    """

    image: np.ndarray
    label: np.ndarray | None
    grid: Volume
    crop_box: tuple[slice, slice, slice]


def crop_box_for(volume: Volume, mode: str) -> tuple[slice, slice, slice]:
    """The region a plan's ``crop`` keeps: lungs (+10 mm), body, or everything; falls back to the body then all."""
    full = tuple(slice(0, n) for n in volume.shape)
    if mode == "none":
        return full  # type: ignore[return-value]
    if mode == "lung":
        box = lung_bounding_box(volume, margin_mm=CROP_MARGIN_MM)
        if box is not None:
            return box
    margin = tuple(int(np.ceil(CROP_MARGIN_MM / s)) for s in volume.spacing_zyx)
    return bounding_box(body_mask(volume), margin) or full  # type: ignore[return-value]


def normalize_channel(array: np.ndarray, scheme: dict[str, Any]) -> np.ndarray:
    """One channel's normalisation from the plan (see meddet.planning.planner)."""
    if scheme["scheme"] == "ct_clip_zscore":
        return clip_zscore(array, scheme["low"], scheme["high"], scheme["mean"], scheme["std"])
    if scheme["scheme"] == "zscore":
        return zscore(array)
    raise MeddetInputError(f"Unknown normalisation scheme '{scheme['scheme']}' in the plan.")


def hu_per_unit(plan: dict[str, Any]) -> list[float | None]:
    """HU per normalised unit of each channel that ``normalize_channel`` maps from HU (None for the others): how
    textured noise given in HU is scaled to the network's input."""
    return [float(n["std"]) if n["scheme"] == "ct_clip_zscore" else None for n in plan["normalization"]]


def prepare_case(channels: list[Volume], plan: dict[str, Any], label: Volume | None = None,
                 box: tuple[slice, slice, slice] | None = None) -> PreparedCase:
    """Crop (on channel 0; to ``box`` when given, else the plan's crop), resample to the plan's spacing and normalise
    every channel. ``box`` lets a second pass on another grid reuse the first's crop (the lung box costs ~1 s)."""
    if len(channels) != len(plan["channel_names"]):
        raise MeddetInputError(
            f"The model expects {len(plan['channel_names'])} channel(s) ({', '.join(plan['channel_names'])}), "
            f"got {len(channels)}."
        )
    reference = channels[0]
    for i, other in enumerate(channels[1:], start=1):
        if not other.same_geometry(reference, atol=1e-2):
            raise MeddetInputError(
                f"Channel {i} ({plan['channel_names'][i]}) is not on the same voxel grid as channel 0: co-register "
                "and resample it first."
            )
    if label is not None and not label.same_geometry(reference, atol=1e-2):
        raise MeddetInputError("The label map is not on the same voxel grid as its image.")
    box = box or crop_box_for(reference, plan.get("crop", "none"))
    spacing = tuple(plan["target_spacing"])
    arrays = []
    grid: Volume | None = None
    for volume, scheme in zip(channels, plan["normalization"]):
        resampled = resample_to_spacing(crop(volume, box), spacing)
        arrays.append(normalize_channel(np.asarray(resampled.array, dtype=np.float32), scheme))
        grid = grid or resampled
    label_array = None
    if label is not None:
        resampled_label = resample_to_spacing(crop(label, box), spacing, is_label=True, interpolation="label_linear")
        label_array = np.asarray(resampled_label.array, dtype=np.uint8)
    assert grid is not None
    return PreparedCase(np.stack(arrays).astype(np.float32), label_array, grid, box)
