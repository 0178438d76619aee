"""Lesion-level detection scoring: LUNA16 hit rule, FROC, CPM, sensitivity by size and type, bootstrap intervals.

Why the LUNA16 convention: it is how lung-nodule detectors are compared in the literature, so a clinic can put
meddet's numbers beside published ones. A prediction is a hit when its centre lies within a nodule's radius (within
3 mm for nodules under 6 mm); a nodule counts once, and further hits on it are neither true nor false positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SIZE_BINS = ((3.0, 6.0, "3-6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, 20.0, "10-20 mm"), (20.0, float("inf"), ">20 mm"))
SMALL_NODULE_MM = 6.0
SMALL_NODULE_RADIUS_MM = 3.0


@dataclass
class MatchedCase:
    """One scan's candidates, each marked hit (index of the nodule it hits), or false positive (-1), or ignored (-2)."""

    scores: np.ndarray
    hit_index: np.ndarray
    num_truth: int


def hit_radius(diameter_mm: float) -> float:
    return SMALL_NODULE_RADIUS_MM if diameter_mm < SMALL_NODULE_MM else diameter_mm / 2.0


def match_case(predictions: list[dict], truth: list[dict]) -> MatchedCase:
    """Assign each prediction (highest score first) to the nearest nodule whose hit radius contains its centre.

    A prediction inside a nodule that an earlier (higher-scoring) prediction already hit is ignored (-2): LUNA16 does
    not count duplicate hits as false positives. A prediction hitting no nodule is a false positive (-1).
    """
    order = sorted(range(len(predictions)), key=lambda i: -predictions[i]["score"])
    centres = np.array([t["center_mm"] for t in truth], dtype=float).reshape(-1, 3)
    radii = np.array([hit_radius(t["diameter_mm"]) for t in truth], dtype=float)
    scores = np.array([predictions[i]["score"] for i in order], dtype=float)
    hits = np.full(len(order), -1, dtype=int)
    taken = np.zeros(len(truth), dtype=bool)
    for rank, i in enumerate(order):
        if not len(truth):
            break
        distance = np.linalg.norm(centres - np.asarray(predictions[i]["center_mm"], dtype=float), axis=1)
        inside = np.flatnonzero(distance <= radii)
        if inside.size == 0:
            continue
        free = inside[~taken[inside]]
        if free.size == 0:
            hits[rank] = -2
            continue
        nearest = free[np.argmin(distance[free])]
        taken[nearest] = True
        hits[rank] = nearest
    return MatchedCase(scores, hits, len(truth))


def froc_curve(cases: list[MatchedCase]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps_per_scan, sensitivity, thresholds) as the score threshold is lowered over all scans pooled."""
    n_scans = max(len(cases), 1)
    total_truth = sum(c.num_truth for c in cases)
    scores = np.concatenate([c.scores for c in cases]) if cases else np.zeros(0)
    is_tp = np.concatenate([c.hit_index >= 0 for c in cases]) if cases else np.zeros(0, bool)
    is_fp = np.concatenate([c.hit_index == -1 for c in cases]) if cases else np.zeros(0, bool)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(is_fp[order])
    sensitivity = tp / total_truth if total_truth else np.zeros_like(tp, dtype=float)
    return np.concatenate([[0.0], fp / n_scans]), np.concatenate([[0.0], sensitivity]), np.concatenate([[np.inf], scores[order]])


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rates=FP_RATES) -> np.ndarray:
    """Sensitivity at each FP rate: the best sensitivity reached with at most that many FPs per scan."""
    return np.array([float(sens[fps <= rate].max()) if np.any(fps <= rate) else 0.0 for rate in rates])


def froc(pairs: list[tuple[list[dict], list[dict]]], rates=FP_RATES, bootstrap: int = 1000, seed: int = 0) -> dict:
    """FROC points, CPM and bootstrap 95% intervals (scans resampled with replacement) for ``(predictions, truth)`` pairs."""
    cases = [match_case(p, t) for p, t in pairs]
    fps, sens, _ = froc_curve(cases)
    points = sensitivity_at(fps, sens, rates)
    result = {
        "fp_rates": list(rates),
        "sensitivity": points.round(4).tolist(),
        "cpm": round(float(points.mean()), 4),
        "curve": {"fps_per_scan": fps.round(4).tolist(), "sensitivity": sens.round(4).tolist()},
        "num_scans": len(cases),
        "num_nodules": int(sum(c.num_truth for c in cases)),
    }
    if bootstrap and cases:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            sample = [cases[i] for i in rng.integers(len(cases), size=len(cases))]
            if sum(c.num_truth for c in sample) == 0:
                continue
            f, s, _ = froc_curve(sample)
            draws.append(sensitivity_at(f, s, rates))
        if draws:
            arr = np.array(draws)
            cpm = arr.mean(axis=1)
            result["cpm_ci95"] = [round(float(np.percentile(cpm, 2.5)), 4), round(float(np.percentile(cpm, 97.5)), 4)]
            result["sensitivity_ci95"] = [[round(float(np.percentile(arr[:, k], q)), 4) for q in (2.5, 97.5)] for k in range(len(rates))]
    return result


def operating_point(pairs: list[tuple[list[dict], list[dict]]], threshold: float) -> dict:
    """Sensitivity and false positives per scan keeping predictions with ``score >= threshold``; per-nodule hits."""
    found, total, fps = 0, 0, 0
    per_nodule = []
    for predictions, truth in pairs:
        kept = [p for p in predictions if p["score"] >= threshold]
        matched = match_case(kept, truth)
        hit_set = set(int(i) for i in matched.hit_index if i >= 0)
        found += len(hit_set)
        total += len(truth)
        fps += int(np.sum(matched.hit_index == -1))
        per_nodule.extend((t, i in hit_set) for i, t in enumerate(truth))
    by_size = {}
    for low, high, name in SIZE_BINS:
        members = [hit for t, hit in per_nodule if low <= t["diameter_mm"] < high]
        by_size[name] = {"nodules": len(members), "sensitivity": round(float(np.mean(members)), 4) if members else None}
    groups: dict[str, dict] = {}
    for key in ("type", "location"):
        values = sorted({t[key] for t, _ in per_nodule if key in t})
        if values:
            groups[key] = {v: {"nodules": sum(1 for t, _ in per_nodule if t.get(key) == v),
                               "sensitivity": round(float(np.mean([h for t, h in per_nodule if t.get(key) == v])), 4)} for v in values}
    return {
        "threshold": threshold,
        "sensitivity": round(found / total, 4) if total else None,
        "false_positives_per_scan": round(fps / max(len(pairs), 1), 4),
        "nodules": total,
        "by_size": by_size,
        **{f"by_{k}": v for k, v in groups.items()},
    }
