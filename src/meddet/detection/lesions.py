"""From a probability map to a list of lesions: threshold, 3D connected components, measurements in patient space.

Why measure in LPS millimetres on the scan's own grid: a lesion list is read by people and PACS systems that know
the scan, not meddet's resampled grid; centre, size and box must be right for flipped and oblique series too, so
every index → patient mapping goes through :meth:`Volume.index_zyx_to_lps` (the full direction matrix, shear
included) and never through ``origin + spacing * index``.

Everything is vectorised over components (cc3d labelling, then ``np.bincount`` / ``ufunc.at`` on the labelled
voxels only), never a Python loop over voxels: a CT is ~10⁸ voxels and a noisy probability map can have thousands
of components.
"""

from __future__ import annotations

import itertools
import logging

import cc3d
import numpy as np

from meddet.volume import Volume

log = logging.getLogger(__name__)

MAX_INSTANCES = int(np.iinfo(np.uint16).max)  # the instance map is uint16 (what DICOM SEG and viewers expect)
# The 8 corners of an index box as a choice (0 = low, 1 = high) per axis, for oblique grids where the box's LPS
# extremes can lie at any corner.
_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=bool)


def _measure(instances: np.ndarray, n: int, volume: Volume, score_map: np.ndarray | None) -> list[dict]:
    """Centre, size, box and score of components ``1..n`` of ``instances`` (ids with no voxel are skipped).

    Only the labelled voxels are touched. The centre is the unweighted centre of mass of the voxel centres (so a
    ring's centre is the empty middle: that is where a radiologist would put the marker). The score is the maximum
    of ``score_map`` inside the component (1 when there is none, e.g. ground truth).
    """
    if n == 0:
        return []
    flat_index = np.flatnonzero(instances)
    ids = instances.ravel()[flat_index].astype(np.int64)
    zyx = np.stack(np.unravel_index(flat_index, instances.shape), axis=1).astype(np.float64)
    counts = np.bincount(ids, minlength=n + 1)
    sums = np.stack([np.bincount(ids, weights=zyx[:, a], minlength=n + 1) for a in range(3)], axis=1)
    present = np.flatnonzero(counts[1:]) + 1  # component ids that have voxels
    if present.size == 0:
        return []
    centres = volume.index_zyx_to_lps(sums[present] / counts[present, None])
    scores = np.ones(n + 1)
    if score_map is not None:
        scores = np.full(n + 1, -np.inf)
        # index first, then widen: float64 of the whole map would be a 0.5 GB copy for a 512² × 240 scan
        np.maximum.at(scores, ids, np.asarray(score_map).ravel()[flat_index].astype(np.float64))
    low = np.full((n + 1, 3), np.inf)
    high = np.full((n + 1, 3), -np.inf)
    np.minimum.at(low, ids, zyx)
    np.maximum.at(high, ids, zyx)
    # (components, 8 corners, 3) index corners → LPS; the box is the min/max over the corners
    corners = np.where(_CORNERS[None], high[present][:, None, :], low[present][:, None, :])
    world = volume.index_zyx_to_lps(corners.reshape(-1, 3)).reshape(-1, 8, 3)
    box_low, box_high = world.min(axis=1), world.max(axis=1)
    voxel_mm3 = float(abs(np.linalg.det(volume.affine_lps[:3, :3])))  # right for sheared grids too
    volumes_mm3 = counts[present] * voxel_mm3
    diameters = (6.0 * volumes_mm3 / np.pi) ** (1.0 / 3.0)
    return [
        {
            "id": int(label),
            "center_mm": [round(float(c), 3) for c in centres[k]],
            "diameter_mm": round(float(diameters[k]), 3),
            "volume_ml": round(float(volumes_mm3[k]) / 1000.0, 6),
            "score": round(float(scores[label]), 5),
            "bbox_mm": [[round(float(v), 3) for v in box_low[k]], [round(float(v), 3) for v in box_high[k]]],
            "voxels": int(counts[label]),
        }
        for k, label in enumerate(present)
    ]


def renumber_by_score(lesions: list[dict], instances: np.ndarray, n: int) -> tuple[list[dict], np.ndarray]:
    """Keep ``lesions`` only, sorted by score (highest first), renumbered 1..N so the mask's values match the list.

    Why renumber: lesions.json promises that ``id`` is the value of the lesion's voxels in the mask, and readers
    expect lesion 1 to be the most suspicious one.
    """
    order = sorted(lesions, key=lambda lesion: (-lesion["score"], lesion["id"]))
    if len(order) > MAX_INSTANCES:
        log.warning("%d lesions found; keeping the %d highest-scoring (the mask is uint16).", len(order), MAX_INSTANCES)
        order = order[:MAX_INSTANCES]
    lookup = np.zeros(n + 1, dtype=np.uint16)  # components not in ``lesions`` map to 0
    for new_id, lesion in enumerate(order, start=1):
        lookup[lesion["id"]] = new_id
        lesion["id"] = new_id
    return order, lookup[instances]


def extract_lesions(
    probability: Volume, threshold: float = 0.5, min_volume_mm3: float = 0.0, connectivity: int = 26
) -> tuple[list[dict], Volume]:
    """Lesions of a probability map and their instance map (uint16, same grid as ``probability``).

    A lesion is a ``connectivity``-connected component (6, 18 or 26) of ``probability >= threshold`` with a volume
    of at least ``min_volume_mm3``. Each lesion dict has ``id`` (its value in the instance map; 1 is the highest
    score), ``center_mm`` (LPS), ``diameter_mm`` (equivalent sphere, ``(6V/π)^(1/3)``), ``volume_ml``, ``score``
    (highest probability inside), ``bbox_mm`` (LPS min/max corners over the voxel centres) and ``voxels``.
    """
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    prob = np.asarray(probability.array, dtype=np.float32)
    mask = prob >= threshold
    instances, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    instances = instances.astype(np.uint32, copy=False)
    lesions = _measure(instances, int(n), probability, prob)
    lesions = [lesion for lesion in lesions if lesion["volume_ml"] * 1000.0 >= min_volume_mm3]
    lesions, labels = renumber_by_score(lesions, instances, int(n))
    return lesions, probability.with_array(labels)


def refine_outlines(lesions: list[dict], instances: Volume, probability: Volume, level: float) -> tuple[list[dict], Volume]:
    """Each lesion's outline redrawn inside its region at probability ``min(level, peak / 2)`` (peak: the first
    stage's highest probability in the region), and its centre, size and box measured again on the new outline;
    every other key, the score included, is kept.

    Why: a two-stage model takes its candidates as components at a low probability (0.05 for the bundled model) so
    that faint nodules get a candidate, and such a component is about a voxel wider than the nodule all round: on the
    development phantoms that made the reported diameter 1.2 mm too large in the median, enough to cross a Lung-RADS
    size boundary. ``level`` (chosen on development data) is where the network's outlines agree best with the truth;
    a candidate whose peak is under ``2 × level`` is outlined at half its peak instead, so no lesion loses its voxels.
    A region that splits keeps one id: it is still one finding. Only the labelled voxels are touched (no full-size
    float copy of a 10⁸-voxel scan).
    """
    if not lesions:
        return lesions, instances
    labels = np.asarray(instances.array)
    n = int(labels.max())
    peak = np.zeros(n + 1)
    for lesion in lesions:
        peak[lesion["id"]] = lesion.get("candidate_score", lesion["score"])
    cutoff = np.minimum(level, peak / 2.0)
    flat = np.flatnonzero(labels)
    below = np.asarray(probability.array).reshape(-1)[flat] < cutoff[labels.reshape(-1)[flat]]
    refined = labels.copy()
    refined.reshape(-1)[flat[below]] = 0
    # every lesion keeps at least its peak voxel (the cutoff is at most half the peak), so each is measured again
    refined_instances = instances.with_array(refined)
    return remeasure(lesions, refined_instances), refined_instances


def remeasure(lesions: list[dict], instances: Volume) -> list[dict]:
    """``lesions`` with centre, size, box and voxel count measured again on ``instances`` (after their voxels changed;
    each must keep at least one); every other key, the score included, is kept."""
    labels = np.asarray(instances.array)
    geometry = {lesion["id"]: lesion for lesion in _measure(labels, int(labels.max(initial=0)), instances, None)}
    keys = ("center_mm", "diameter_mm", "volume_ml", "bbox_mm", "voxels")
    return [{**lesion, **{k: geometry[lesion["id"]][k] for k in keys}} for lesion in lesions]


def lesions_from_label_map(labels: Volume, connectivity: int = 26, binary: bool | None = None) -> list[dict]:
    """Ground-truth lesions (score 1) from a label map, measured exactly like predictions.

    ``binary=False``: every distinct value > 0 is one lesion (an instance map, e.g. the phantom's ``instances/``),
    even if its voxels are not connected (a spiculated nodule cut by partial volume stays one nodule).
    ``binary=True``: lesions are the connected components of ``labels > 0`` (e.g. ``labelsTr/``).
    ``None`` guesses: several values → instance map, one value → binary. A single-value map cannot tell a
    one-nodule instance map from a binary mask, so callers that know the folder should say.
    """
    array = np.asarray(labels.array)
    values = np.unique(array[array > 0])
    if binary is None:
        binary = len(values) <= 1
    if binary:
        instances, n = cc3d.connected_components(array > 0, connectivity=connectivity, return_N=True)
    else:
        # relabel to 1..n touching only labelled voxels (no full-size int64 copy of a 10⁸-voxel map)
        flat_index = np.flatnonzero(array > 0)
        instances = np.zeros(array.shape, dtype=np.uint32)
        instances.flat[flat_index] = np.searchsorted(values, array.flat[flat_index]) + 1
        n = len(values)
    return _measure(instances.astype(np.uint32, copy=False), int(n), labels, None)
