"""Training-patch augmentation, CutMix between cases, and foreground-oversampled patch sampling.

Arrays are channel-first without a batch axis: ``image`` (C, D, H, W) float in normalised units, ``label``
(1, D, H, W) integer class indices. The spatial transforms move image and label together (label with
nearest-neighbour interpolation, so it stays a set of class indices); intensity transforms touch the image only.

Why these augmentations and ranges (the nnU-Net set, narrowed for lung CT):
- rotation +-15 degrees and scaling 0.9-1.1: patient positioning and body size vary a little; nodules are roughly
  spherical, so larger rotations add little and cost interpolation blur.
- Gaussian noise sigma 0.01 (normalised units) and gamma 0.8-1.2: scanner noise and reconstruction-kernel
  contrast differences, without changing which structures are visible.
- optionally (``texture_probability``), correlated "textured" noise of 5-40 HU with a grain of 0.5-2 mm, within the
  axial plane or in 3D: the blotches a soft reconstruction kernel or overlapping slices make, which the phantoms'
  own noise does not have and which a model then mistakes for small nodules (``textured_noise``).
- mirroring on every axis: lungs are near-symmetric left-right and the model should not learn absolute position.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import radians
from typing import Any

import cc3d
import numpy as np
import torch
from scipy import ndimage
from monai.transforms import (
    AdjustContrast,
    CastToTyped,
    Compose,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandRotated,
    RandZoomd,
)

KEYS = ("image", "label")
ROTATION_DEGREES = 15.0
ZOOM_RANGE = (0.9, 1.1)
NOISE_STD = 0.01
GAMMA_RANGE = (0.8, 1.2)
# Correlated noise: standard deviation (HU) and grain (the smoothing Gaussian's sigma, mm), drawn per patch.
TEXTURE_SD_HU = (5.0, 40.0)
TEXTURE_GRAIN_MM = (0.5, 2.0)


def textured_noise(
    shape: tuple[int, ...],
    rng: np.random.Generator | np.random.RandomState,
    hu_per_unit: float,
    spacing_zyx_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """A zero-mean noise field of ``shape`` (z, y, x) in units of ``hu_per_unit`` HU: white noise smoothed by a
    Gaussian of a random grain (``TEXTURE_GRAIN_MM``, converted to voxels by ``spacing_zyx_mm``), within each axial
    slice or in all three axes (even odds), scaled to a random standard deviation (``TEXTURE_SD_HU``).

    Why: the phantom spec allows noise of up to 40 HU, "optionally spatially correlated", and a scanner's soft
    reconstruction kernel makes blotches of 1-2 mm; the training phantoms' noise is correlated within slices only,
    at under a voxel. Blotches the size of a small nodule are what a model then mistakes for nodules
    (docs/models/lung-nodule.md, "Noise the model was not trained on"). Draws, in order: grain, plane or 3D, the
    field, the standard deviation (the second stage's bundled classifier was trained with this order)."""
    grain = rng.uniform(*TEXTURE_GRAIN_MM)
    in_plane = rng.random() < 0.5
    sigmas = tuple(grain / float(s) for s in spacing_zyx_mm)
    if in_plane:
        sigmas = (0.0, *sigmas[1:])
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigmas, truncate=3.0)
    return field * np.float32(rng.uniform(*TEXTURE_SD_HU) / hu_per_unit / max(float(field.std()), 1e-6))


# --------------------------------------------------------------------------------------------------------------
# Per-patch augmentation (MONAI dictionary transforms)
# --------------------------------------------------------------------------------------------------------------


class RandGammad(RandomizableTransform, MapTransform):
    """Gamma on each channel's min-max-rescaled intensities, mapped back to that channel's own range.

    Why not ``RandAdjustContrastd`` directly: MONAI's ``AdjustContrast`` (which we reuse per channel) does map back
    to the original range, but it takes the min and max over all channels at once; with two modalities of
    different ranges, the smaller one would be squashed towards the other's scale. As in nnU-Net, one gamma is
    drawn per channel; each channel keeps its min and max exactly.
    """

    def __init__(
        self, keys: Sequence[Hashable] | Hashable, prob: float, gamma_range: tuple[float, float] = GAMMA_RANGE
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.gamma_range = gamma_range
        self.gammas: list[float] = []

    def randomize(self, data: Any = None, channels: int = 1) -> None:
        super().randomize(None)
        self.gammas = [float(self.R.uniform(*self.gamma_range)) for _ in range(channels)] if self._do_transform else []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        self.randomize(channels=max((len(d[k]) for k in keys), default=1))
        if not self._do_transform:
            return d
        for key in keys:
            image = d[key]
            adjusted = [AdjustContrast(gamma)(channel) for channel, gamma in zip(image, self.gammas)]
            d[key] = torch.stack([torch.as_tensor(a) for a in adjusted]).to(torch.as_tensor(image).dtype)
        return d


class RandTexturedNoised(RandomizableTransform, MapTransform):
    """Adds ``textured_noise`` to the CT channels of the image (those with an ``hu_per_unit``; None skips a channel,
    e.g. PET), one field per channel, on the working grid of ``spacing_zyx_mm``."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, prob: float, hu_per_unit: Sequence[float | None],
                 spacing_zyx_mm: tuple[float, float, float]) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.hu_per_unit = list(hu_per_unit)
        self.spacing = tuple(float(s) for s in spacing_zyx_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).clone()
            for channel, scale in enumerate(self.hu_per_unit[: len(image)]):
                if scale is not None:
                    field = textured_noise(tuple(image.shape[1:]), self.R, scale, self.spacing)
                    image[channel] += torch.as_tensor(field, dtype=image.dtype)
            d[key] = image
        return d


def spatial_transforms(prob: float, flip_prob: float = 0.5) -> list[Any]:
    """Rotation, scaling and per-axis mirroring of image and label together.

    Image: (tri)linear interpolation, border padding (no artificial edge at some made-up intensity). Label:
    nearest neighbour (``nearest-exact`` for zoom: torch's plain ``nearest`` shifts by up to half a voxel), zero
    padding (nothing outside the patch is a lesion).
    """
    r = radians(ROTATION_DEGREES)
    return [
        RandRotated(
            KEYS, range_x=r, range_y=r, range_z=r, prob=prob, keep_size=True,
            mode=("bilinear", "nearest"), padding_mode=("border", "zeros"),
        ),
        RandZoomd(
            KEYS, prob=prob, min_zoom=ZOOM_RANGE[0], max_zoom=ZOOM_RANGE[1], keep_size=True,
            mode=("trilinear", "nearest-exact"), padding_mode=("edge", "constant"),
        ),
        *(RandFlipd(KEYS, prob=flip_prob, spatial_axis=axis) for axis in range(3)),
    ]  # fmt: skip


def intensity_transforms(prob: float) -> list[Any]:
    """Gaussian noise and gamma, on the image only."""
    return [
        RandGaussianNoised("image", prob=prob, mean=0.0, std=NOISE_STD, sample_std=False),
        RandGammad("image", prob=prob),
    ]


def build_augmentation(prob: float = 0.2, seed: int = 0, flip_prob: float = 0.5, texture_probability: float = 0.0,
                       hu_per_unit: Sequence[float | None] = (), spacing_zyx_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       ) -> Compose:
    """The full patch augmentation: spatial, then intensity, then plain tensors (image float32, label int64).

    ``prob`` is the probability of each rotation / scaling / noise / gamma transform (nnU-Net uses 0.1-0.3);
    mirroring has its own ``flip_prob`` per axis (nnU-Net: 0.5). ``seed`` makes the sequence reproducible.
    ``texture_probability`` > 0 adds ``RandTexturedNoised`` last (for the CT channels: ``hu_per_unit``, on the grid
    of ``spacing_zyx_mm``); at 0 the pipeline and its random draws are exactly those of before it existed.
    Each DataLoader worker holds a copy with the same seed: use ``monai.data.DataLoader`` (which reseeds
    workers) or reseed in ``worker_init_fn``, or every worker will draw the same augmentations.
    """
    pipeline = Compose(
        [
            *spatial_transforms(prob, flip_prob),
            *intensity_transforms(prob),
            *([RandTexturedNoised("image", texture_probability, hu_per_unit, spacing_zyx_mm)] if texture_probability > 0 else []),
            EnsureTyped(KEYS, track_meta=False),
            CastToTyped(KEYS, dtype=(torch.float32, torch.int64)),
        ]
    )
    pipeline.set_random_state(seed=seed)
    return pipeline


# --------------------------------------------------------------------------------------------------------------
# CutMix between two cases
# --------------------------------------------------------------------------------------------------------------

Box = tuple[slice, slice, slice]


def cutmix(
    image_a: Any, label_a: Any, image_b: Any, label_b: Any, rng: np.random.Generator, alpha: float = 1.0
) -> tuple[Any, Any, Box]:
    """Paste a random box of case b into case a, image and label alike; returns (image, label, box).

    The pasted fraction of the volume is drawn from Beta(alpha, alpha) (alpha=1: uniform) and the box has that
    fraction of each side's cube root, so it keeps the patch's aspect ratio; the box lies wholly inside the patch,
    so the mixed fraction is the drawn one up to rounding. Why for lesions: it puts nodules in new surroundings
    and creates patches with lesions from two cases, without any interpolation. Works on numpy arrays or torch
    tensors (C, D, H, W) / (1, D, H, W); a and b must share the spatial shape. Inputs are not modified.
    """
    spatial = tuple(image_a.shape[1:])
    for name, array in (("label_a", label_a), ("image_b", image_b), ("label_b", label_b)):
        if tuple(array.shape[1:]) != spatial:
            raise ValueError(f"cutmix: {name} has spatial shape {tuple(array.shape[1:])}, image_a has {spatial}")
    fraction = float(rng.beta(alpha, alpha))
    sides = [min(s, int(round(s * fraction ** (1 / 3)))) for s in spatial]
    starts = [int(rng.integers(0, s - side + 1)) for s, side in zip(spatial, sides)]
    box: Box = tuple(slice(st, st + side) for st, side in zip(starts, sides))  # type: ignore[assignment]
    index = (slice(None), *box)
    image, label = _copy(image_a), _copy(label_a)
    image[index] = image_b[index]
    label[index] = label_b[index]
    return image, label, box


def _copy(array: Any) -> Any:
    return array.clone() if isinstance(array, torch.Tensor) else np.array(array, copy=True)


# --------------------------------------------------------------------------------------------------------------
# Patch sampling with foreground oversampling
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """A training patch; unpacks as ``image, label = patch``.

    ``start`` is the patch's corner in the case's voxel grid (negative where the case was padded); ``forced`` says
    whether it was centred on a lesion.
    """

    image: np.ndarray
    label: np.ndarray
    start: tuple[int, int, int]
    forced: bool

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.image, self.label))


MAX_POINTS_PER_LESION = 2_000  # voxels kept per lesion: plenty to vary where a forced patch lands
PATCH_CENTRES = ("voxel", "lesion")  # how a forced patch picks its lesion voxel (see LesionVoxels.pick)
DEFAULT_PATCH_CENTRE = "voxel"  # nnU-Net's rule; also what plans written before the setting existed mean


def check_patch_centre(centre: str) -> str:
    """``centre`` if it is one of ``PATCH_CENTRES``; the one place that rejects anything else."""
    if centre not in PATCH_CENTRES:
        raise ValueError(f"patch centre must be one of {PATCH_CENTRES}, got {centre!r}")
    return centre


@dataclass(frozen=True)
class LesionVoxels:
    """A case's lesions: each one's voxels as a (N, 3) [z, y, x] array (an evenly strided sample of at most
    ``MAX_POINTS_PER_LESION``) and its full size in voxels."""

    points: list[np.ndarray]
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.points)

    def pick(self, rng: np.random.Generator, centre: str = DEFAULT_PATCH_CENTRE) -> np.ndarray:
        """One lesion voxel to centre a patch on.

        ``"voxel"``: every lesion voxel is equally likely (nnU-Net's rule; a lesion is chosen in proportion to its
        size), which is what the voxel-pooled Dice rewards. ``"lesion"``: every lesion is equally likely, then a voxel
        in it. Why offer both: the first centres a 20 mm nodule 300 times as often as a 3 mm one in the same scan, so
        small nodules, the ones a screening detector must find, are all but absent from training; the second shows
        them as often as the large ones (measured in docs/models/lung-nodule.md: more nodules found, the Dice over
        the large ones rises more slowly).
        """
        if check_patch_centre(centre) == "lesion":
            index = int(rng.integers(len(self.points)))
        else:
            index = int(rng.choice(len(self.points), p=self.sizes / self.sizes.sum()))
        lesion = self.points[index]
        return lesion[rng.integers(len(lesion))]


def lesion_voxels(label: np.ndarray, max_points: int = MAX_POINTS_PER_LESION) -> LesionVoxels:
    """The lesions of a (1, D, H, W) or (D, H, W) label; compute once per case and reuse.

    A lesion is a 26-connected component of one label value (cc3d's multi-label mode), so in a multi-class map each
    class region is its own entry, like nnU-Net's "choose a class, then a voxel".
    """
    label = np.asarray(label)
    label = label[0] if label.ndim == 4 else label
    if not label.flags.writeable:  # cc3d refuses read-only buffers such as a memory-mapped cache
        label = np.array(label)
    components, count = cc3d.connected_components(label, connectivity=26, return_N=True)
    if count == 0:
        return LesionVoxels([], np.zeros(0, np.int64))
    flat = np.flatnonzero(components)
    ids = components.ravel()[flat]
    order = np.argsort(ids, kind="stable")
    points = np.stack(np.unravel_index(flat[order], label.shape), axis=1).astype(np.int32)
    sizes = np.bincount(ids, minlength=int(count) + 1)[1:].astype(np.int64)  # cc3d numbers components 1..count
    groups = np.split(points, np.cumsum(sizes)[:-1])
    return LesionVoxels([g[:: -(-len(g) // max_points)] for g in groups], sizes)


def sample_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: Sequence[int],
    rng: np.random.Generator,
    force_foreground: bool,
    lesions: LesionVoxels | None = None,
    centre: str = DEFAULT_PATCH_CENTRE,
) -> Patch:
    """Crop one (C, *patch_size) patch; with ``force_foreground`` it contains a lesion voxel (if the case has one).

    Forced patches centre on a lesion voxel picked by ``centre`` (:meth:`LesionVoxels.pick`), shifted by up to a
    quarter patch per axis so the lesion is not always at the centre (the network would learn "lesions are in the
    middle"); the lesion voxel always stays inside. Unforced patches are uniform over the case. A case with no
    lesion gives an unforced patch.

    ``label`` may be (1, D, H, W) or (D, H, W); the patch's label has the same layout. ``lesions`` takes
    precomputed :func:`lesion_voxels` to avoid labelling the case's components on every call. Only the
    patch is read, so memory-mapped cases stay cheap. Axes shorter than the patch are padded symmetrically: image
    with each channel's minimum within the patch (outside the scan is air-like; zero in normalised units would be
    soft tissue), label with background.
    """
    patch = tuple(int(p) for p in patch_size)
    spatial = tuple(image.shape[1:])
    if tuple(label.shape[-3:]) != spatial:
        raise ValueError(f"sample_patch: label shape {tuple(label.shape)} does not match image shape {image.shape}")
    # the case padded (virtually) to at least the patch: voxel v of the case sits at v + offset
    offset = [max(p - s, 0) // 2 for p, s in zip(patch, spatial)]
    padded = [max(p, s) for p, s in zip(patch, spatial)]
    if force_foreground and lesions is None:
        lesions = lesion_voxels(label)
    forced = bool(force_foreground and lesions)
    if forced:
        middle = lesions.pick(rng, centre) + offset
        jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in patch]
        start = [int(np.clip(c - p // 2 + j, 0, s - p)) for c, p, j, s in zip(middle, patch, jitter, padded)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(padded, patch)]
    origin = tuple(st - o for st, o in zip(start, offset))
    image_patch, label_patch = _crop_padded(np.asarray(image), np.asarray(label), origin, patch)
    return Patch(image_patch, label_patch, origin, forced)  # type: ignore[arg-type]


def _crop_padded(
    image: np.ndarray, label: np.ndarray, origin: Sequence[int], patch: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read the part of the window ``origin + patch`` that lies in the case, and pad the rest."""
    spatial = image.shape[1:]
    lo = [max(o, 0) for o in origin]
    hi = [min(o + p, s) for o, p, s in zip(origin, patch, spatial)]
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    widths = [(a - o, o + p - b) for a, b, o, p in zip(lo, hi, origin, patch)]
    image_crop = np.array(image[(slice(None), *window)])
    label_crop = np.array(label[(..., *window)])
    if not any(before or after for before, after in widths):
        return image_crop, label_crop
    image_crop = np.stack([np.pad(ch, widths, constant_values=ch.min()) for ch in image_crop])
    label_widths = [(0, 0)] * (label_crop.ndim - 3) + widths
    return image_crop, np.pad(label_crop, label_widths, constant_values=0)


def forced_foreground(batch_size: int, fraction: float, rng: np.random.Generator) -> list[bool]:
    """Which samples of a batch must contain a lesion: nnU-Net's "oversample the last ``fraction`` of the batch".

    Why fixed per batch, not a coin per sample: with nnU-Net's batch of 2 and ``fraction`` 0.33, the last sample
    is always forced (``2 - round(2 * 0.67) = 1``), so every batch shows a lesion and the (batch-pooled) Dice term
    always has one to learn from; independent coins would leave 45 % of batches lesion-free. Why not more: the
    other samples teach the model what lesion-free lung (vessels, fissures, scars) looks like, which is where the
    false positives come from. A batch of one, where the rule forces nothing, forces with probability ``fraction``.
    """
    if batch_size == 1:
        return [bool(rng.random() < fraction)]
    unforced = int(round(batch_size * (1 - fraction)))
    return [i >= unforced for i in range(batch_size)]
