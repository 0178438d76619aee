"""Swin UNETR: MONAI's shifted-window transformer encoder with a CNN decoder.

Why include it: it is the reference transformer segmenter for 3D CT and the natural comparison for the CNNs.
Defaults are small (``feature_size=24``, half MONAI's 48) so it trains on modest GPUs and runs on a CPU at all;
the planner can raise it. ``feature_size`` must be a multiple of 12 (MONAI checks this).

MONAI >= 1.5 dropped ``img_size``: the network accepts any input whose sides are multiples of 32 (a 2-voxel
token embedding followed by four 2x patch-merging stages, 2**5). Note MONAI's own ``patch_size`` argument means
that *token* size, not our training patch; we keep it at 2 and do not expose it, to avoid the name clash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import SwinUNETR
from torch import nn

from meddet.networks.topology import Triple

DEFAULT_FEATURE_SIZE = 24
TOKEN_SIZE = 2  # MONAI's ``patch_size``; the input must be divisible by TOKEN_SIZE ** 5


def build_swin_unetr(
    in_channels: int,
    out_channels: int,
    feature_size: int = DEFAULT_FEATURE_SIZE,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    **kwargs: Any,
) -> nn.Module:
    """Swin UNETR mapping (B, in, D, H, W) to (B, out, D, H, W) logits; extra kwargs go to MONAI unchanged."""
    if "patch_size" in kwargs or "img_size" in kwargs:
        raise ValueError("swin_unetr: pass the training patch as build_model(patch_size=...); token size is fixed at 2")
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=TOKEN_SIZE,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        norm_name="instance",
        spatial_dims=3,
        **kwargs,
    )


def default_arch(patch_size: Sequence[int]) -> dict[str, Any]:
    """Nothing depends on the patch size beyond divisibility; only the width is set."""
    return {"feature_size": DEFAULT_FEATURE_SIZE}


def divisor(arch: dict[str, Any]) -> Triple:
    """Token embedding (2) times four patch-merging halvings: 2**5 = 32 on every axis."""
    d = TOKEN_SIZE**5
    return (d, d, d)
