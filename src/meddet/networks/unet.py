"""Residual 3D U-Net: MONAI's ``DynUNet`` with residual blocks and instance norm (nnU-Net's architecture).

Why ``DynUNet`` rather than MONAI ``UNet(num_res_units=2)``: ``UNet`` downsamples in its very first layer and
its only full-resolution layer is the output convolution, which has ``out_channels`` features. A 4 mm lung
nodule is 4-6 voxels across at typical spacing; features computed at full resolution are what separate it from
a vessel seen end-on. ``DynUNet`` keeps a full-resolution stage (two 3x3x3 convs at ``channels[0]`` width), takes
per-axis strides and kernel sizes for anisotropic patches, and has nnU-Net's deep-supervision heads built in. The
price is compute: about 10x the FLOPs of ``UNet`` at the same widths (nnU-Net pays the same).
``channels``/``strides`` mean the same here as in the late-fusion and hybrid variants, so they compare directly.

Instance norm because batches are 2-4 patches, where batch-norm statistics are noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import DynUNet
from torch import nn

from meddet.networks.topology import Stride, Triple, as_triple, check_topology, default_topology, total_stride


def build_unet(
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    strides: Sequence[Stride],
    kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    dropout: float | None = None,
    deep_supervision: int = 0,
) -> nn.Module:
    """Residual U-Net mapping (B, in, D, H, W) to (B, out, D, H, W) logits.

    ``channels[i]`` is the width at level i (level 0 at full resolution); ``strides[i]`` takes level i to i+1.
    ``kernel_sizes`` (one per level, default 3) lets a planner use e.g. (1, 3, 3) on a coarse slice axis.
    ``deep_supervision`` > 0 adds that many output heads on the coarser decoder levels (nnU-Net): in training
    mode the model then returns (B, 1 + heads, out, D, H, W), the full-resolution logits first and each head
    upsampled to full size (``DeepSupervisedLoss`` takes that); in eval mode it returns the logits alone, so
    prediction and export do not change. Why: the deep decoder levels get a direct gradient from the label
    instead of one diluted through every later level, which speeds up the early, "predict nothing" phase of
    training on tiny lesions.
    """
    chans, triples = check_topology(channels, strides)
    kernels = [as_triple(k, "kernel size") for k in (kernel_sizes or [3] * len(chans))]
    if len(kernels) != len(chans):
        raise ValueError(f"kernel_sizes needs one entry per level ({len(chans)}), got {len(kernels)}")
    if not 0 <= deep_supervision <= deep_supervision_heads(triples):
        raise ValueError(
            f"deep_supervision {deep_supervision}: a unet with {len(triples)} strides has at most "
            f"{deep_supervision_heads(triples)} heads (one per decoder level but the coarsest)"
        )
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=[(1, 1, 1), *triples],
        upsample_kernel_size=list(triples),
        filters=list(chans),
        dropout=dropout,
        norm_name="instance",
        res_block=True,
        deep_supervision=deep_supervision > 0,
        deep_supr_num=max(deep_supervision, 1),
    )


def default_arch(patch_size: Sequence[int]) -> dict[str, Any]:
    """Widths and strides from the patch size (nnU-Net rule), for use without a planner."""
    channels, strides = default_topology(patch_size)
    return {"channels": channels, "strides": strides}


def deep_supervision_heads(strides: Sequence[Stride]) -> int:
    """nnU-Net supervises every decoder level but the coarsest: one head per stride but one (0 for a 2-level net)."""
    return max(len(strides) - 1, 0)


def divisor(arch: dict[str, Any]) -> Triple:
    """Patch size must be a multiple of the product of the strides, per axis."""
    return total_stride(arch["strides"])
