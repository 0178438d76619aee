"""Branching trees inside the lungs: pulmonary arteries and veins (radius ~5 mm at the hilum to 0.5 mm at the
periphery) and the bronchial tree.

Why trees grown towards targets in the lung: vessel cross-sections are the main source of false positives for a
nodule detector (on one slice a vessel seen end-on is a small bright disc), so the vessels must fill the lung the
way real ones do: branching, tapering, denser centrally, sparse under the pleura. Each tree starts at its hilum
and recursively splits a cloud of target points sampled inside the lung; a branch serving n terminal targets has
radius r_leaf * n^(1/3) (Murray's law with equal terminal flow), so radii taper naturally towards the periphery.
"""

from __future__ import annotations

import numpy as np

from meddet.phantom.anatomy import Anatomy
from meddet.phantom.sdf import SegmentSet

ROOT_RADIUS_MM = (4.5, 5.5)
LEAF_RADIUS_MM = (0.4, 0.5)


def grow_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_leaf: float, r_max: float,
              wiggle: float = 0.12) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments (p0, p1, r0, r1) of a tree from ``root`` whose terminal branches end at ``targets`` (N, 3)."""
    p0, p1, r0, r1 = [], [], [], []
    stack = [(np.asarray(root, dtype=float), np.arange(len(targets)))]
    while stack:
        start, idx = stack.pop()
        pts = targets[idx]
        n = len(idx)
        r = min(r_leaf * n ** (1.0 / 3.0), r_max)
        if n == 1:
            p0.append(start)
            p1.append(pts[0])
            r0.append(r)
            r1.append(r_leaf * 0.85)
            continue
        c = pts.mean(axis=0)
        v = c - start
        L = float(np.linalg.norm(v)) + 1e-9
        f = rng.uniform(0.3, 0.55) if n > 4 else rng.uniform(0.45, 0.75)
        step = max(f * L, min(2.5 * r, L * 0.9))
        q = start + v / L * step
        perp = rng.normal(size=3)
        perp -= perp @ v / (L * L) * v
        q = q + perp * (wiggle * step / (np.linalg.norm(perp) + 1e-9))
        p0.append(start)
        p1.append(q)
        r0.append(r)
        r1.append(r * 0.93)
        # split the targets across their principal axis, unevenly, as real branchings are
        centred = pts - c
        if n == 2:
            order = np.array([0, 1])
        else:
            _, vecs = np.linalg.eigh(centred.T @ centred)
            axis = vecs[:, 2] if rng.random() < 0.8 else vecs[:, 1]
            order = np.argsort(centred @ axis)
        k = int(np.clip(round(n * rng.uniform(0.3, 0.7)), 1, n - 1))
        stack.append((q, idx[order[:k]]))
        stack.append((q, idx[order[k:]]))
    return np.array(p0), np.array(p1), np.array(r0), np.array(r1)


def build_pulmonary_trees(rng: np.random.Generator, an: Anatomy) -> tuple[SegmentSet, SegmentSet]:
    """Arterial + venous trees for both lungs (one SegmentSet), and the bronchial tree (walls with lumens)."""
    p = an.p
    pool, pool_d = an.sample_lung_points(rng, 16000, max_depth=3.0)
    side = an.lung_side(pool)
    vessel_hu = rng.uniform(15, 65)
    vessel_suv = p.suv_blood
    vsets = []
    for s in (-1, 1):
        pts_s, d_s = pool[side == s], pool_d[side == s]
        order = rng.permutation(len(pts_s))
        halves = {"artery": order[: len(order) // 2], "vein": order[len(order) // 2 :]}
        for kind in ("artery", "vein"):
            cand = pts_s[halves[kind]]
            cand = cand[d_s[halves[kind]] < -rng.uniform(3, 8)]
            n = int(min(len(cand), rng.uniform(1000, 1600) * (1.1 if s < 0 else 0.95)))
            targets = cand[:n]
            if len(targets) < 2:
                continue
            r_leaf = rng.uniform(*LEAF_RADIUS_MM)
            r_max = rng.uniform(*ROOT_RADIUS_MM)
            a, b, r0, r1 = grow_tree(rng, an.hila[kind][s], targets, r_leaf, r_max)
            hu = np.clip(vessel_hu + rng.uniform(-8, 8) + rng.normal(0, 4, size=len(a)), 0, 80)
            vsets.append(SegmentSet(a, b, r0, r1, hu, suv=np.full(len(a), vessel_suv)))
    vessels = SegmentSet.concat(vsets)
    vessels.meta["kind"] = "pulmonary vessels"

    bsets = []
    wall_hu = an.hila["wall_hu"]
    for s in (-1, 1):
        deep = pool[(side == s) & (pool_d < -15)]
        n = int(min(len(deep), rng.uniform(50, 130)))
        if n < 2:
            continue
        targets = deep[rng.choice(len(deep), size=n, replace=False)]
        lumen_leaf = rng.uniform(0.7, 1.1)
        a, b, r0, r1 = grow_tree(rng, an.hila["bronchus"][s], targets, lumen_leaf, an.hila["bronchus_r"][s] * 0.8,
                                 wiggle=0.08)
        wall = 0.15 * r0 + 0.35
        bsets.append(SegmentSet(a, b, r0 + wall, r1 + wall, np.full(len(a), wall_hu), inner_offset=wall,
                                inner_value=np.full(len(a), -1000.0)))
    bronchi = SegmentSet.concat(bsets)
    return vessels, bronchi
