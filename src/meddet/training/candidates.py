"""Candidates of a first-stage model on a dataset, with CT cubes and hit labels: the second stage's training data.

Why from the first stage's own output: the second stage exists to re-rank what the first stage reports (LUNA16's
"false positive reduction" track), so it must learn on the first stage's real mistakes — end-on vessels, pleural
blobs — at the operating point it will see. Candidates are taken at several low thresholds (a lower threshold gives
more candidates and bigger, sometimes merged components, whose centres move), labelled with the evaluation's own
hit rule, and cached per case so that training and calibration never repeat the sliding window.
Every truth nodule also gets a cube at its true centre (``truth`` entries): positives the first stage missed.
A well-trained first stage leaves few false positives on the cases it was trained on (a handful per scan), so each
case also gives ``NEGATIVES_PER_CASE`` cubes centred on dense lung tissue (vessels, fissures, airway walls, pleura)
well away from every nodule (``negative`` entries): the anatomy the first stage's mistakes are made of.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from meddet.detection.crops import crops_around
from meddet.detection.lesions import extract_lesions
from meddet.detection.rescorer import MAX_CANDIDATES
from meddet.evaluation.froc import hit_radius
from meddet.inference.export import case_truth
from meddet.inference.predictor import LoadedModel, predict_probability
from meddet.io import read_volume
from meddet.planning.dataset import Case
from meddet.preprocess.crop import lung_mask
from meddet.volume import Volume

CANDIDATE_THRESHOLDS = (0.05, 0.1, 0.2)
NEGATIVES_PER_CASE = 30
DENSE_HU = -400.0  # lung tissue denser than this is a vessel, wall or nodule, not air
NEGATIVE_CLEARANCE_MM = 10.0  # a negative cube's centre lies at least this far outside every nodule


def hit_diameters(centres_lps: np.ndarray, truth: list[dict]) -> np.ndarray:
    """Per candidate: the diameter (mm) of the nodule whose hit radius holds its centre (nearest), 0 when none."""
    out = np.zeros(len(centres_lps), dtype=np.float32)
    if not truth or len(centres_lps) == 0:
        return out
    nodules = np.array([t["center_mm"] for t in truth], dtype=float)
    radii = np.array([hit_radius(float(t["diameter_mm"])) for t in truth])
    distance = np.linalg.norm(np.asarray(centres_lps)[:, None, :] - nodules[None], axis=2)
    distance[distance > radii[None]] = np.inf
    nearest = distance.argmin(axis=1)
    hit = np.isfinite(distance[np.arange(len(out)), nearest])
    out[hit] = [float(truth[i]["diameter_mm"]) for i in nearest[hit]]
    return out


def sample_negatives(volume: Volume, truth: list[dict], count: int, seed: int) -> np.ndarray:
    """Up to ``count`` LPS points on dense tissue inside the lungs, each ``NEGATIVE_CLEARANCE_MM`` outside every
    nodule (the lung mask is found at half resolution in-plane, as the crop does)."""
    step = 2 if min(volume.shape[1:]) >= 128 else 1
    small = np.asarray(volume.array)[:, ::step, ::step]
    dense = lung_mask(volume.with_array(small)) & (small > DENSE_HU)
    index = np.argwhere(dense)
    if len(index) == 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    pick = index[rng.choice(len(index), min(len(index), 8 * count), replace=False)] * np.array([1, step, step])
    points = volume.index_zyx_to_lps(pick.astype(float))
    if truth:
        nodules = np.array([t["center_mm"] for t in truth], dtype=float)
        reach = np.array([float(t["diameter_mm"]) / 2 + NEGATIVE_CLEARANCE_MM for t in truth])
        clear = (np.linalg.norm(points[:, None] - nodules[None], axis=2) > reach[None]).all(axis=1)
        points = points[clear]
    return points[:count]


def collect_case(model: LoadedModel, case: Case, truth: list[dict],
                 thresholds: tuple[float, ...] = CANDIDATE_THRESHOLDS) -> dict[str, np.ndarray]:
    """Candidates of ``case`` at each threshold and one cube per truth nodule, as arrays for ``np.savez``.

    Keys per threshold ``t`` (e.g. ``t0.05_``): ``centres`` (LPS mm), ``scores`` (first-stage maximum probability),
    ``diameters`` (equivalent sphere, mm), ``hit_mm`` (diameter of the nodule hit, 0 = false positive) and
    ``crops`` (int16 HU cubes); ``truth_centres``, ``truth_mm`` and ``truth_crops`` for the nodules themselves;
    ``negative_centres`` and ``negative_crops`` for dense lung tissue away from them (seeded by the case's name).
    """
    volume = read_volume(case.images[0])
    probability, _ = predict_probability(model, [volume])
    arrays: dict[str, np.ndarray] = {}
    for threshold in thresholds:
        lesions = extract_lesions(probability, threshold, 0.0)[0][:MAX_CANDIDATES]  # highest score first
        centres = np.array([lesion["center_mm"] for lesion in lesions], dtype=float).reshape(-1, 3)
        key = f"t{threshold:g}_"
        arrays[key + "centres"] = centres
        arrays[key + "scores"] = np.array([lesion["score"] for lesion in lesions], dtype=np.float32)
        arrays[key + "diameters"] = np.array([lesion["diameter_mm"] for lesion in lesions], dtype=np.float32)
        arrays[key + "hit_mm"] = hit_diameters(centres, truth)
        arrays[key + "crops"] = np.round(crops_around(volume, centres)).astype(np.int16)
    truth_centres = np.array([t["center_mm"] for t in truth], dtype=float).reshape(-1, 3)
    arrays["truth_centres"] = truth_centres
    arrays["truth_mm"] = np.array([t["diameter_mm"] for t in truth], dtype=np.float32)
    arrays["truth_crops"] = np.round(crops_around(volume, truth_centres)).astype(np.int16)
    arrays.update(negative_arrays(volume, truth, case.name))
    return arrays


def negative_arrays(volume: Volume, truth: list[dict], case_name: str) -> dict[str, np.ndarray]:
    """``negative_centres`` and ``negative_crops`` of a case (see ``sample_negatives``)."""
    centres = sample_negatives(volume, truth, NEGATIVES_PER_CASE, zlib.crc32(case_name.encode()))
    return {"negative_centres": centres, "negative_crops": np.round(crops_around(volume, centres)).astype(np.int16)}


def collect_dataset(model: LoadedModel, cases: list[Case], root: Path, out: Path, log=print,
                    thresholds: tuple[float, ...] = CANDIDATE_THRESHOLDS) -> list[Path]:
    """``out/<case>.npz`` for every case, candidates at ``thresholds`` (cases already there are kept: the collection
    resumes)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "source.json").write_text(json.dumps({"model": model.name, "version": model.version,
                                                 "mirroring": model.mirroring, "dataset": str(root)}, indent=1))
    paths = []
    for k, case in enumerate(cases):
        path = out / f"{case.name}.npz"
        if not path.is_file():
            arrays = collect_case(model, case, case_truth(case.name, case.label, root), thresholds)
            partial = path.with_suffix(".tmp.npz")
            np.savez(partial, **arrays)
            partial.rename(path)
            log(f"[{k + 1}/{len(cases)}] {case.name}: "
                + ", ".join(f"{t:g}: {len(arrays[f't{t:g}_scores'])}" for t in thresholds))
        paths.append(path)
    return paths
