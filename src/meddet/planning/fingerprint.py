"""The dataset fingerprint: the facts about a dataset that decide how to train on it (nnU-Net's first step).

Why: target spacing, intensity normalisation and patch size are not hyper-parameters to guess but consequences
of the data: its spacings and shapes, the intensities inside the labelled structures, and how big the lesions are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cc3d
import numpy as np

from meddet.io import read_volume
from meddet.planning.dataset import DatasetIndex

FOREGROUND_SAMPLES_PER_CASE = 10_000  # as nnU-Net: enough for percentiles, small enough to keep


@dataclass
class Fingerprint:
    """Per-case geometry, per-channel foreground intensity statistics and lesion sizes."""

    dataset: str
    channel_names: list[str]
    spacings: list[list[float]]  # per case, (x, y, z) mm
    shapes: list[list[int]]  # per case, (z, y, x) voxels
    intensity: list[dict[str, float]]  # per channel: mean, std, percentile_00_5, percentile_99_5, min, max
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
        index = np.flatnonzero(fg)
        if index.size > FOREGROUND_SAMPLES_PER_CASE:
            index = rng.choice(index, FOREGROUND_SAMPLES_PER_CASE, replace=False)
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
