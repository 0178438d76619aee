"""Encoder topology (widths and strides per level) shared by the U-Net family, and its divisibility rule.

Why a module of its own: the residual U-Net, the late-fusion U-Net and the hybrid all describe their encoder
the same way (MONAI ``UNet`` convention: ``channels`` has one entry per resolution level, ``strides`` one
entry per downsampling, so ``len(strides) == len(channels) - 1``). The planner fills these from the patch
size; the defaults here are the nnU-Net rule so a model can be built without a planner, e.g. in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

Stride = int | Sequence[int]
Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int], what: str = "value") -> Triple:
    """Spell an isotropic int or a per-axis sequence as a (D, H, W) triple, so anisotropy is explicit."""
    if isinstance(value, int):
        return (value, value, value)
    triple = tuple(int(v) for v in value)
    if len(triple) != 3:
        raise ValueError(f"{what} must be an int or three ints (D, H, W), got {value!r}")
    return triple  # type: ignore[return-value]


def check_topology(channels: Sequence[int], strides: Sequence[Stride]) -> tuple[tuple[int, ...], tuple[Triple, ...]]:
    """Validate and normalise an encoder description; returns (channels, per-axis strides)."""
    channels = tuple(int(c) for c in channels)
    triples = tuple(as_triple(s, "each stride") for s in strides)
    if len(channels) < 2:
        raise ValueError(f"need at least two levels (one downsampling), got channels={channels}")
    if len(triples) != len(channels) - 1:
        raise ValueError(
            f"strides needs one entry per downsampling (len(channels) - 1 = {len(channels) - 1}), got {len(triples)}"
        )
    if min(channels) < 1 or min(min(t) for t in triples) < 1:
        raise ValueError(f"channels and strides must be positive, got {channels} and {triples}")
    return channels, triples


def total_stride(strides: Sequence[Stride]) -> Triple:
    """Per-axis product of the strides: the patch size must be a multiple of this.

    Why: each strided conv halves (say) the grid and the decoder's transposed conv doubles it back; an odd
    size at any level loses a voxel on the way down that the skip concatenation then cannot match.
    """
    triples = [as_triple(s) for s in strides]
    return tuple(prod(t[axis] for t in triples) for axis in range(3))  # type: ignore[return-value]


def default_topology(
    patch_size: Sequence[int],
    base_channels: int = 32,
    max_channels: int = 320,
    min_bottleneck: int = 4,
    max_downsamplings: int = 5,
) -> tuple[tuple[int, ...], tuple[Triple, ...]]:
    """nnU-Net's rule: halve each axis while it stays >= ``min_bottleneck`` voxels, double widths up to a cap.

    Axes stop downsampling independently, so a flat patch (e.g. 32x128x128) gets anisotropic strides such
    as (1, 2, 2) at the deeper levels instead of a 1-voxel-thick bottleneck.
    """
    size = list(as_triple(tuple(patch_size), "patch_size"))
    strides: list[Triple] = []
    for _ in range(max_downsamplings):
        step = tuple(2 if s % 2 == 0 and s // 2 >= min_bottleneck else 1 for s in size)
        if step == (1, 1, 1):
            break
        strides.append(step)  # type: ignore[arg-type]
        size = [s // f for s, f in zip(size, step)]
    if not strides:
        raise ValueError(f"patch_size {tuple(patch_size)} is too small to downsample even once")
    channels = tuple(min(base_channels * 2**level, max_channels) for level in range(len(strides) + 1))
    return channels, tuple(strides)
