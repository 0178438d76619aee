"""From a fingerprint to a training plan, the way nnU-Net does it, with every decision's reason written down.

Why reasons: a plan is only trustworthy if a user can see why the patch is 32×96×96 and not 128³ and override
what they disagree with. Every key of ``plan["decisions"]`` says what was chosen and why; options passed by the
user are recorded as overrides.

Budget model: on a CPU the binding limit is time per training step (and RAM); on a GPU it is memory. Both are
estimated analytically from the network's forward FLOPs (counted on the meta device, no arithmetic) and its
activation sizes, so planning takes seconds and gives the same answer on every machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddet.networks.registry import build_model, count_gflops, required_divisor, resolve_arch
from meddet.networks.topology import default_topology, total_stride
from meddet.networks.unet import deep_supervision_heads
from meddet.planning.fingerprint import CONTEXT_MM, Fingerprint
from meddet.precision import choose_precision
from meddet.training.augment import DEFAULT_PATCH_CENTRE, check_patch_centre

ANISOTROPY_RATIO = 3.0  # nnU-Net: an axis this much coarser than the finest is "strongly anisotropic"
# Conservative fwd+bwd throughput of 3D convs on 2 AVX-512 cores per precision (docs/training.md); bf16 measured 2-2.7x.
CPU_EFFECTIVE_GFLOPS = {"fp32": 50.0, "bf16": 100.0}
ACTIVATION_FACTOR = 24  # stored tensors per conv output in a residual U-Net step (conv, norm, act, grads, skips)
MIN_PATCH = 16
TOPOLOGY_MODELS = ("unet", "unet_late_fusion", "hybrid")  # models whose encoder the planner sizes


@dataclass
class Budget:
    """What one training step may cost: memory in GiB, and (CPU only) seconds."""

    memory_gib: float
    step_seconds: float | None
    device: str  # "cpu" or "cuda"
    precision: str = "fp32"  # "bf16" where the device has it natively (meddet.precision)


def default_budget(gpu_memory_gib: float | None = None, step_seconds: float = 2.0) -> Budget:
    """CPU: a quarter of this machine's RAM (at most 8 GiB) and ``step_seconds``; GPU: its memory, no time cap."""
    if gpu_memory_gib:
        return Budget(memory_gib=float(gpu_memory_gib) * 0.85, step_seconds=None, device="cuda", precision="bf16")
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        total = 8.0
    return Budget(memory_gib=min(total / 4, 8.0), step_seconds=step_seconds, device="cpu", precision=choose_precision("cpu")[0])


def choose_target_spacing(fp: Fingerprint) -> tuple[list[float], str]:
    """Median spacing; the 10th percentile along a strongly anisotropic axis (nnU-Net's rule)."""
    spacings = np.asarray(fp.spacings, dtype=float)
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    reason = "median spacing of the training cases"
    if target[worst] > ANISOTROPY_RATIO * min(target[others]):
        target[worst] = float(np.percentile(spacings[:, worst], 10))
        reason += (
            f"; axis {'xyz'[worst]} is strongly anisotropic (> {ANISOTROPY_RATIO:g}× the finest), so it uses the "
            "10th percentile of its spacings to keep thin-slice detail"
        )
    return [round(float(t), 4) for t in target], reason


def _activation_gib(patch: tuple[int, int, int], channels: tuple[int, ...], strides, batch: int) -> float:
    size = np.array(patch, dtype=float)
    floats = 0.0
    for level, width in enumerate(channels):
        if level:
            size = size / np.array(strides[level - 1])
        floats += float(np.prod(size)) * width
    return batch * floats * ACTIVATION_FACTOR * 4 / 2**30


def _round_to(value: float, divisor: int) -> int:
    return max(divisor, int(value // divisor) * divisor)


def choose_patch_and_network(
    median_shape_zyx: np.ndarray,
    spacing_zyx: np.ndarray,
    budget: Budget,
    in_channels: int,
    out_channels: int,
    max_patch: int,
    base_channels: int,
    max_channels: int,
) -> dict[str, Any]:
    """Shrink a patch from the median image size until one step fits the budget (nnU-Net's loop).

    The axis with the largest physical extent shrinks first, so the patch tends to a physically isotropic
    box; sizes stay multiples of the network's total stride.
    """
    patch = np.minimum(median_shape_zyx, max_patch).astype(float)
    batch = 2
    while True:
        patch_t = tuple(int(p) for p in patch)
        channels, strides = default_topology(patch_t, base_channels=base_channels, max_channels=max_channels)
        div = total_stride(strides)
        patch_t = tuple(_round_to(p, d) for p, d in zip(patch_t, div))
        channels, strides = default_topology(patch_t, base_channels=base_channels, max_channels=max_channels)
        with torch.device("meta"):  # shapes only: no weight initialisation, no memory
            model = build_model("unet", in_channels, out_channels, patch_t, channels=channels, strides=strides)
        gflops = count_gflops(model, in_channels, patch_t)
        memory = _activation_gib(patch_t, channels, strides, batch)
        seconds = 3 * gflops * batch / CPU_EFFECTIVE_GFLOPS[budget.precision] if budget.step_seconds else None
        fits = memory <= budget.memory_gib and (seconds is None or seconds <= budget.step_seconds)
        if fits or max(patch_t) <= MIN_PATCH:
            return {
                "patch_size": list(patch_t),
                "batch_size": batch,
                "channels": list(channels),
                "strides": [list(s) for s in strides],
                "forward_gflops_per_patch": round(gflops, 3),
                "estimated_step_memory_gib": round(memory, 3),
                "estimated_step_seconds": None if seconds is None else round(seconds, 3),
            }
        extent = patch * spacing_zyx
        axis = int(np.argmax(np.where(patch > MIN_PATCH, extent, -1)))
        patch[axis] = max(MIN_PATCH, patch[axis] - max(div[axis], patch[axis] * 0.1))


def make_plan(
    fp: Fingerprint,
    budget: Budget | None = None,
    overrides: dict[str, Any] | None = None,
    labels: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The plan: preprocessing, model, loss and training settings, each with its reason."""
    budget = budget or default_budget()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "precision" in overrides:  # the step-time estimate that sizes the patch depends on it
        budget = replace(budget, precision=overrides["precision"])
    labels = labels or {"background": 0, "foreground": 1}
    num_classes = max(labels.values()) + 1
    decisions: dict[str, str] = {}

    spacing, decisions["target_spacing"] = choose_target_spacing(fp)
    if "target_spacing" in overrides:
        spacing, decisions["target_spacing"] = [float(s) for s in overrides["target_spacing"]], "set by the user"

    normalization = []
    for name, stats in zip(fp.channel_names, fp.intensity):
        if name.upper() == "CT":
            normalization.append({
                "channel": name, "scheme": "ct_clip_zscore",
                "low": stats["percentile_00_5"], "high": stats["percentile_99_5"],
                "mean": stats["mean"], "std": max(stats["std"], 1e-3),
            })
        else:
            normalization.append({"channel": name, "scheme": "zscore"})
    decisions["normalization"] = (
        "CT channels: HU are physical, so clip to the 0.5–99.5 percentiles over the whole dataset and z-score with "
        f"their mean/std (nnU-Net), sampled from the lesions and the {CONTEXT_MM:g} mm around them in equal parts (nnU-Net samples "
        "lesions only, which flattens the lung around a ground-glass nodule to its faintest voxel); other channels: "
        "z-score each image on its own"
    )

    is_ct = bool(fp.channel_names) and fp.channel_names[0].upper() == "CT"
    lungs = any(k.lower() in ("nodule", "nodules", "lung", "lesion") for k in labels)
    crop = overrides.get("crop") or ("lung" if is_ct and lungs else "body" if is_ct else "none")
    decisions["crop"] = (
        "set by the user" if "crop" in overrides else
        "lung nodules lie only in the lungs: train and predict inside the lung bounding box (+10 mm)" if crop == "lung"
        else "CT: air around the body carries nothing; crop to the body" if crop == "body" else "no crop for non-CT data"
    )

    spacing_zyx = np.array(spacing[::-1])
    shapes_zyx = np.asarray(fp.shapes, dtype=float)
    phys = shapes_zyx * np.asarray(fp.spacings, dtype=float)[:, ::-1]
    median_shape = np.maximum(np.round(np.median(phys, axis=0) / spacing_zyx), MIN_PATCH)
    gpu = budget.device == "cuda"
    network = choose_patch_and_network(
        median_shape, spacing_zyx, budget, len(fp.channel_names), num_classes,
        max_patch=160 if gpu else 112, base_channels=32 if gpu else 16, max_channels=320 if gpu else 128,
    )
    decisions["patch_size"] = (
        f"largest patch (from the median image size {median_shape.astype(int).tolist()} at target spacing) whose "
        f"training step fits the budget: {budget.memory_gib:.1f} GiB"
        + (f" and {budget.step_seconds:g} s per step at ~{CPU_EFFECTIVE_GFLOPS[budget.precision]:g} GFLOP/s "
           f"({budget.precision}) on this CPU" if budget.step_seconds else " of GPU memory")
    )
    if "patch_size" in overrides:
        patch = [int(p) for p in overrides["patch_size"]]
        channels, strides = default_topology(patch, base_channels=network["channels"][0], max_channels=max(network["channels"]))
        network.update(patch_size=patch, channels=list(channels), strides=[list(s) for s in strides])
        decisions["patch_size"] = "set by the user"
    if "batch_size" in overrides:
        network["batch_size"] = int(overrides["batch_size"])
        decisions["batch_size"] = "set by the user"
    else:
        decisions["batch_size"] = "2, nnU-Net's minimum: instance norm makes small batches fine, more costs time"
    decisions["network"] = (
        "residual U-Net; depth: halve each axis while it stays ≥ 4 voxels (at most 5 times), widths double per "
        f"level from {network['channels'][0]} up to {max(network['channels'])}"
        + (" (a CPU-sized network)" if not gpu else "")
    )

    model_name = overrides.get("model", "unet")
    decisions["model"] = "set by the user" if "model" in overrides else "unet: the strong default of nnU-Net"
    model: dict[str, Any] = {"name": model_name}
    if model_name in TOPOLOGY_MODELS:
        model.update(channels=network["channels"], strides=network["strides"])
    else:  # e.g. swin_unetr: its own architecture; the patch must meet its divisor
        div = required_divisor(model_name, resolve_arch(model_name, network["patch_size"]))
        network["patch_size"] = [max(2 * d, _round_to(p, d)) for p, d in zip(network["patch_size"], div)]
        decisions["patch_size"] += f"; rounded to multiples of {list(div)} for {model_name}"
    if model_name == "unet":
        model["deep_supervision"] = deep_supervision_heads(network["strides"])
        decisions["deep_supervision"] = (
            f"{model['deep_supervision']} extra output heads on the decoder levels but the coarsest, loss weights "
            "halving per level (nnU-Net): the deep levels learn from the label directly, which shortens the early "
            "phase where the model predicts no lesion at all; prediction uses the full-resolution output only"
        )
    loss = overrides.get("loss", "dice_ce")
    decisions["loss"] = "set by the user" if "loss" in overrides else (
        "Dice + cross-entropy (nnU-Net): Dice fights the extreme class imbalance of small lesions, CE keeps gradients "
        "smooth on patches without a lesion"
    )
    iterations = int(overrides.get("iterations", 2000 if not gpu else 50_000))
    patch_centre = check_patch_centre(overrides.get("patch_centre", DEFAULT_PATCH_CENTRE))
    training = {
        "iterations": iterations,
        "validate_every": int(overrides.get("validate_every", max(50, iterations // 20))),
        "optimizer": "adamw", "learning_rate": float(overrides.get("learning_rate", 2e-3)), "weight_decay": 1e-5,
        "schedule": "poly", "oversample_foreground": 0.33, "seed": int(overrides.get("seed", 0)),
        "validation_fraction": 0.2, "augmentation_probability": 0.2, "cutmix_probability": 0.0,
        "patch_centre": patch_centre, "precision": budget.precision,
        "texture_noise_probability": float(overrides.get("texture_noise", 0.0)),
    }
    cpu_precision, cpu_reason = choose_precision("cpu")
    decisions["precision"] = "set by the user" if "precision" in overrides else (
        cpu_reason if budget.device == "cpu" and budget.precision == cpu_precision else
        f"{budget.precision} from the budget" + (" (float32 at run time on a GPU without bf16)" if budget.device == "cuda" else "")
    )
    decisions["training"] = (
        "AdamW with poly decay converges in the short runs a CPU affords (nnU-Net's SGD needs ~10⁵ steps); the last "
        "third of each batch (with a batch of 2: one patch) is centred on a lesion so small nodules are seen; 20% of "
        "cases held out for validation"
    )
    decisions["patch_centre"] = "set by the user" if "patch_centre" in overrides else (
        "voxel: every lesion voxel equally likely as a forced patch's centre (nnU-Net); `--patch-centre lesion` shows "
        "small lesions as often as large ones (more found, slower Dice)"
    )
    decisions["texture_noise"] = "set by the user" if "texture_noise" in overrides else (
        "none: the training data's own noise only; `--texture-noise P` adds correlated noise (5-40 HU, 0.5-2 mm "
        "grain) to that share of CT patches, for scanners whose noise is blotchier than the data's"
    )
    return {
        "version": 1,
        "dataset": fp.dataset,
        "channel_names": fp.channel_names,
        "labels": labels,
        "num_classes": num_classes,
        "target_spacing": spacing,
        "crop": crop,
        "normalization": normalization,
        "model": model,
        "patch_size": network["patch_size"],
        "batch_size": network["batch_size"],
        "loss": {"name": loss},
        "training": training,
        "budget": {"device": budget.device, "memory_gib": round(budget.memory_gib, 2), "step_seconds": budget.step_seconds,
                   "forward_gflops_per_patch": network["forward_gflops_per_patch"],
                   "estimated_step_memory_gib": network["estimated_step_memory_gib"],
                   "estimated_step_seconds": network["estimated_step_seconds"]},
        "decisions": decisions,
    }


def save_plan(plan: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(plan, indent=2))
    return path


def load_plan(path: str | Path) -> dict[str, Any]:
    from meddet.errors import MeddetInputError

    path = Path(path)
    if not path.is_file():
        raise MeddetInputError("This plan file does not exist.", path, "Create one with `meddet plan DATASET`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MeddetInputError(f"The plan is not valid JSON ({exc.msg}, line {exc.lineno}).", path) from exc
