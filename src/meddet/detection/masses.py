"""Masses larger than the training data's lesions, found by a second pass of the same network on a coarser grid.

Why: the bundled first stage learnt the spec's lesions (3-35 mm) on a 1.29 x 1.29 x 2.42 mm working grid. A 50 mm
tumour there is a soft-tissue region wider than anything it was shown as a lesion: it reports nothing, or an
off-centre part (docs/models/lung-nodule.md, "Masses larger than the training data's"). Fine-tuning it on phantoms
with such masses found them but tripled its false positives elsewhere. Run on the scan resampled to twice the
working spacing, the same weights see a 50 mm mass as a 25 mm one, which they find whole. Only components of that
pass at least ``min_diameter_mm`` wide (in true millimetres) are taken, so the pass adds masses and nothing
nodule-sized; a lesion of the main pass lying mostly inside a mass is a part of it and is replaced by it.
"""

from __future__ import annotations

import numpy as np

from meddet.detection.lesions import remeasure, renumber_by_score
from meddet.volume import Volume

PART_OF_MASS = 0.5  # a main-pass lesion with at least this share of its voxels inside a mass is a part of the mass


def large_components(lesions: list[dict], instances: Volume, min_diameter_mm: float) -> tuple[list[dict], Volume]:
    """The lesions at least ``min_diameter_mm`` wide, and an instance map holding only them."""
    kept = [lesion for lesion in lesions if lesion["diameter_mm"] >= min_diameter_mm]
    labels = np.asarray(instances.array)
    keep_ids = np.array([lesion["id"] for lesion in kept], dtype=labels.dtype)
    return kept, instances.with_array(np.where(np.isin(labels, keep_ids), labels, 0).astype(labels.dtype))


def merge_masses(lesions: list[dict], instances: Volume, masses: list[dict], mass_instances: Volume) -> tuple[list[dict], Volume]:
    """``lesions`` with ``masses`` added (both with instance maps on the same grid), renumbered by score.

    A lesion with at least ``PART_OF_MASS`` of its voxels inside one mass is dropped (the mass is the finding); the
    other lesions keep their voxels outside the masses and are measured again. Each mass is marked
    ``"mass_pass": True``.
    """
    if not masses:
        return lesions, instances
    labels = np.asarray(instances.array).astype(np.uint32)
    mass_labels = np.asarray(mass_instances.array)
    inside_mass = mass_labels > 0
    n = int(max([lesion["id"] for lesion in lesions], default=0))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels[inside_mass], minlength=n + 1)
    parts = {lesion["id"] for lesion in lesions if inside[lesion["id"]] >= PART_OF_MASS * max(sizes[lesion["id"]], 1)}
    labels[np.isin(labels, list(parts))] = 0
    kept = [lesion for lesion in lesions if lesion["id"] not in parts]
    for k, mass in enumerate(masses, start=1):
        labels[mass_labels == mass["id"]] = n + k
        kept.append({**mass, "id": n + k, "mass_pass": True})
    kept = remeasure(kept, instances.with_array(labels))  # lesions at a mass's edge lost the voxels inside it
    lesions, renumbered = renumber_by_score(kept, labels, n + len(masses))
    return lesions, instances.with_array(renumbered)
