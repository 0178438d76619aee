"""Lung nodules: what kinds a case gets (sampling), where they go (placement), what they look like (shape and
intensity), and their exact ground truth (voxel occupancy on the final grid).

Why the ground truth is computed separately from the image: the image is a blurred, noisy, partial-volume picture;
the label must say exactly which voxels the nodule fills at least half of. It is computed by supersampling the
nodule's signed distance (intersected with the lung, so a nodule never leaves it) inside each boundary voxel of the
final grid; voxels well inside or outside need no supersampling. The lesion volume is the sum of those
occupancies, so the reported equivalent-sphere diameter is the true one, not the nominal one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddet.phantom.anatomy import Anatomy
from meddet.phantom.geometry import ScanGeometry
from meddet.phantom.grid import Grid
from meddet.phantom.sdf import BIG, SegmentSet, ellipsoid, ramp, random_rotation, rotate, smin

KINDS = ("solid", "part-solid", "ground-glass", "calcified")
SHAPES = ("sphere", "ellipsoid", "lobulated", "spiculated")
LOCATIONS = ("parenchymal", "juxtavascular", "juxtapleural", "perifissural")
COUNT_WEIGHTS = (0.30, 0.24, 0.17, 0.12, 0.08, 0.05, 0.04)  # 0..6 nodules per scan
KIND_WEIGHTS = (0.55, 0.13, 0.20, 0.12)
LOCATION_WEIGHTS = (0.45, 0.20, 0.25, 0.10)
SHAPE_WEIGHTS = {
    "solid": (0.25, 0.30, 0.25, 0.20),
    "part-solid": (0.20, 0.30, 0.30, 0.20),
    "ground-glass": (0.35, 0.35, 0.30, 0.0),
    "calcified": (0.60, 0.30, 0.10, 0.0),
}
MASS_SHAPE_WEIGHTS = (0.0, 0.10, 0.45, 0.45)
DIAMETER_RANGE_MM = (3.0, 35.0)
# Beyond the spec, opt-in (``meddet phantom --large-masses P``): real chest CTs hold tumours of 40-70 mm, often against
# the chest wall or mediastinum, which a model trained on the spec's <= 35 mm does not see (docs/models/lung-nodule.md).
LARGE_MASS_RANGE_MM = (35.0, 70.0)
LARGE_MASS_JUXTAPLEURAL = 0.6
# Beyond the spec, opt-in (``meddet phantom --small-nodules N``): the kinds of 3-6 mm nodules the bundled model misses
# (faint ground glass, and solid ones against a vessel; docs/models/lung-nodule.md, "Which nodules are missed") are
# rare at the spec's rates; training data can carry N more per case.
SMALL_NODULE_RANGE_MM = (3.0, 6.0)
SMALL_NODULE_KIND_WEIGHTS = {"solid": 0.5, "ground-glass": 0.5}
SMALL_NODULE_LOCATION_WEIGHTS = {"juxtavascular": 0.6, "parenchymal": 0.15, "perifissural": 0.15, "juxtapleural": 0.1}


@dataclass(frozen=True)
class LesionSpec:
    """What a nodule should be, before it is placed: target diameter, type, shape, location class."""

    diameter_mm: float
    kind: str
    shape: str
    location: str


def sample_diameter(rng: np.random.Generator) -> float:
    """Weighted towards small nodules (most 4–12 mm), a tail of larger ones and a few masses over 30 mm."""
    u = rng.random()
    if u < 0.78:
        d = float(np.exp(rng.normal(np.log(7.0), 0.38)))
    elif u < 0.95:
        d = float(rng.uniform(10, 30))
    else:
        d = float(rng.uniform(30, 35))
    return float(np.clip(d, *DIAMETER_RANGE_MM))


def sample_shape(rng: np.random.Generator, d: float, kind: str, location: str) -> str:
    """A nodule's shape given its size, type and location: masses over 30 mm mostly lobulated or spiculated, and
    perifissural nodules mostly flat (ellipsoid) along their fissure."""
    weights = MASS_SHAPE_WEIGHTS if d > 30 and kind in ("solid", "part-solid") else SHAPE_WEIGHTS[kind]
    shape = str(rng.choice(SHAPES, p=np.asarray(weights) / np.sum(weights)))
    if location == "perifissural" and rng.random() < 0.7:
        shape = "ellipsoid"
    return shape


def sample_lesion_specs(rng: np.random.Generator) -> list[LesionSpec]:
    """The nodules of one case (0–6; none in about 30% of cases). No rendering: fast enough for statistics."""
    n = int(rng.choice(len(COUNT_WEIGHTS), p=COUNT_WEIGHTS))
    specs = []
    for _ in range(n):
        d = sample_diameter(rng)
        kind = str(rng.choice(KINDS, p=KIND_WEIGHTS))
        if kind == "calcified":
            d = min(d, float(rng.uniform(3, 14)))
        elif kind == "part-solid":
            d = max(d, float(rng.uniform(6, 14)))
        location = str(rng.choice(LOCATIONS, p=LOCATION_WEIGHTS))
        if location == "perifissural":
            d = min(d, float(rng.uniform(4, 12)))
        shape = sample_shape(rng, d, kind, location)
        specs.append(LesionSpec(diameter_mm=round(d, 3), kind=kind, shape=shape, location=location))
    return specs


def sample_large_mass(rng: np.random.Generator) -> LesionSpec:
    """One mass of 35-70 mm (beyond the spec): solid or part-solid, lobulated or spiculated, mostly juxtapleural."""
    d = float(rng.uniform(*LARGE_MASS_RANGE_MM))
    kind = "solid" if rng.random() < 0.85 else "part-solid"
    location = "juxtapleural" if rng.random() < LARGE_MASS_JUXTAPLEURAL else "parenchymal"
    shape = str(rng.choice(SHAPES, p=np.asarray(MASS_SHAPE_WEIGHTS) / np.sum(MASS_SHAPE_WEIGHTS)))
    return LesionSpec(diameter_mm=round(d, 3), kind=kind, shape=shape, location=location)


def sample_small_nodule(rng: np.random.Generator) -> LesionSpec:
    """One extra 3-6 mm nodule (beyond the spec's rates): solid or ground glass, mostly juxtavascular."""
    d = float(rng.uniform(*SMALL_NODULE_RANGE_MM))
    kind = str(rng.choice(list(SMALL_NODULE_KIND_WEIGHTS), p=list(SMALL_NODULE_KIND_WEIGHTS.values())))
    location = str(rng.choice(list(SMALL_NODULE_LOCATION_WEIGHTS), p=list(SMALL_NODULE_LOCATION_WEIGHTS.values())))
    return LesionSpec(diameter_mm=round(d, 3), kind=kind, shape=sample_shape(rng, d, kind, location), location=location)


# ---------------------------------------------------------------------------------------------------- the nodule
@dataclass
class Nodule:
    """A placed nodule: its signed distance and intensity functions in the body frame."""

    id: int
    spec: LesionSpec
    center: np.ndarray
    radius: float
    rot: np.ndarray
    axes: np.ndarray  # ellipsoid semi-axes (sphere: all = radius)
    lobes: list = field(default_factory=list)  # (offset (3,), radius)
    spicules: SegmentSet | None = None
    core: tuple | None = None  # (offset (3,), radius, hu)
    hu: float = 40.0
    suv: float = 1.0
    core_suv: float = 1.0
    tex: tuple = ()
    extent: float = 0.0

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def bbox_lo(self) -> np.ndarray:
        return self.center - self.extent - 1.0

    @property
    def bbox_hi(self) -> np.ndarray:
        return self.center + self.extent + 1.0

    def sdf(self, X, Y, Z):
        c = self.center
        px, py, pz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        shape = self.spec.shape
        if shape == "sphere":
            return np.sqrt(px * px + py * py + pz * pz) - np.float32(self.radius)
        qx, qy, qz = rotate(px, py, pz, self.rot)
        d = ellipsoid(qx, qy, qz, self.axes)
        if shape == "lobulated":
            for off, r in self.lobes:
                dl = np.sqrt((qx - off[0]) ** 2 + (qy - off[1]) ** 2 + (qz - off[2]) ** 2) - np.float32(r)
                d = smin(d, dl, 0.3 * self.radius)
        elif shape == "spiculated" and self.spicules is not None:
            pts_shape = np.broadcast_shapes(np.shape(X), np.shape(Y), np.shape(Z))
            ds = _tubes_sdf(self.spicules, px, py, pz, pts_shape)
            d = smin(d, ds, 1.0)
        return d

    def values(self, X, Y, Z, d):
        """HU and SUV inside the nodule (texture, solid or calcified core)."""
        c = self.center
        px, py, pz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        tex = np.float32(0.0)
        for amp, k in self.tex:
            tex = tex + np.float32(amp) * np.cos(px * np.float32(k[0]) + py * np.float32(k[1]) + pz * np.float32(k[2]))
        hu = np.float32(self.hu) + tex
        suv = np.float32(self.suv)
        if self.core is not None:
            off, r, hu_core = self.core
            dc = np.sqrt((px - off[0]) ** 2 + (py - off[1]) ** 2 + (pz - off[2]) ** 2) - np.float32(r)
            w = ramp(dc, max(1.0, 0.25 * r))
            hu = hu + w * (np.float32(hu_core) - hu)
            suv = suv + w * np.float32(self.core_suv - self.suv)
        return hu, suv


def _tubes_sdf(tubes: SegmentSet, px, py, pz, shape):
    """Union distance to a few tubes (spicules) given coordinates relative to the nodule centre."""
    d = np.full(shape, BIG, dtype=np.float32)
    for s in range(len(tubes)):
        a, b = tubes.p0[s], tubes.p1[s]
        v = b - a
        l2 = float(v @ v)
        ax, ay, az = px - np.float32(a[0]), py - np.float32(a[1]), pz - np.float32(a[2])
        t = np.clip((ax * np.float32(v[0]) + ay * np.float32(v[1]) + az * np.float32(v[2])) / np.float32(l2), 0, 1)
        ex, ey, ez = ax - t * np.float32(v[0]), ay - t * np.float32(v[1]), az - t * np.float32(v[2])
        dist = np.sqrt(ex * ex + ey * ey + ez * ez) - (np.float32(tubes.r0[s]) + t * np.float32(tubes.r1[s] - tubes.r0[s]))
        d = np.minimum(d, dist)
    return d


def build_nodule(rng: np.random.Generator, nid: int, spec: LesionSpec, center: np.ndarray,
                 normal: np.ndarray | None = None) -> Nodule:
    """Shape and intensities of one nodule; ``normal`` orients a perifissural nodule's flat axis."""
    r = spec.diameter_mm / 2
    rot = random_rotation(rng)
    axes = np.array([r, r, r])
    lobes, spicules, core = [], None, None
    extent = r
    if spec.shape == "ellipsoid":
        if normal is not None:
            e_short = rng.uniform(0.45, 0.7)
            e = 1 / np.sqrt(e_short)
            axes = np.array([r * e * rng.uniform(0.9, 1.1), r * e, r * e_short])
            n = normal / np.linalg.norm(normal)
            t1 = np.cross(n, [1.0, 0, 0]) if abs(n[0]) < 0.9 else np.cross(n, [0, 1.0, 0])
            t1 /= np.linalg.norm(t1)
            rot = np.stack([t1, np.cross(n, t1), n], axis=1)
        else:
            e = rng.uniform(1.0, 1.8, size=3)
            e /= np.prod(e) ** (1 / 3)
            axes = r * e
        extent = float(axes.max())
    elif spec.shape == "lobulated":
        axes = r * rng.uniform(0.75, 0.9) * np.ones(3)
        for _ in range(int(rng.integers(3, 7))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            rl = r * rng.uniform(0.35, 0.6)
            lobes.append((u * (r - rl * rng.uniform(0.6, 1.0)), rl))
        extent = r * 1.05
    elif spec.shape == "spiculated":
        axes = r * rng.uniform(0.85, 1.0) * rng.uniform(0.9, 1.1, size=3)
        k = int(rng.integers(6, 17))
        u = rng.normal(size=(k, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        length = np.clip(r * rng.uniform(0.4, 1.2, size=k), 2.0, 15.0)
        base = np.clip(rng.uniform(0.4, 1.0, size=k) * min(1.0, r / 5) + 0.3, 0.4, 1.6)
        spicules = SegmentSet(u * r * 0.6, u * (r + length)[:, None], base, np.full(k, 0.15), np.zeros(k))
        extent = float(r + length.max() + 0.5)
    hu, suv, core_suv = 40.0, 1.0, 1.0
    tex = []
    kind = spec.kind
    if kind == "solid":
        hu = rng.uniform(0, 80)
        suv = rng.uniform(1.5, 10.0) if rng.random() < 0.8 else rng.uniform(0.4, 1.2)
        tex = [(rng.uniform(2, 8), rng.normal(size=3) * 2 * np.pi / rng.uniform(4, 12))]
    elif kind == "ground-glass":
        hu = rng.uniform(-750, -300)
        suv = rng.uniform(0.3, 1.2)
        tex = [(rng.uniform(10, 40), rng.normal(size=3) * 2 * np.pi / rng.uniform(3, 8)) for _ in range(2)]
    elif kind == "part-solid":
        hu = rng.uniform(-700, -300)
        suv = rng.uniform(0.4, 1.2)
        core_suv = rng.uniform(1.0, 4.0)
        tex = [(rng.uniform(10, 30), rng.normal(size=3) * 2 * np.pi / rng.uniform(3, 8))]
        off = rng.normal(size=3) * r * 0.12
        core = (off, r * rng.uniform(0.3, 0.65), rng.uniform(0, 80))
    elif kind == "calcified":
        suv = rng.uniform(0.3, 1.0)
        core_suv = suv
        if rng.random() < 0.6:
            hu = rng.uniform(250, 1000)
        else:
            hu = rng.uniform(0, 80)
            core = (rng.normal(size=3) * r * 0.1, r * rng.uniform(0.3, 0.6), rng.uniform(300, 1200))
    return Nodule(id=nid, spec=spec, center=np.asarray(center, dtype=float), radius=r, rot=rot, axes=axes,
                  lobes=lobes, spicules=spicules, core=core, hu=float(hu), suv=float(suv), core_suv=float(core_suv),
                  tex=tuple(tex), extent=float(extent))


# ---------------------------------------------------------------------------------------------------- placement
def _scan_box_ok(geom: ScanGeometry, center: np.ndarray, extent: float) -> bool:
    grid = geom.grid(1)
    lo, hi = center - extent - 1.0, center + extent + 1.0
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    idx = grid.to_index(corners)
    nz, ny, nx = grid.shape
    return bool(np.all(idx.min(axis=0) >= 1) and np.all(idx.max(axis=0) <= np.array([nx, ny, nz]) - 2))


def place_nodules(rng: np.random.Generator, specs: list[LesionSpec], an: Anatomy, geom: ScanGeometry,
                  tries: int = 400) -> list[Nodule]:
    """Put each specified nodule where its location class says, inside the lung and the scanned region.

    A nodule that cannot be placed (e.g. a juxtavascular one in a scan covering too little lung) is left out.
    """
    grid = geom.grid(1)
    corners = grid.to_body(np.array([[0, 0, 0], [grid.shape[2] - 1, grid.shape[1] - 1, grid.shape[0] - 1]]))
    z_range = (float(corners[:, 2].min()), float(corners[:, 2].max()))
    pool, pool_d = an.sample_lung_points(rng, 5000, max_depth=0.0, z_range=z_range)
    if len(pool) == 0:
        return []
    pool_cav = an.cavity_sdf(pool[:, 0], pool[:, 1], pool[:, 2])
    vessels = an.vessels if an.vessels is not None else SegmentSet(np.zeros((0, 3)), np.zeros((0, 3)), [], [], [])
    big = np.maximum(vessels.r0, vessels.r1) >= 1.0
    big_vessels = SegmentSet(vessels.p0[big], vessels.p1[big], vessels.r0[big], vessels.r1[big], vessels.value[big])
    airways = SegmentSet.concat([s for s in (an.bronchi, an.central_airways) if s is not None])
    placed: list[Nodule] = []
    for spec in specs:
        r = spec.diameter_mm / 2
        nod = None
        for attempt in range(tries):
            normal = None
            loc = spec.location
            if loc == "parenchymal":
                ok = np.nonzero(pool_d < -(r + 2.5))[0]
                if len(ok) == 0:
                    break
                c = pool[rng.choice(ok)]
            elif loc == "juxtapleural":
                ok = (pool_d < -0.45 * r) & (pool_d > -1.0 * r - 0.5)
                if rng.random() < 0.8:  # mostly against the chest wall rather than the mediastinum
                    ok &= pool_cav > -(r + 4)
                ok = np.nonzero(ok)[0]
                if len(ok) == 0:
                    break
                c = pool[rng.choice(ok)]
            elif loc == "juxtavascular":
                rv = 0.5 * (vessels.r0 + vessels.r1)
                cand = np.nonzero((rv >= 1.0) & (rv <= 4.0))[0]
                if len(cand) == 0:
                    break
                s = rng.choice(cand)
                a, b = vessels.p0[s], vessels.p1[s]
                t = rng.uniform(0.15, 0.85)
                on = a + t * (b - a)
                v = (b - a) / (np.linalg.norm(b - a) + 1e-9)
                u = rng.normal(size=3)
                u -= (u @ v) * v
                u /= np.linalg.norm(u) + 1e-9
                c = on + u * (rv[s] + r * rng.uniform(0.5, 0.95))
            else:  # perifissural
                pt, n, curv, side, cond = an.fissures[int(rng.integers(0, len(an.fissures)))]
                s_f = (pool - pt) @ n + curv * (pool[:, 0] - pt[0]) ** 2
                ok = (np.abs(s_f) < 4) & (pool_d < -(r + 3)) & ((pool[:, 0] > an.p.x_m) == (side > 0))
                if cond is not None:
                    ok &= (pool - cond[0]) @ cond[1] < 0
                ok = np.nonzero(ok)[0]
                if len(ok) == 0:
                    continue
                i = rng.choice(ok)
                c = pool[i] - n * (s_f[i] + rng.uniform(-0.3, 0.3) * r * 0.6)
                normal = n
            cand_nod = build_nodule(rng, len(placed) + 1, spec, c, normal)
            ext = cand_nod.extent
            if not _scan_box_ok(geom, c, ext):
                continue
            d_c = float(an.lung_sdf_points(c[None])[0])
            if loc in ("parenchymal", "perifissural", "juxtavascular") and d_c > -(r + 1.0):
                continue
            if loc == "juxtapleural" and not (-1.05 * r - 0.5 < d_c < -0.4 * r):
                continue
            if any(np.linalg.norm(c - o.center) < ext + o.extent + 3 for o in placed):
                continue
            if len(airways) and float(airways.points_sdf(c[None])[0]) < r * 0.9:
                continue
            if loc == "parenchymal" and spec.diameter_mm <= DIAMETER_RANGE_MM[1] and len(big_vessels):
                dv = float(big_vessels.points_sdf(c[None])[0])  # masses beyond the spec engulf vessels, as real ones do
                if dv < r * 1.1 + 1.0:
                    continue
            nod = cand_nod
            break
        if nod is not None:
            placed.append(nod)
    for i, n in enumerate(placed):
        n.id = i + 1
    return placed


# ---------------------------------------------------------------------------------------------------- ground truth
def nodule_occupancy(nod: Nodule, an: Anatomy, grid: Grid, spacing: tuple[float, float, float]):
    """Exact fraction of each final-grid voxel the nodule (∩ lung) fills, in the nodule's bounding box.

    Returns ``(box, occupancy)`` with ``box`` the ``(z, y, x)`` slices, or None when the nodule misses the grid.
    """
    box = grid.index_box(nod.bbox_lo, nod.bbox_hi, pad=max(spacing))
    if box is None:
        return None
    X, Y, Z = grid.coords(*box)
    shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
    Xf, Yf, Zf = (np.broadcast_to(a, shape).ravel() for a in (X, Y, Z))
    pts = np.stack([Xf, Yf, Zf], axis=1).astype(float)
    d_nod = nod.sdf(Xf, Yf, Zf)
    d_lung = an.lung_sdf_points(pts)
    d = np.maximum(d_nod, d_lung)
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    half_diag = float(np.max(np.linalg.norm(corners @ grid.steps.T, axis=1)))
    margin = 1.3 * half_diag + 0.05
    occ = (d < -margin).astype(np.float32)
    edge = np.nonzero(np.abs(d) <= margin)[0]
    if len(edge):
        sx = sy = 4
        sz = int(np.clip(round(spacing[2] / (min(spacing[0], spacing[1]) / 3)), 3, 12))
        offs = np.stack(np.meshgrid((np.arange(sx) + 0.5) / sx - 0.5, (np.arange(sy) + 0.5) / sy - 0.5,
                                    (np.arange(sz) + 0.5) / sz - 0.5, indexing="ij"), axis=-1).reshape(-1, 3)
        offs_body = offs @ grid.steps.T  # (S, 3)
        lung_needed = bool(np.any(d_lung[edge] > -margin - 1.0))
        chunk = max(1, 400_000 // len(offs))
        for c0 in range(0, len(edge), chunk):
            e = edge[c0 : c0 + chunk]
            sp = (pts[e][:, None, :] + offs_body[None]).reshape(-1, 3)
            ds = nod.sdf(sp[:, 0].astype(np.float32), sp[:, 1].astype(np.float32), sp[:, 2].astype(np.float32))
            if lung_needed:
                ds = np.maximum(ds, an.lung_sdf_points(sp))
            occ[e] = (ds.reshape(len(e), -1) < 0).mean(axis=1)
    return box, occ.reshape(shape)
