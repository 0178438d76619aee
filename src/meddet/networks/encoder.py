"""A plain residual CNN encoder and decoder, from MONAI's dynunet blocks, shared by late fusion and hybrid.

Why shared: both variants need the same multi-scale feature pyramid (one ``UnetResBlock`` per level, strided
at every level but the first) and the same skip-connected decoder (``UnetUpBlock`` per level, then
``UnetOutBlock``); only what happens between them differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

from meddet.networks.topology import Triple

NORM = "instance"  # small batches: batch-norm statistics would be noise


class ResEncoder(nn.Module):
    """Feature pyramid: returns one feature map per level, finest first."""

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[Triple]) -> None:
        super().__init__()
        stage_strides: list[Triple] = [(1, 1, 1), *strides]
        widths = [in_channels, *channels]
        self.stages = nn.ModuleList(
            UnetResBlock(3, widths[i], widths[i + 1], kernel_size=3, stride=stage_strides[i], norm_name=NORM)
            for i in range(len(channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SkipDecoder(nn.Module):
    """Upsample from the deepest level, concatenating the encoder feature of each level, then 1x1x1 to logits."""

    def __init__(self, out_channels: int, channels: Sequence[int], strides: Sequence[Triple]) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            UnetUpBlock(
                3,
                channels[level],
                channels[level - 1],
                kernel_size=3,
                stride=1,
                upsample_kernel_size=strides[level - 1],
                norm_name=NORM,
            )
            for level in range(len(channels) - 1, 0, -1)
        )
        self.head = UnetOutBlock(3, channels[0], out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = up(x, skip)
        return self.head(x)
