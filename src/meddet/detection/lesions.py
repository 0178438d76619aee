"""From a probability map to a list of lesions: threshold, 3D connected components, measurements in patient space.

Why measure in LPS millimetres on the scan's own grid: a lesion list is read by people and PACS systems that know
the scan, not meddet's resampled grid; centre, size and box must be right for flipped and oblique series too.
Everything is vectorised over components (cc3d + bincount), never a Python loop over voxels.
"""

from __future__ import annotations

import itertools

import cc3d
import numpy as np

from meddet.volume import Volume


def _measure(instances: np.ndarray, n: int, volume: Volume, score_map: np.ndarray | None) -> list[dict]:
    """Centre, size, box and score of components 1..n, touching only the labelled voxels (a CT is ~10⁸ voxels)."""
    if n == 0:
        return []
    flat_index = np.flatnonzero(instances)
    ids = instances.ravel()[flat_index].astype(np.int64)
    zyx = np.stack(np.unravel_index(flat_index, instances.shape), axis=1).astype(np.float64)
    counts = np.bincount(ids, minlength=n + 1)[1:]
    centres_zyx = np.stack([np.bincount(ids, weights=zyx[:, a], minlength=n + 1)[1:] for a in range(3)], axis=1)
    centres = volume.index_zyx_to_lps(centres_zyx / np.maximum(counts, 1)[:, None])
    scores = np.ones(n)
    if score_map is not None:
        scores = np.zeros(n + 1)
        np.maximum.at(scores, ids, score_map.ravel()[flat_index])
        scores = scores[1:]
    low = np.full((n + 1, 3), np.inf)
    high = np.full((n + 1, 3), -np.inf)
    np.minimum.at(low, ids, zyx)
    np.maximum.at(high, ids, zyx)
    voxel_mm3 = float(abs(np.linalg.det(volume.affine_lps[:3, :3])))
    lesions = []
    for i in range(n):
        if counts[i] == 0:
            continue
        corners = np.array(list(itertools.product(*zip(low[i + 1], high[i + 1]))), dtype=float)
        world = volume.index_zyx_to_lps(corners)
        volume_mm3 = float(counts[i]) * voxel_mm3
        lesions.append({
            "id": i + 1,
            "center_mm": [round(float(c), 3) for c in centres[i]],
            "diameter_mm": round(float((6 * volume_mm3 / np.pi) ** (1 / 3)), 3),
            "volume_ml": round(volume_mm3 / 1000.0, 6),
            "score": round(float(scores[i]), 5),
            "bbox_mm": [[round(float(v), 3) for v in world.min(0)], [round(float(v), 3) for v in world.max(0)]],
            "voxels": int(counts[i]),
        })
    return lesions


def _renumber_by_score(lesions: list[dict], instances: np.ndarray, n: int) -> tuple[list[dict], np.ndarray]:
    """Keep ``lesions`` only, sorted by score (highest first), renumbered 1..N so the mask's values match the list."""
    order = sorted(lesions, key=lambda l: (-l["score"], l["id"]))
    lookup = np.zeros(n + 1, dtype=np.uint16)  # components not in ``lesions`` map to 0
    for new_id, lesion in enumerate(order, start=1):
        lookup[lesion["id"]] = new_id
        lesion["id"] = new_id
    return order, lookup[instances]


def extract_lesions(
    probability: Volume, threshold: float = 0.5, min_volume_mm3: float = 0.0, connectivity: int = 26
) -> tuple[list[dict], Volume]:
    """Lesions (sorted by score, ids 1..N) and their instance map (uint16) on ``probability``'s grid."""
    prob = np.asarray(probability.array, dtype=np.float32)
    mask = prob >= threshold
    instances, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    instances = instances.astype(np.uint32, copy=False)
    lesions = _measure(instances, n, probability, prob)
    lesions = [l for l in lesions if l["volume_ml"] * 1000.0 >= min_volume_mm3]
    lesions, labels = _renumber_by_score(lesions, instances, n)
    return lesions, probability.with_array(labels)


def lesions_from_label_map(labels: Volume, connectivity: int = 26) -> list[dict]:
    """Ground-truth lesions from a label map: its instance ids as given, or components of a binary mask."""
    array = np.asarray(labels.array)
    values = np.unique(array[array > 0])
    if len(values) <= 1:
        instances, n = cc3d.connected_components(array > 0, connectivity=connectivity, return_N=True)
    else:
        lookup = np.zeros(int(array.max()) + 1, dtype=np.uint32)
        lookup[values] = np.arange(1, len(values) + 1)
        instances, n = lookup[array], len(values)
    return _measure(instances.astype(np.uint32), int(n), labels, None)
