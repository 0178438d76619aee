"""The dataset fingerprint: the facts about a dataset that decide how to train on it (nnU-Net's first step).

Why: target spacing, intensity normalisation and patch size are not hyper-parameters to guess but consequences
of the data: its spacings and shapes, the intensities of the labelled structures and of what surrounds them, and
how big the lesions are.

Where meddet departs from nnU-Net: intensity statistics are sampled from the lesions *and* from a shell of
``CONTEXT_MM`` around them, in equal parts. nnU-Net samples the labelled voxels only, and clips CT to their
0.5–99.5 percentiles. For a ground-glass nodule (−750 to −300 HU) in lung (−900 to −800 HU) that clip floor is
about −770 HU: every lung voxel is flattened to the value of the faintest ground-glass voxel and the nodule's edge
disappears. A lesion is seen by its contrast with its neighbourhood, so the normalisation must keep both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cc3d
import numpy as np
import scipy.ndimage as ndi

from meddet.io import read_volume
from meddet.planning.dataset import DatasetIndex

SAMPLES_PER_MASK = 10_000  # per case, from the lesions and from their context each: enough for percentiles
CONTEXT_MM = 5.0  # the tissue a lesion is told apart from: a few voxels at any CT spacing


@dataclass
class Fingerprint:
    """Per-case geometry, per-channel foreground intensity statistics and lesion sizes."""

    dataset: str
    channel_names: list[str]
    spacings: list[list[float]]  # per case, (x, y, z) mm
    shapes: list[list[int]]  # per case, (z, y, x) voxels
    intensity: list[dict[str, float]]  # per channel, lesions + context: mean, std, percentile_00_5, percentile_99_5, min, max
    lesion_diameters_mm: list[float]
    lesions_per_case: list[int]
    foreground_fraction: list[float] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Fingerprint":
        return cls(**json.loads(Path(path).read_text()))


def _intensity_stats(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {"mean": 0.0, "std": 1.0, "percentile_00_5": 0.0, "percentile_99_5": 0.0, "min": 0.0, "max": 0.0}
    lo, hi = np.percentile(samples, [0.5, 99.5])
    return {
        "mean": float(samples.mean()), "std": float(samples.std()), "percentile_00_5": float(lo),
        "percentile_99_5": float(hi), "min": float(samples.min()), "max": float(samples.max()),
    }


def context_shell(foreground: np.ndarray, spacing_xyz: tuple[float, ...], margin_mm: float = CONTEXT_MM) -> np.ndarray:
    """Voxels within ``margin_mm`` of a lesion but not in one (a (z, y, x) mask like ``foreground``).

    The distance transform runs on the lesions' bounding box plus the margin only, so full-size CTs stay cheap.
    """
    shell = np.zeros_like(foreground, dtype=bool)
    if not foreground.any():
        return shell
    sampling = tuple(float(s) for s in spacing_xyz[::-1])
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in sampling]
    nonzero = np.argwhere(foreground)
    lo = np.maximum(nonzero.min(0) - pad, 0)
    hi = np.minimum(nonzero.max(0) + 1 + np.array(pad), foreground.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    distance = ndi.distance_transform_edt(~foreground[box], sampling=sampling)
    shell[box] = (distance > 0) & (distance <= margin_mm)
    return shell


def _sample(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    index = np.flatnonzero(mask)
    return rng.choice(index, SAMPLES_PER_MASK, replace=False) if index.size > SAMPLES_PER_MASK else index


def compute_fingerprint(dataset: DatasetIndex, seed: int = 0) -> Fingerprint:
    """Read every labelled case once and summarise it."""
    rng = np.random.default_rng(seed)
    samples: list[list[np.ndarray]] = [[] for _ in dataset.channel_names]
    spacings, shapes, diameters, counts, fractions = [], [], [], [], []
    for case in dataset.cases:
        label = read_volume(case.label)
        spacings.append(list(label.spacing))
        shapes.append(list(label.shape))
        fg = np.asarray(label.array) > 0
        fractions.append(float(fg.mean()))
        instances, n = cc3d.connected_components(fg, connectivity=26, return_N=True)
        counts.append(int(n))
        if n:
            voxel_mm3 = float(np.prod(label.spacing))
            sizes = np.bincount(instances.ravel())[1:] * voxel_mm3
            diameters.extend((2 * (3 * sizes / (4 * np.pi)) ** (1 / 3)).round(2).tolist())
        index = np.concatenate([_sample(fg, rng), _sample(context_shell(fg, label.spacing), rng)])
        for channel, path in enumerate(case.images):
            image = read_volume(path)
            samples[channel].append(np.asarray(image.array).ravel()[index].astype(np.float32))
    return Fingerprint(
        dataset=str(dataset.root),
        channel_names=list(dataset.channel_names),
        spacings=spacings,
        shapes=shapes,
        intensity=[_intensity_stats(np.concatenate(s) if s else np.zeros(0)) for s in samples],
        lesion_diameters_mm=diameters,
        lesions_per_case=counts,
        foreground_fraction=fractions,
    )
