"""Second stage: a small 3D classifier that re-scores the first stage's candidates from a CT cube around each.

Why: the segmentation network scores a candidate by the highest voxel probability in it, judged from a patch at a
coarse working grid (1.29 × 1.29 × 2.42 mm for the bundled model). Its confident mistakes are round soft-tissue blobs
where vessels run end-on, and small nodules in thick slices get low probabilities. A classifier that looks at each
candidate alone, at 1 mm in patient orientation, with every candidate centred (LUNA16's false-positive-reduction
stage), ranks them on other evidence. The final score combines both stages (``COMBINATIONS``), chosen with the
candidate threshold and the final threshold on validation cases (meddet.training.rescorer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.networks.nets import Classifier

from meddet.detection.crops import CROP_SPACING_MM, CROP_VOXELS, crops_around
from meddet.detection.lesions import renumber_by_score
from meddet.volume import Volume

INPUT_VOXELS = 32  # the classifier's cube: the centre of the stored 40-voxel cube (1 mm: 32 mm of context)
HU_LOW, HU_HIGH, HU_CENTRE, HU_SCALE = -1024.0, 600.0, -400.0, 400.0
CHANNELS = (16, 32, 64, 128)
# Candidates the classifier looks at per scan, the first stage's highest first: a poorly trained or confused first
# stage can break a scan into thousands of faint fragments, and no scan has a hundred nodules worth reporting.
MAX_CANDIDATES = 100
# How the final score is made from the first stage's score s1 and the classifier's probability s2.
COMBINATIONS = ("first", "second", "geometric", "mean")


def build_classifier() -> torch.nn.Module:
    """MONAI's residual 3D classifier: 1 × 32³ in, one logit out (1.2 M parameters)."""
    return Classifier(in_shape=(1, INPUT_VOXELS, INPUT_VOXELS, INPUT_VOXELS), classes=1, channels=CHANNELS,
                      strides=(2, 2, 2, 2), num_res_units=2)


def to_input(cubes_hu: np.ndarray, offset: tuple[int, int, int] | None = None) -> np.ndarray:
    """``(N, 1, 32, 32, 32)`` float32 network input from ``(N, 40, 40, 40)`` HU cubes: a 32-voxel sub-cube at
    ``offset`` (the centred one by default), HU clipped to the lung-to-bone range and scaled to about ±2."""
    margin = (CROP_VOXELS - INPUT_VOXELS) // 2
    z, y, x = offset if offset is not None else (margin, margin, margin)
    sub = np.asarray(cubes_hu)[:, z:z + INPUT_VOXELS, y:y + INPUT_VOXELS, x:x + INPUT_VOXELS]
    return ((np.clip(sub.astype(np.float32), HU_LOW, HU_HIGH) - HU_CENTRE) / HU_SCALE)[:, None]


def combine(first: np.ndarray, second: np.ndarray, how: str) -> np.ndarray:
    """The final score of each candidate from both stages' scores (see ``COMBINATIONS``)."""
    if how == "first":
        return np.asarray(first, dtype=float)
    if how == "second":
        return np.asarray(second, dtype=float)
    if how == "geometric":
        return np.sqrt(np.asarray(first, dtype=float) * np.asarray(second, dtype=float))
    if how == "mean":
        return (np.asarray(first, dtype=float) + np.asarray(second, dtype=float)) / 2.0
    raise ValueError(f"Unknown combination '{how}'; choose one of {', '.join(COMBINATIONS)}.")


def classify(network: torch.nn.Module, cubes_hu: np.ndarray, batch: int = 64) -> np.ndarray:
    """The classifier's nodule probability per cube, averaged over the cube and its 3 single-axis mirrors
    (trained with mirroring, so each is in distribution; four passes of a tiny network cost milliseconds)."""
    if len(cubes_hu) == 0:
        return np.zeros(0, dtype=np.float32)
    x = torch.from_numpy(to_input(cubes_hu))
    total = torch.zeros(len(x))
    views = [(), (2,), (3,), (4,)]
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            for dims in views:
                view = torch.flip(chunk, dims) if dims else chunk
                total[start:start + batch] += torch.sigmoid(network(view).float()[:, 0])
    return (total / len(views)).numpy().astype(np.float32)


@dataclass
class Rescorer:
    """A trained classifier with the settings it was calibrated with."""

    network: torch.nn.Module
    combination: str
    candidate_threshold: float
    # A candidate wider than this (mm) is seen in a cube zoomed out until it looks this wide (None: every cube at
    # 1 mm). Why: a 50 mm mass fills a 32 mm cube edge to edge, and the classifier, trained on the spec's <= 35 mm
    # lesions, sees no nodule there; zoomed out it sees a nodule-sized lesion with its surroundings.
    zoom_above_mm: float | None = None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Rescorer":
        network = build_classifier()
        network.load_state_dict(state["model"])
        network.eval()
        zoom = state.get("zoom_above_mm")
        return cls(network, str(state["combination"]), float(state["candidate_threshold"]),
                   None if zoom is None else float(zoom))

    def cubes(self, volume: Volume, lesions: list[dict]) -> np.ndarray:
        """The classifier's HU cubes, one per lesion: 1 mm, or zoomed out for lesions over ``zoom_above_mm``."""
        centres = np.array([lesion["center_mm"] for lesion in lesions], dtype=float).reshape(-1, 3)
        zoom = np.ones(len(lesions))
        if self.zoom_above_mm is not None:
            diameters = np.array([lesion["diameter_mm"] for lesion in lesions], dtype=float)
            zoom = np.maximum(diameters / self.zoom_above_mm, 1.0)
        return crops_around(volume, centres, spacing_mm=CROP_SPACING_MM * zoom)

    def rescore(self, lesions: list[dict], instances: Volume, volume: Volume, threshold: float) -> tuple[list[dict], Volume]:
        """``lesions`` (first-stage candidates on ``volume``'s grid) with final scores, those under ``threshold``
        dropped from the list and the instance map, renumbered by final score."""
        if not lesions:
            return lesions, instances
        n = max(lesion["id"] for lesion in lesions)
        lesions = sorted(lesions, key=lambda lesion: -lesion["score"])[:MAX_CANDIDATES]
        first = np.array([lesion["score"] for lesion in lesions], dtype=float)
        second = classify(self.network, self.cubes(volume, lesions))
        final = combine(first, second, self.combination)
        kept = []
        for lesion, s1, s2, score in zip(lesions, first, second, final):
            if score >= threshold:
                kept.append({**lesion, "score": round(float(score), 5), "candidate_score": round(float(s1), 5),
                             "classifier_score": round(float(s2), 5)})
        kept, labels = renumber_by_score(kept, np.asarray(instances.array), n)
        return kept, instances.with_array(labels)
