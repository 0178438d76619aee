"""On-disk cache of preprocessed cases (.npy), like nnU-Net's preprocessed folder.

Why: reading a NIfTI, cropping and resampling it costs far more than a training step; doing it once per case and
memory-mapping the result keeps the two CPU cores on convolutions. The cache folder is named after a hash of the
plan's preprocessing, so changing the plan can never mix stale arrays into training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meddet.io import read_volume
from meddet.planning.dataset import Case
from meddet.preprocess.prepare import prepare_case
from meddet.training.augment import LesionVoxels, lesion_voxels


def preprocessing_id(plan: dict[str, Any]) -> str:
    """Short hash of everything that changes the cached arrays."""
    keys = {k: plan[k] for k in ("channel_names", "target_spacing", "crop", "normalization")}
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]


def cache_dir_for(plan: dict[str, Any], dataset_root: str | Path) -> Path:
    return Path(dataset_root) / "preprocessed" / preprocessing_id(plan)


@dataclass
class CachedCase:
    """A preprocessed case, memory-mapped: ``image`` (C, z, y, x) float32, ``label`` (z, y, x) uint8."""

    name: str
    image: np.ndarray
    label: np.ndarray
    lesions: LesionVoxels  # where forced patches may centre


def cache_case(case: Case, plan: dict[str, Any], folder: Path) -> None:
    """Preprocess one case into ``folder`` unless it is already there (written last-file-last, so a killed run
    leaves no half case that looks complete)."""
    done = folder / f"{case.name}.json"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    channels = [read_volume(p) for p in case.images]
    label = read_volume(case.label) if case.label is not None else None
    prepared = prepare_case(channels, plan, label)
    np.save(folder / f"{case.name}_image.npy", prepared.image)
    label_array = prepared.label if prepared.label is not None else np.zeros(prepared.image.shape[1:], np.uint8)
    np.save(folder / f"{case.name}_label.npy", label_array)
    done.write_text(json.dumps({
        "case": case.name, "shape": list(prepared.image.shape), "spacing": list(prepared.grid.spacing),
        "crop_box": [[s.start, s.stop] for s in prepared.crop_box], "labelled": case.label is not None,
    }))


def build_cache(cases: list[Case], plan: dict[str, Any], folder: Path) -> Path:
    """Preprocess ``cases`` (only those not cached yet) into ``folder``."""
    for case in cases:
        cache_case(case, plan, folder)
    return folder


def load_cached(folder: Path, names: list[str]) -> list[CachedCase]:
    """Memory-map the cached arrays of ``names`` and find each case's lesions (a connected-components pass over
    the label, well under a second for a full-size CT; done here rather than cached, so the lesion sampling rule
    can change without invalidating anyone's preprocessed data)."""
    cases = []
    for name in names:
        label = np.load(folder / f"{name}_label.npy", mmap_mode="r")
        image = np.load(folder / f"{name}_image.npy", mmap_mode="r")
        cases.append(CachedCase(name, image, label, lesion_voxels(label)))
    return cases
