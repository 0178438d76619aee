"""Model registry: build any segmentation network by name, and compare their size and cost at a patch size.

Why a registry: the training config, the planner and the command line name a model by string; one table maps the
string to a builder, its default architecture for a patch size, and the patch-size divisibility it needs, so that
a bad combination fails at configuration time with a plain message instead of as a shape error mid-epoch.

Every model maps (B, C_in, D, H, W) to (B, C_out, D, H, W) logits (no softmax: losses and inference apply it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from meddet.errors import MeddetInputError
from meddet.networks import hybrid, late_fusion, swin_unetr, unet
from meddet.networks.topology import Triple, as_triple


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model family member and what patch sizes it accepts."""

    build: Callable[..., nn.Module]  # (in_channels, out_channels, patch_size, **arch) -> module
    default_arch: Callable[[Sequence[int]], dict[str, Any]]
    divisor: Callable[[dict[str, Any]], Triple]
    summary: str


_MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(
        build=lambda cin, cout, patch, **arch: unet.build_unet(cin, cout, **arch),
        default_arch=unet.default_arch,
        divisor=unet.divisor,
        summary="residual 3D U-Net (MONAI DynUNet with residual blocks, instance norm; nnU-Net layout)",
    ),
    "unet_late_fusion": ModelSpec(
        build=lambda cin, cout, patch, **arch: late_fusion.build_late_fusion_unet(cin, cout, **arch),
        default_arch=late_fusion.default_arch,
        divisor=late_fusion.divisor,
        summary="one residual encoder per input channel, fused by concat + 1x1x1 conv at every scale",
    ),
    "swin_unetr": ModelSpec(
        build=lambda cin, cout, patch, **arch: swin_unetr.build_swin_unetr(cin, cout, **arch),
        default_arch=swin_unetr.default_arch,
        divisor=swin_unetr.divisor,
        summary="MONAI Swin UNETR (shifted-window transformer encoder, CNN decoder)",
    ),
    "hybrid": ModelSpec(
        build=hybrid.build_hybrid,
        default_arch=hybrid.default_arch,
        divisor=hybrid.divisor,
        summary="CNN encoder/decoder with a transformer bottleneck (TransUNet-like)",
    ),
}


def available_models() -> list[str]:
    """Names accepted by ``build_model``, sorted."""
    return sorted(_MODELS)


def _spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise MeddetInputError(
            f"Unknown model '{name}'.", hint=f"Choose one of: {', '.join(available_models())}."
        ) from None


def resolve_arch(name: str, patch_size: Sequence[int], **arch: Any) -> dict[str, Any]:
    """The model's defaults for this patch size, overridden by whatever the caller (planner) gives."""
    return {**_spec(name).default_arch(patch_size), **arch}


def required_divisor(name: str, arch: Mapping[str, Any] | None = None) -> Triple:
    """Per-axis number every patch side must be a multiple of, for this model and architecture.

    unet / unet_late_fusion / hybrid: the product of ``arch["strides"]`` per axis (so ``arch`` must hold the
    strides; use ``resolve_arch`` to fill defaults). swin_unetr: 32 on every axis.
    """
    spec = _spec(name)
    try:
        return spec.divisor(dict(arch or {}))
    except KeyError as missing:
        raise ValueError(f"{name}: arch must give {missing} to know the divisor (see resolve_arch)") from None


def check_patch_size(name: str, patch_size: Sequence[int], arch: Mapping[str, Any]) -> None:
    """Raise a plain-language error when the patch does not fit the model's downsampling.

    Two rules: every side a multiple of ``required_divisor``, and a bottleneck of more than one voxel (so e.g.
    swin_unetr needs more than 32**3: 64x64x32 is its smallest patch).
    """
    patch = as_triple(tuple(patch_size), "patch_size")
    div = required_divisor(name, arch)
    if any(p % d for p, d in zip(patch, div)):
        suggestion = tuple(max(d, round(p / d) * d) for p, d in zip(patch, div))
        raise MeddetInputError(
            f"Patch size {patch} does not fit model '{name}': each side must be a multiple of {div}.",
            hint=f"Use a patch size such as {suggestion}.",
        )
    if prod(p // d for p, d in zip(patch, div)) < 2:
        # instance norm over a single voxel is undefined (torch raises deep inside the forward pass)
        raise MeddetInputError(
            f"Patch size {patch} is too small for model '{name}': its deepest feature map would be one voxel.",
            hint=f"Use at least twice {div} along one axis, or fewer downsampling steps.",
        )


def build_model(
    name: str, in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **arch: Any
) -> nn.Module:
    """Build model ``name`` for patches of ``patch_size``; ``arch`` overrides its defaults (see each module)."""
    full = resolve_arch(name, patch_size, **arch)
    check_patch_size(name, patch_size, full)
    return _spec(name).build(in_channels, out_channels, tuple(patch_size), **full)


def build_model_from_plan(plan: Mapping[str, Any]) -> nn.Module:
    """The network a training plan describes (model name and arch, channels, classes, patch size)."""
    arch = {k: v for k, v in plan["model"].items() if k != "name"}
    return build_model(plan["model"]["name"], len(plan["channel_names"]), plan["num_classes"], tuple(plan["patch_size"]), **arch)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: nn.Module, in_channels: int, patch_size: Sequence[int]) -> float:
    """Forward-pass GFLOPs for one patch (batch 1), as counted by ``torch.utils.flop_counter``.

    The counter reports 2 FLOPs per multiply-accumulate for convolutions and matmuls; elementwise ops, norms and
    softmax are not counted. The forward runs on a copy moved to the ``meta`` device, so no arithmetic is done
    and a 96**3 patch costs no memory or time.
    """
    import copy

    meta_model = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros((1, in_channels, *patch_size), device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_model(x)
    return counter.get_total_flops() / 1e9


def describe_models(
    patch_size: tuple[int, int, int],
    in_channels: int,
    out_channels: int,
    arch: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per model: name, parameters, gflops (forward, one patch), required_divisor, summary, note.

    ``arch`` optionally maps a model name to architecture overrides. A model that cannot take this patch size
    gets ``parameters``/``gflops`` of None and a ``note`` saying why, rather than being silently dropped.
    """
    rows = []
    for name in available_models():
        spec = _spec(name)
        full = resolve_arch(name, patch_size, **dict((arch or {}).get(name, {})))
        row: dict[str, Any] = {
            "name": name,
            "parameters": None,
            "gflops": None,
            "required_divisor": spec.divisor(full),
            "summary": spec.summary,
            "note": "",
        }
        try:
            check_patch_size(name, patch_size, full)
            model = spec.build(in_channels, out_channels, tuple(patch_size), **full)
        except (MeddetInputError, ValueError) as err:
            row["note"] = str(err).splitlines()[0]
        else:
            row["parameters"] = count_parameters(model)
            row["gflops"] = count_gflops(model, in_channels, patch_size)
        rows.append(row)
    return rows
