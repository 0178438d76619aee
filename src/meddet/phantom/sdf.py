"""Signed-distance primitives and the tube-segment renderer every branching structure uses.

Why signed distances: one function per structure gives both the sharp object (distance < 0) and its partial
volume on any grid (a linear ramp of the distance over one voxel), and the same function answers point queries
("is this candidate nodule centre 5 mm inside the lung?") without rendering anything.

Distances are in millimetres, negative inside. Approximate distances (superellipses, ellipsoids) are exact on the
surface and close to Euclidean near it, which is all partial volume needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddet.phantom.grid import Grid, sub

BIG = np.float32(1e4)


def ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume occupancy from a signed distance: 1 inside, 0 outside, linear over ``width`` mm."""
    out = np.multiply(d, np.float32(-1.0 / width), dtype=np.float32)
    out += np.float32(0.5)
    np.maximum(out, np.float32(0.0), out=out)
    np.minimum(out, np.float32(1.0), out=out)
    return out


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (a rounded union of two shapes, blending over ``k`` mm)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * (k * 0.25)


def superellipse2d(x, y, a, b, p: float) -> np.ndarray:
    """Radial signed distance to the superellipse |x/a|^p + |y/b|^p = 1 (centred at 0)."""
    ax = np.abs(x / a)
    ay = np.abs(y / b)
    if p == 2.0:
        f = np.sqrt(ax * ax + ay * ay)
    else:
        f = (ax**p + ay**p) ** (1.0 / p)
    r = np.sqrt(x * x + y * y)
    return r - r / np.maximum(f, 1e-6)


def superellipse_radius(theta: np.ndarray, a, b, p: float) -> np.ndarray:
    """Distance from the centre to the superellipse boundary along direction ``theta`` (radians, from +x to +y)."""
    c = np.abs(np.cos(theta)) / a
    s = np.abs(np.sin(theta)) / b
    return 1.0 / np.maximum((c**p + s**p) ** (1.0 / p), 1e-9)


def ellipsoid(px, py, pz, axes) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (coordinates already relative to its centre)."""
    a, b, c = axes
    k0 = np.sqrt((px / a) ** 2 + (py / b) ** 2 + (pz / c) ** 2)
    k1 = np.sqrt((px / (a * a)) ** 2 + (py / (b * b)) ** 2 + (pz / (c * c)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def rotate(px, py, pz, rot: np.ndarray):
    """Coordinates in a rotated frame: q = rot.T @ p (rot columns are the frame's axes)."""
    r = np.asarray(rot, dtype=np.float32)
    qx = px * r[0, 0] + py * r[1, 0] + pz * r[2, 0]
    qy = px * r[0, 1] + py * r[1, 1] + pz * r[2, 1]
    qz = px * r[0, 2] + py * r[1, 2] + pz * r[2, 2]
    return qx, qy, qz


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class SegmentSet:
    """Tapered tubes (p0 → p1, radius r0 → r1), each with its own value (HU, and SUV for the PET channel).

    ``inner`` (optional, same length) gives a second, thinner radius pair with its own value: a bone's marrow inside
    its cortex, an airway's lumen inside its wall.
    """

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    value: np.ndarray
    suv: np.ndarray | None = None
    inner_scale: np.ndarray | None = None  # inner radius = r - inner_offset, used where inner_scale > 0
    inner_offset: np.ndarray | None = None
    inner_value: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.p0 = np.asarray(self.p0, dtype=float).reshape(-1, 3)
        self.p1 = np.asarray(self.p1, dtype=float).reshape(-1, 3)
        n = len(self.p0)
        self.r0 = np.broadcast_to(np.asarray(self.r0, dtype=float), (n,)).copy()
        self.r1 = np.broadcast_to(np.asarray(self.r1, dtype=float), (n,)).copy()
        self.value = np.broadcast_to(np.asarray(self.value, dtype=float), (n,)).copy()
        if self.suv is not None:
            self.suv = np.broadcast_to(np.asarray(self.suv, dtype=float), (n,)).copy()
        if self.inner_offset is not None:
            self.inner_offset = np.broadcast_to(np.asarray(self.inner_offset, dtype=float), (n,)).copy()
            self.inner_value = np.broadcast_to(np.asarray(self.inner_value, dtype=float), (n,)).copy()
            self.inner_scale = (self.inner_offset > 0).astype(float)

    def __len__(self) -> int:
        return len(self.p0)

    @staticmethod
    def concat(sets: list["SegmentSet"]) -> "SegmentSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            return SegmentSet(np.zeros((0, 3)), np.zeros((0, 3)), [], [], [])
        has_suv = all(s.suv is not None for s in sets)
        has_inner = any(s.inner_offset is not None for s in sets)
        kw = {}
        if has_inner:
            kw["inner_offset"] = np.concatenate(
                [s.inner_offset if s.inner_offset is not None else np.zeros(len(s)) for s in sets]
            )
            kw["inner_value"] = np.concatenate(
                [s.inner_value if s.inner_value is not None else np.zeros(len(s)) for s in sets]
            )
        return SegmentSet(
            np.concatenate([s.p0 for s in sets]),
            np.concatenate([s.p1 for s in sets]),
            np.concatenate([s.r0 for s in sets]),
            np.concatenate([s.r1 for s in sets]),
            np.concatenate([s.value for s in sets]),
            suv=np.concatenate([s.suv for s in sets]) if has_suv else None,
            **kw,
        )

    def bounds(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = np.maximum(self.r0, self.r1)[:, None] + pad
        return np.minimum(self.p0, self.p1) - r, np.maximum(self.p0, self.p1) + r

    # ------------------------------------------------------------------ point queries
    def points_sdf(self, pts: np.ndarray, inner: bool = False, return_index: bool = False, batch: int = 2_000_000):
        """Signed distance (N,) from each point to the union of the tubes (or of their inner tubes)."""
        pts = np.asarray(pts, dtype=float).reshape(-1, 3)
        out = np.full(len(pts), float(BIG))
        arg = np.full(len(pts), -1, dtype=int)
        if len(self) == 0 or len(pts) == 0:
            return (out, arg) if return_index else out
        lo, hi = self.bounds()
        plo, phi = pts.min(axis=0), pts.max(axis=0)
        cand = np.nonzero(np.all(hi >= plo - 50.0, axis=1) & np.all(lo <= phi + 50.0, axis=1))[0]
        if inner and self.inner_offset is not None:
            cand = cand[self.inner_offset[cand] > 0]
        if len(cand) == 0:
            return (out, arg) if return_index else out
        step = max(1, batch // max(len(pts), 1))
        for s0 in range(0, len(cand), step):
            c = cand[s0 : s0 + step]
            a = self.p0[c]
            d = self.p1[c] - a
            l2 = np.maximum((d * d).sum(axis=1), 1e-12)
            rel = pts[:, None, :] - a[None, :, :]
            t = np.clip((rel * d[None]).sum(axis=2) / l2[None], 0.0, 1.0)
            e = rel - t[..., None] * d[None]
            r = self.r0[c][None] + t * (self.r1[c] - self.r0[c])[None]
            if inner:
                r = r - self.inner_offset[c][None]
            dist = np.sqrt((e * e).sum(axis=2)) - r
            j = np.argmin(dist, axis=1)
            best = dist[np.arange(len(pts)), j]
            better = best < out
            out[better] = best[better]
            arg[better] = c[j[better]]
        return (out, arg) if return_index else out

    # ------------------------------------------------------------------ rendering
    def render(self, grid: Grid, zs: slice, coords, pad: float, inner: bool = False, want_suv: bool = False):
        """Minimum signed distance and the nearest tube's value over grid rows ``zs`` (all of y and x).

        Each tube is evaluated only inside its bounding box: the cost is proportional to the tubes' volume,
        not to the image size. Returns ``(d, value, suv)`` arrays of the block's shape (suv None unless asked).
        """
        X, Y, Z = coords
        z0, z1, _ = zs.indices(grid.shape[0])
        shape = (z1 - z0, grid.shape[1], grid.shape[2])
        d = np.full(shape, BIG, dtype=np.float32)
        val = np.zeros(shape, dtype=np.float32)
        sv = np.zeros(shape, dtype=np.float32) if want_suv and self.suv is not None else None
        if len(self) == 0:
            return d, val, sv
        idx = np.arange(len(self))
        if inner:
            if self.inner_offset is None:
                return d, val, sv
            idx = idx[self.inner_offset > 0]
        lo, hi = self.bounds(pad)
        start, stop = grid.index_boxes(lo[idx], hi[idx])
        keep = (start[:, 2] < z1) & (stop[:, 2] > z0) & np.all(stop > start, axis=1)
        idx, start, stop = idx[keep], start[keep], stop[keep]
        values = self.inner_value if inner else self.value
        for n, s in enumerate(idx):
            ka, kb = max(start[n, 2], z0), min(stop[n, 2], z1)
            if kb <= ka:
                continue
            bz = slice(ka - z0, kb - z0)
            by = slice(start[n, 1], stop[n, 1])
            bx = slice(start[n, 0], stop[n, 0])
            x = sub(X, bz, by, bx)
            y = sub(Y, bz, by, bx)
            z = sub(Z, bz, by, bx)
            a = self.p0[s]
            dv = self.p1[s] - a
            l2 = max(float(dv @ dv), 1e-12)
            px = x - np.float32(a[0])
            py = y - np.float32(a[1])
            pz = z - np.float32(a[2])
            t = (px * np.float32(dv[0] / l2) + py * np.float32(dv[1] / l2)) + pz * np.float32(dv[2] / l2)
            np.clip(t, 0.0, 1.0, out=t)
            ex = px - t * np.float32(dv[0])
            ey = py - t * np.float32(dv[1])
            ez = pz - t * np.float32(dv[2])
            r0 = self.r0[s] - (self.inner_offset[s] if inner else 0.0)
            r1 = self.r1[s] - (self.inner_offset[s] if inner else 0.0)
            dist = np.sqrt(ex * ex + ey * ey + ez * ez) - (np.float32(r0) + t * np.float32(r1 - r0))
            dview = d[bz, by, bx]
            m = dist < dview
            dview[m] = dist[m]
            val[bz, by, bx][m] = values[s]
            if sv is not None:
                sv[bz, by, bx][m] = self.suv[s]
        return d, val, sv
