"""Sliding-window prediction of a lesion probability map on the scan's own grid.

Why this shape: the model sees the scan the way it was trained (plan: lung crop, target spacing, normalisation);
MONAI's sliding window with Gaussian blending stitches patches without seams; the result is resampled back onto the
*input* grid so lesions, masks and DICOM SEG line up with the images the radiologist looks at.

Memory: only the lesion probability (one float32 channel, 1 − p(background)) leaves the sliding window, the logits
of all classes never exist at full resolution (nnU-Net issues #1572/#1869 are users hitting exactly that), and the
probability outside the lung box is never computed.

Mirroring: the probability can be averaged over mirrored copies of the scan (nnU-Net's test-time mirroring; the
network was trained with mirroring on every axis, so each copy is in distribution). Averaging damps the confident
single-view mistakes that make false positives. A model file names the mirroring its threshold was calibrated
with (``MIRRORINGS``): the bundled lung-nodule model uses ``"z"``, the scan and its head-foot mirror (two passes),
which on 40 fresh phantoms gave most of the gain of all eight mirrorings at a quarter of their time.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from meddet.detection.rescorer import Rescorer
from meddet.errors import MeddetInputError
from meddet.networks.registry import build_model_from_plan
from meddet.precision import autocast, resolve_precision
from meddet.preprocess.crop import crop_grid
from meddet.preprocess.prepare import PreparedCase, prepare_case
from meddet.preprocess.resample import resample_like
from meddet.volume import Volume

# outline_threshold None: lesions keep the outline they were found with (meddet.detection.lesions.refine_outlines)
# mass_zoom / mass_min_diameter_mm: the coarse second pass for masses (meddet.detection.masses); None: no such pass.
DEFAULT_POSTPROCESSING: dict[str, float | None] = {"threshold": 0.5, "min_volume_mm3": 10.0, "outline_threshold": None,
                                                   "mass_zoom": None, "mass_min_diameter_mm": None}
# A mirroring names the array axes (x columns, y rows, z slices: left-right, front-back, head-foot in an axial scan)
# whose mirror images are averaged with the scan: "z" = the scan and its slice-order mirror (2 passes), "xyz" = all 8
# combinations (nnU-Net's test-time mirroring), "none" = one pass.
_AXIS_DIMS = {"x": 4, "y": 3, "z": 2}  # dimensions of the (batch, channel, z, y, x) input
MIRRORINGS: tuple[str, ...] = ("none", "x", "y", "z", "xy", "xz", "yz", "xyz")


def check_mirroring(mirroring: str) -> str:
    """``mirroring`` if it is one of ``MIRRORINGS``; a ValueError naming the choices otherwise."""
    if mirroring not in MIRRORINGS:
        raise ValueError(f"Unknown mirroring '{mirroring}'; choose one of {', '.join(MIRRORINGS)}.")
    return mirroring


def mirror_flips(mirroring: str) -> list[tuple[int, ...]]:
    """The flip dimensions of every mirrored copy ``mirroring`` averages, the unmirrored scan (``()``) first."""
    axes = "" if check_mirroring(mirroring) == "none" else mirroring
    dims = [_AXIS_DIMS[a] for a in axes]
    return [tuple(sorted(combo)) for k in range(len(dims) + 1) for combo in itertools.combinations(dims, k)]


@dataclass
class LoadedModel:
    """A network in eval mode with the plan it was trained with and its post-processing settings."""

    network: torch.nn.Module
    plan: dict[str, Any]
    name: str
    version: str
    postprocessing: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_POSTPROCESSING))
    precision: str = "fp32"  # what the convolutions run in here (meddet.precision)
    mirroring: str = "none"  # the test-time mirroring the threshold was calibrated with (MIRRORINGS)
    rescorer: Rescorer | None = None  # the second stage, when the model file has one (meddet.detection.rescorer)


def load_model(path: str | Path, precision: str | None = None) -> LoadedModel:
    """Load a meddet checkpoint (from ``meddet train`` or a bundled model file).

    ``precision`` (bf16/fp32) defaults to the precision the model was trained in, so its calibrated threshold holds;
    either is downgraded to fp32 on a CPU without native bf16.
    """
    path = Path(path)
    if not path.is_file():
        raise MeddetInputError("This model file does not exist.", path, "Give a checkpoint from `meddet train`, or omit --model.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise MeddetInputError("This file is not a meddet model checkpoint.", path) from exc
    if not isinstance(state, dict) or "plan" not in state or "model" not in state:
        raise MeddetInputError("This file is not a meddet model checkpoint (no plan or weights in it).", path)
    mirroring = str(state.get("inference", {}).get("mirroring", "none"))  # `meddet train` checkpoints have none
    try:
        check_mirroring(mirroring)
    except ValueError as exc:
        raise MeddetInputError(f"This model file names an unknown test-time mirroring '{mirroring}'.", path) from exc
    plan = state["plan"]
    network = build_model_from_plan(plan)
    network.load_state_dict(state["model"])
    network.eval()
    return LoadedModel(
        network, plan, str(state.get("name", path.stem)), str(state.get("version", "unversioned")),
        {**DEFAULT_POSTPROCESSING, **state.get("postprocessing", {})},
        resolve_precision(precision or plan.get("training", {}).get("precision", "fp32"), "cpu"),
        mirroring,
        Rescorer.from_state(state["rescorer"]) if "rescorer" in state else None,
    )


def with_grid_scaled(model: LoadedModel, zoom: float) -> LoadedModel:
    """``model`` with a working grid ``zoom`` times its plan's spacing (the same weights): every structure looks
    ``1 / zoom`` times its size to the network (zoom 2: a 50 mm mass looks like the 25 mm lesions it was trained on)."""
    coarse = copy.copy(model)
    coarse.plan = copy.deepcopy(model.plan)
    coarse.plan["target_spacing"] = [s * zoom for s in model.plan["target_spacing"]]
    return coarse


def lesion_probability(
    model: LoadedModel, image: np.ndarray, mirroring: str = "none", sw_batch_size: int = 2, overlap: float = 0.25
) -> np.ndarray:
    """Sliding-window lesion probability (z, y, x) float32 for prepared input ``image`` (C, z, y, x), averaged over
    the mirrored copies that ``mirroring`` names."""
    patch = tuple(model.plan["patch_size"])
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    # pad small inputs up to one patch: the sliding window would otherwise shrink the window, off the trained size
    pad = [max(p - s, 0) for p, s in zip(patch, x.shape[2:])]
    if any(pad):
        x = torch.nn.functional.pad(x, [v for p in reversed(pad) for v in (p // 2, p - p // 2)], mode="replicate")

    def foreground(batch: torch.Tensor) -> torch.Tensor:
        with autocast("cpu", model.precision):
            logits = model.network(batch)
        return 1.0 - torch.softmax(logits.float(), dim=1)[:, :1]

    total = None
    flips = mirror_flips(mirroring)
    with torch.inference_mode():
        for axes in flips:
            inp = torch.flip(x, axes) if axes else x
            prob = sliding_window_inference(inp, patch, sw_batch_size, foreground, overlap=overlap, mode="gaussian")
            prob = torch.flip(prob, axes) if axes else prob
            total = prob if total is None else total + prob
    assert total is not None
    out = (total / len(flips))[0, 0]
    if any(pad):
        out = out[tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, image.shape[1:]))]
    return out.numpy().astype(np.float32)


def predict_probability(model: LoadedModel, channels: list[Volume], mirroring: str | None = None,
                        box: tuple[slice, slice, slice] | None = None) -> tuple[Volume, dict[str, float]]:
    """Lesion probability on the grid of ``channels[0]`` (zero outside the crop ``box``, by default the plan's: the
    lung box), with stage timings. ``mirroring`` defaults to the model's own (the one its threshold was calibrated
    with)."""
    import time

    start = time.perf_counter()
    prepared = prepare_case(channels, model.plan, box=box)
    prepared_s = time.perf_counter() - start
    start = time.perf_counter()
    prob = lesion_probability(model, prepared.image, mirroring or model.mirroring)
    inference_s = time.perf_counter() - start
    start = time.perf_counter()
    probability = probability_on_scan(prob, prepared, channels[0])
    resample_s = time.perf_counter() - start
    return probability, {"preprocess": prepared_s, "inference": inference_s, "resample": resample_s}


def probability_on_scan(probability: np.ndarray, prepared: PreparedCase, reference: Volume) -> Volume:
    """A probability on ``prepared``'s working grid put back on the scan ``reference``: resampled into the crop box,
    clipped to [0, 1], zero outside it."""
    back = resample_like(prepared.grid.with_array(probability), crop_grid(reference, prepared.crop_box))
    full = np.zeros(reference.shape, np.float32)
    full[prepared.crop_box] = np.clip(back.array, 0.0, 1.0)
    return reference.with_array(full)
