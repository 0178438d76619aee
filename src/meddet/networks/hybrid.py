"""Hybrid CNN-transformer U-Net in the TransUNet spirit, assembled from MONAI blocks.

Why: convolutions are good at local texture (nodule margins, vessels) and cheap at high resolution; self-attention
is good at global context (is this blob a nodule or a vessel crossing, where is the pleura) but quadratic in the
number of tokens. Putting the transformer only at the bottleneck of a CNN encoder gets global context over a few
hundred tokens instead of hundreds of thousands of voxels.

Layout: ``UnetResBlock`` encoder stages -> 1x1x1 projection to ``hidden_size`` -> flatten to tokens + a learned
positional embedding (one per bottleneck voxel, sized from the training patch) -> ``TransformerBlock`` x
``num_layers`` -> back to a feature map -> ``UnetUpBlock`` decoder with skips -> ``UnetOutBlock``. The
transformer path is added residually to the CNN bottleneck so that at initialisation the model is a plain
residual U-Net and trains as stably as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import nn

from meddet.networks.encoder import ResEncoder, SkipDecoder
from meddet.networks.topology import Stride, Triple, as_triple, check_topology, default_topology, total_stride


def _self_attention_block(hidden_size: int, mlp_dim: int, num_heads: int, dropout: float) -> TransformerBlock:
    """MONAI ``TransformerBlock`` without its unused cross-attention norm.

    MONAI always creates ``norm_cross_attn`` and only uses it with ``with_cross_attention=True``. Left in, its
    parameters never get a gradient, which inflates parameter counts and makes DistributedDataParallel fail
    unless told to search for unused parameters on every step.
    """
    block = TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate=dropout, qkv_bias=True)
    block.norm_cross_attn = nn.Identity()  # type: ignore[assignment]
    return block


class TransformerBottleneck(nn.Module):
    """Self-attention over all bottleneck voxels, with a learned positional embedding for a fixed grid."""

    def __init__(
        self,
        channels: int,
        grid: Triple,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.grid = grid
        self.proj_in = nn.Conv3d(channels, hidden_size, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] * grid[2], hidden_size))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            _self_attention_block(hidden_size, mlp_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.proj_out = nn.Conv3d(hidden_size, channels, kernel_size=1)

    def _pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The learned embedding, trilinearly resized if the input patch differs from the training patch.

        Why allow it at all: sliding-window inference at the training patch never needs it, but whole-volume
        inference on a small crop or a test at another size should still run rather than fail.
        """
        if tuple(grid) == self.grid:
            return self.pos_embed
        hidden = self.pos_embed.shape[-1]
        volume = self.pos_embed.transpose(1, 2).reshape(1, hidden, *self.grid)
        volume = F.interpolate(volume, size=tuple(grid), mode="trilinear", align_corners=False)
        return volume.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        tokens = self.proj_in(x).flatten(2).transpose(1, 2)  # (B, N, hidden)
        tokens = tokens + self._pos_embed_for((d, h, w))
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        context = tokens.transpose(1, 2).reshape(b, -1, d, h, w)
        return x + self.proj_out(context)


class HybridUNet(nn.Module):
    """(B, in, D, H, W) -> (B, out, D, H, W) logits; CNN encoder/decoder, transformer at the bottleneck."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        patch_size: Sequence[int],
        channels: Sequence[int],
        strides: Sequence[Stride],
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 8,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        chans, triples = check_topology(channels, strides)
        patch = as_triple(tuple(patch_size), "patch_size")
        factor = total_stride(triples)
        grid: Triple = (patch[0] // factor[0], patch[1] // factor[1], patch[2] // factor[2])
        self.encoder = ResEncoder(in_channels, chans, triples)
        self.bottleneck = TransformerBottleneck(
            chans[-1], grid, hidden_size, num_layers, num_heads, mlp_dim or 4 * hidden_size, dropout
        )
        self.decoder = SkipDecoder(out_channels, chans, triples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        features[-1] = self.bottleneck(features[-1])
        return self.decoder(features)


def build_hybrid(
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int],
    channels: Sequence[int],
    strides: Sequence[Stride],
    **transformer: Any,
) -> nn.Module:
    """Registry entry point; ``transformer`` takes hidden_size, num_layers, num_heads, mlp_dim, dropout."""
    return HybridUNet(in_channels, out_channels, patch_size, channels, strides, **transformer)


def default_arch(patch_size: Sequence[int]) -> dict[str, Any]:
    """nnU-Net topology for the CNN part; a 4-layer, 8-head, 256-wide transformer over the bottleneck grid."""
    channels, strides = default_topology(patch_size)
    return {"channels": channels, "strides": strides, "hidden_size": 256, "num_layers": 4, "num_heads": 8}


def divisor(arch: dict[str, Any]) -> Triple:
    """Patch size must be a multiple of the product of the strides, per axis (as for the U-Net)."""
    return total_stride(arch["strides"])
