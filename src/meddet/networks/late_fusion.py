"""Late-fusion U-Net: one encoder per input modality, fused at every scale, one shared decoder.

Why: with several co-registered inputs (e.g. CT plus a second reconstruction kernel, or PET/CT) early fusion
(stacking channels at the input) forces the first convolution to mix modalities whose intensity meaning
differs. Separate encoders learn modality-specific features first; concatenating them and mixing with a
1x1x1 convolution at each scale lets the decoder and skips see the joint evidence. The cost is roughly
one encoder's parameters and FLOPs per modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import nn

from meddet.networks.encoder import NORM, ResEncoder, SkipDecoder
from meddet.networks.topology import Stride, Triple, check_topology, default_topology, total_stride


class LateFusionUNet(nn.Module):
    """(B, M, D, H, W) with M modalities -> (B, out, D, H, W) logits; each channel gets its own encoder."""

    def __init__(
        self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[Stride]
    ) -> None:
        super().__init__()
        chans, triples = check_topology(channels, strides)
        self.in_channels = in_channels
        self.encoders = nn.ModuleList(ResEncoder(1, chans, triples) for _ in range(in_channels))
        # concatenate the M encoders' features at a level, then mix back to that level's width
        self.fuse = nn.ModuleList(
            Convolution(3, in_channels * width, width, kernel_size=1, norm=NORM, act="leakyrelu") for width in chans
        )
        self.decoder = SkipDecoder(out_channels, chans, triples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels (one per encoder), got {x.shape[1]}")
        per_modality = [encoder(x[:, m : m + 1]) for m, encoder in enumerate(self.encoders)]
        fused = [
            fuse(torch.cat([feats[level] for feats in per_modality], dim=1)) for level, fuse in enumerate(self.fuse)
        ]
        return self.decoder(fused)


def build_late_fusion_unet(
    in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[Stride]
) -> nn.Module:
    """Registry entry point; see ``LateFusionUNet``."""
    return LateFusionUNet(in_channels, out_channels, channels, strides)


def default_arch(patch_size: Sequence[int]) -> dict[str, Any]:
    """Same topology rule as the plain U-Net so the two are directly comparable."""
    channels, strides = default_topology(patch_size)
    return {"channels": channels, "strides": strides}


def divisor(arch: dict[str, Any]) -> Triple:
    """Patch size must be a multiple of the product of the strides, per axis."""
    return total_stride(arch["strides"])
