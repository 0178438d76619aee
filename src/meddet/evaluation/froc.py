"""Lesion-level detection scoring: LUNA16 hit rule, FROC, CPM, sensitivity by size and type, bootstrap intervals.

Why the LUNA16 convention: it is how lung-nodule detectors are compared in the literature, so a clinic can put
meddet's numbers beside published ones. The rules, as the LUNA16 evaluation script applies them:

- A prediction is a hit when its centre lies within a nodule's radius (within 3 mm for nodules under 6 mm, whose
  own radius would demand sub-voxel precision).
- A nodule counts once, with the highest score of the predictions that hit it; further hits on it are ignored:
  neither true nor false positives (a detector that marks a big nodule twice is not penalised).
- The FROC curve pools the predictions of all scans, lowers one score threshold over them (tied scores move
  together) and plots sensitivity against false positives per scan; scans without nodules count in "per scan".
- Sensitivity at 1/8 … 8 FPs per scan is read off that curve by linear interpolation (``np.interp``, as the script
  does); the CPM is the mean of the seven.

One deliberate difference: a prediction inside two nodules counts for one, the nearest one not already hit (the
script credits it to both, which lets one mark find two nodules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Half-open [low, high) diameter bins in mm; the "<3 mm" bin is reported only when such nodules exist.
SIZE_BINS = (
    (0.0, 3.0, "<3 mm"), (3.0, 6.0, "3-6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, 20.0, "10-20 mm"), (20.0, float("inf"), ">20 mm"),
)
SMALL_NODULE_MM = 6.0
SMALL_NODULE_RADIUS_MM = 3.0
GROUP_KEYS = ("type", "location")
HIT_FP, HIT_IGNORED = -1, -2

Pair = tuple[list[dict], list[dict]]  # (predictions, truth) of one scan


@dataclass
class MatchedCase:
    """One scan's predictions (highest score first): ``hit_index`` is the nodule hit, -1 false positive, -2 ignored."""

    scores: np.ndarray
    hit_index: np.ndarray
    num_truth: int


def hit_radius(diameter_mm: float) -> float:
    """How far (mm) a predicted centre may lie from a nodule's centre and still hit it (LUNA16 rule)."""
    return SMALL_NODULE_RADIUS_MM if diameter_mm < SMALL_NODULE_MM else diameter_mm / 2.0


def match_case(predictions: list[dict], truth: list[dict], min_diameter_mm: float = 0.0) -> MatchedCase:
    """Assign each prediction (highest score first) to the nearest not-yet-hit nodule whose hit radius holds its centre.

    Going down the scores means a nodule is credited with the highest score that hits it, which is what the FROC
    needs. A prediction whose centre only lies in already-hit nodules is a duplicate: ignored (-2), not a false
    positive. A prediction hitting no nodule is a false positive (-1). Nodules under ``min_diameter_mm`` do not
    count: finding one is neither a hit nor a false positive (ignored, as LUNA16 treats its irrelevant findings),
    which is how the sensitivity "for nodules ≥ 6 mm" of a clinical bar is measured.
    """
    order = sorted(range(len(predictions)), key=lambda i: -float(predictions[i]["score"]))
    scores = np.array([float(predictions[i]["score"]) for i in order], dtype=float)
    hits = np.full(len(order), HIT_FP, dtype=int)
    counted = np.array([float(t["diameter_mm"]) >= min_diameter_mm for t in truth], dtype=bool)
    if not truth or not order:
        return MatchedCase(scores, hits, int(counted.sum()))
    centres = np.array([t["center_mm"] for t in truth], dtype=float).reshape(-1, 3)
    radii = np.array([hit_radius(float(t["diameter_mm"])) for t in truth], dtype=float)
    points = np.array([predictions[i]["center_mm"] for i in order], dtype=float).reshape(-1, 3)
    distance = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)  # (predictions, nodules)
    inside = distance <= radii[None, :]
    taken = np.zeros(len(truth), dtype=bool)
    for rank in np.flatnonzero(inside.any(axis=1)):  # a loop over hitting predictions only: few per scan
        free = np.flatnonzero(inside[rank] & ~taken)
        if free.size == 0:
            hits[rank] = HIT_IGNORED
            continue
        nearest = int(free[np.argmin(distance[rank, free])])
        taken[nearest] = True
        hits[rank] = nearest if counted[nearest] else HIT_IGNORED
    return MatchedCase(scores, hits, int(counted.sum()))


def froc_curve(cases: Sequence[MatchedCase]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fps_per_scan, sensitivity, thresholds)`` as one score threshold is lowered over all scans pooled.

    One point per distinct score (tied predictions are accepted together, so ties give a diagonal segment, not an
    order-dependent staircase), starting at ``(0, 0, inf)``. Ignored duplicates take no part.
    """
    n_scans = max(len(cases), 1)
    total_truth = sum(c.num_truth for c in cases)
    if not cases:
        return np.zeros(1), np.zeros(1), np.array([np.inf])
    scores = np.concatenate([c.scores for c in cases])
    hits = np.concatenate([c.hit_index for c in cases])
    keep = hits != HIT_IGNORED
    scores, is_tp = scores[keep], hits[keep] >= 0
    thresholds, group = np.unique(-scores, return_inverse=True)  # ascending -score = descending score
    tp = np.cumsum(np.bincount(group, weights=is_tp, minlength=len(thresholds)))
    fp = np.cumsum(np.bincount(group, weights=~is_tp, minlength=len(thresholds)))
    sensitivity = tp / total_truth if total_truth else np.zeros(len(thresholds))
    return (np.concatenate([[0.0], fp / n_scans]), np.concatenate([[0.0], sensitivity]),
            np.concatenate([[np.inf], -thresholds]))


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float] = FP_RATES) -> np.ndarray:
    """Sensitivity at each FP rate, linearly interpolated on the FROC curve (LUNA16: ``np.interp``).

    Beyond the curve's last point (the detector never makes that many FPs) the sensitivity stays at its final
    value. Where the curve rises vertically at exactly a rate, the top of the rise is taken, as ``np.interp`` does.
    """
    return np.interp(np.asarray(rates, dtype=float), fps, sens)


def _ci(values: np.ndarray) -> list[float]:
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def froc(
    cases: Sequence[Pair], fp_rates: Sequence[float] = FP_RATES, bootstrap: int = 1000, seed: int = 0,
    band_points: int = 41, min_diameter_mm: float = 0.0,
) -> dict:
    """FROC points, CPM, the full curve and bootstrap 95% intervals for ``(predictions, truth)`` pairs, one per scan.

    The intervals resample *scans* with replacement (``bootstrap`` draws, seeded, percentile intervals), as LUNA16
    does: nodules in one scan are not independent, so resampling nodules would make the intervals too narrow.
    Draws without any nodule have no sensitivity and are skipped. ``band`` is the pointwise interval of the curve
    on a log-spaced FP grid, for plotting. With no nodule at all every sensitivity is reported as 0 and
    ``num_nodules`` is 0: read them as undefined. ``min_diameter_mm`` restricts the nodules that count (see
    ``match_case``); ``ignored_hits`` counts duplicate hits and hits on nodules that do not count.
    """
    matched = [match_case(p, t, min_diameter_mm) for p, t in cases]
    fps, sens, thresholds = froc_curve(matched)
    points = sensitivity_at(fps, sens, fp_rates)
    result = {
        "fp_rates": [float(r) for r in fp_rates],
        "sensitivity": points.round(4).tolist(),
        "cpm": round(float(points.mean()), 4),
        "curve": {"fps_per_scan": fps.round(4).tolist(), "sensitivity": sens.round(4).tolist(),
                  "threshold": [None if np.isinf(t) else round(float(t), 5) for t in thresholds]},
        "min_diameter_mm": min_diameter_mm,
        "num_scans": len(matched),
        "num_nodules": int(sum(c.num_truth for c in matched)),
        "num_predictions": int(sum(len(c.scores) for c in matched)),
        "ignored_hits": int(sum(np.sum(c.hit_index == HIT_IGNORED) for c in matched)),
    }
    if bootstrap and matched and result["num_nodules"]:
        rng = np.random.default_rng(seed)
        grid = np.geomspace(min(fp_rates), max(fp_rates), band_points)
        draws, curves = [], []
        for _ in range(bootstrap):
            sample = [matched[i] for i in rng.integers(len(matched), size=len(matched))]
            if sum(c.num_truth for c in sample) == 0:
                continue
            f, s, _ = froc_curve(sample)
            draws.append(sensitivity_at(f, s, fp_rates))
            curves.append(np.interp(grid, f, s))
        if draws:
            arr, band = np.array(draws), np.array(curves)
            result["bootstrap"] = {"draws": len(draws), "requested": bootstrap, "seed": seed}
            result["cpm_ci95"] = _ci(arr.mean(axis=1))
            result["sensitivity_ci95"] = [_ci(arr[:, k]) for k in range(len(fp_rates))]
            result["band"] = {"fps_per_scan": grid.round(4).tolist(),
                              "low": np.percentile(band, 2.5, axis=0).round(4).tolist(),
                              "high": np.percentile(band, 97.5, axis=0).round(4).tolist()}
    return result


def _bin_name(diameter_mm: float) -> str:
    for low, high, name in SIZE_BINS:
        if low <= diameter_mm < high:
            return name
    return SIZE_BINS[-1][2]


def _rate(found: list[bool]) -> dict:
    return {"nodules": len(found), "detected": int(sum(found)),
            "sensitivity": round(float(np.mean(found)), 4) if found else None}


def operating_point(cases: Sequence[Pair], threshold: float) -> dict:
    """Lesion-level sensitivity and false positives per scan keeping predictions with ``score >= threshold``.

    Also sensitivity by size bin (equivalent-sphere diameter of the ground truth) and, when the truth has them, by
    ``type`` and ``location``: which nodules a detector misses matters as much as how many.
    """
    found_total, truth_total, fps = 0, 0, 0
    per_nodule: list[tuple[dict, bool]] = []
    for predictions, truth in cases:
        kept = [p for p in predictions if float(p["score"]) >= threshold]
        matched = match_case(kept, truth)
        hit_set = {int(i) for i in matched.hit_index if i >= 0}
        found_total += len(hit_set)
        truth_total += len(truth)
        fps += int(np.sum(matched.hit_index == HIT_FP))
        per_nodule.extend((t, i in hit_set) for i, t in enumerate(truth))
    by_size = {}
    for _, _, name in SIZE_BINS:
        members = [hit for t, hit in per_nodule if _bin_name(float(t["diameter_mm"])) == name]
        if members or name != "<3 mm":
            by_size[name] = _rate(members)
    result = {
        "threshold": threshold,
        "sensitivity": round(found_total / truth_total, 4) if truth_total else None,
        "detected": found_total,
        "nodules": truth_total,
        "false_positives": fps,
        "false_positives_per_scan": round(fps / max(len(cases), 1), 4),
        "by_size": by_size,
    }
    for key in GROUP_KEYS:
        values = sorted({str(t[key]) for t, _ in per_nodule if key in t})
        if values:
            result[f"by_{key}"] = {v: _rate([h for t, h in per_nodule if str(t.get(key)) == v]) for v in values}
    return result


def case_counts(predictions: list[dict], truth: list[dict], threshold: float = 0.0) -> dict:
    """One scan at an operating threshold: nodules found, missed, false positives and ignored duplicates."""
    matched = match_case([p for p in predictions if float(p["score"]) >= threshold], truth)
    found = int(np.sum(matched.hit_index >= 0))
    return {"detected": found, "missed": len(truth) - found, "false_positives": int(np.sum(matched.hit_index == HIT_FP)),
            "duplicates": int(np.sum(matched.hit_index == HIT_IGNORED))}
