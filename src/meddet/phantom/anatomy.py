"""The chest: body outline with its fat layer, table, lungs, mediastinum, heart, great vessels, diaphragm, upper
abdomen, airways and skeleton, as signed-distance functions in the body frame, and their rendering.

Why analytic shapes rather than a template: every case gets its own proportions (size, fat, heart, domes, spine,
ribs) from continuous parameters, so no two cases share a pixel pattern a detector could memorise, and every
structure's distance function also answers point queries (nodule placement, vessel-tree targets) exactly.

HU values follow /work/shared/PHANTOM_SPEC.md (v1). Each layer also carries an SUV-like value for the optional PET
channel and a tissue class (see ``TISSUE``) for tests and multi-class uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddet.phantom.grid import Grid, sub
from meddet.phantom.sdf import BIG, SegmentSet, ellipsoid, ramp, rot_z, rotate, smin, superellipse2d, superellipse_radius

TISSUE = {
    "air": 0,
    "fat": 1,
    "soft_tissue": 2,
    "lung": 3,
    "bone": 4,
    "blood": 5,  # heart, great vessels, pulmonary vessels
    "airway": 6,  # lumen of trachea and bronchi
    "organ": 7,  # liver, spleen, stomach
    "table": 8,
    "nodule": 9,
}


class Params(dict):
    """A dict whose keys read as attributes: the case's anatomical parameters, JSON-serialisable."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc

    def __setattr__(self, key, value):
        self[key] = value


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


# ---------------------------------------------------------------------------------------------------- sampling
def sample_params(rng: np.random.Generator, fov_mm: float) -> Params:
    """All scalar anatomy parameters of one case (mm, HU, SUV)."""
    p = Params()
    # Body outline (half-width A0, half-depth B0), never much wider than the field of view.
    p.A0 = min(_u(rng, 140, 190), 0.5 * fov_mm * 1.03)
    p.B0 = float(np.clip(p.A0 * _u(rng, 0.58, 0.78), 90, 130))
    p.p_body = _u(rng, 2.0, 2.4)
    p.back_round = _u(rng, 1.04, 1.18)  # the back lies flat on the table: a rounder outline cut by a plane
    p.body_wobble = [_u(rng, 0, 0.04), _u(rng, 160, 400), _u(rng, 0, 6.3), _u(rng, 0, 0.05), _u(rng, 160, 400),
                     _u(rng, 0, 6.3)]
    p.body_dx = _u(rng, -3, 3)
    obesity = rng.beta(1.6, 2.2)
    p.skin = _u(rng, 1.5, 2.5)
    p.t_ant = float(np.clip(5 + 25 * obesity + rng.normal(0, 3), 5, 30))
    p.t_lat = float(np.clip(5 + 25 * obesity + rng.normal(0, 3), 5, 30))
    p.t_post = float(np.clip(4 + 14 * obesity + rng.normal(0, 2), 4, 20))
    p.w_ant = _u(rng, 8, 18)
    p.w_lat = _u(rng, 10, 22)
    p.w_post = _u(rng, 16, 30)
    # Keep a plausible thoracic cavity: shrink the wall layers where a thin patient has thick layers.
    ty = p.t_ant + p.t_post + p.w_ant + p.w_post
    room = 2 * p.B0 - 2 * p.skin - 2 * 0.55 * p.B0
    if ty > room:
        f = room / ty
        p.t_ant, p.t_post = max(4.0, p.t_ant * f), max(3.0, p.t_post * f)
        p.w_ant, p.w_post = max(6.0, p.w_ant * f), max(14.0, p.w_post * f)
    tx = p.t_lat + p.w_lat
    roomx = p.A0 - p.skin - 0.68 * p.A0
    if tx > roomx:
        f = roomx / tx
        p.t_lat, p.w_lat = max(5.0, p.t_lat * f), max(8.0, p.w_lat * f)
    # Inner contour of the subcutaneous fat, and the thoracic cavity inside the chest wall.
    front_f = -p.B0 + p.skin + p.t_ant
    back_f = p.B0 - p.skin - p.t_post
    p.Af = p.A0 - p.skin - p.t_lat
    p.Bf = (back_f - front_f) / 2
    p.yf_c = (back_f + front_f) / 2
    p.a0 = p.Af - p.w_lat
    p.y_front = front_f + p.w_ant
    p.y_back = back_f - p.w_post
    p.b0 = (p.y_back - p.y_front) / 2
    p.y_c = (p.y_back + p.y_front) / 2
    p.p_cav = _u(rng, 2.1, 2.9)
    p.cav_widen = _u(rng, 0.04, 0.14)
    # Vertical layout of the lungs.
    p.H = _u(rng, 200, 270)
    p.z_apex, p.z_rec = p.H / 2, -p.H / 2
    p.z_dR = p.z_rec + _u(rng, 0.28, 0.42) * p.H
    p.z_dL = p.z_dR - _u(rng, 5, 25)
    p.dome_D = [(p.z_dR - p.z_rec) / 1.69 * _u(rng, 0.75, 1.2), (p.z_dL - p.z_rec) / 1.69 * _u(rng, 0.75, 1.2)]
    p.dome_xy = [-_u(rng, 0.35, 0.5) * p.a0, _u(rng, 0.35, 0.5) * p.a0]
    p.dome_y = p.y_c - _u(rng, 0.0, 0.2) * p.b0
    p.dome_ax, p.dome_ay = _u(rng, 0.55, 0.75) * p.a0, _u(rng, 0.8, 1.0) * p.b0
    p.t_dia = _u(rng, 3, 6)
    p.z_t = p.z_apex - _u(rng, 45, 70)
    p.cap_x = _u(rng, 0.45, 0.6) * p.a0
    p.cap_y = p.y_c + _u(rng, 0.0, 0.25) * p.b0
    p.cap_cx, p.cap_cy = _u(rng, 0.42, 0.55) * p.a0, _u(rng, 0.65, 0.85) * p.b0
    # Mediastinum.
    p.x_m = _u(rng, -5, 8)
    p.w_band = _u(rng, 14, 26)
    p.gap = _u(rng, 1.5, 3.0)
    p.k_med = _u(rng, 4, 10)
    p.fat_med = _u(rng, -115, -85)
    # Spine.
    p.r_vbx, p.r_vby = _u(rng, 17, 23), _u(rng, 14, 19)
    p.y_vb = p.y_back - _u(rng, 0.9, 1.5) * p.r_vby
    p.hv, p.hd, p.v_phase = _u(rng, 19, 24), _u(rng, 4, 7), _u(rng, 0, 30)
    p.r_cn, p.t_ring = _u(rng, 7, 9), _u(rng, 4, 6)
    p.y_cn = p.y_vb + p.r_vby + p.r_cn + _u(rng, 1, 3)
    p.L_sp = float(np.clip((p.B0 - p.skin - p.t_post - 6) - (p.y_cn + p.r_cn), 8, 28))
    p.r_sp = _u(rng, 3, 5)
    p.L_tp, p.r_tp = _u(rng, 22, 32), _u(rng, 3.5, 5.5)
    # Heart.
    p.heart_c = [p.x_m + _u(rng, 12, 30), p.y_c - _u(rng, 0.1, 0.3) * p.b0, p.z_dL + _u(rng, 35, 55)]
    p.heart_ax = [_u(rng, 45, 60), _u(rng, 34, 46), _u(rng, 40, 52)]
    p.heart_ax[1] = min(p.heart_ax[1], 0.75 * p.b0)
    p.heart_rot = _u(rng, np.deg2rad(20), np.deg2rad(45))
    p.peri_fat = _u(rng, 2, 6)
    p.heart_wall = _u(rng, 8, 12)
    p.z_car = p.z_apex - _u(rng, 55, 80)
    p.z_arch = p.z_car + _u(rng, 15, 30)
    # Sternum.
    p.st_hx, p.st_hy = _u(rng, 13, 20), _u(rng, 5, 8)
    p.st_y = p.y_front - p.st_hy - _u(rng, 0.5, 3)
    p.st_top, p.st_bot = p.z_apex - _u(rng, 20, 40), p.z_dR - _u(rng, 0, 20)
    # Tissue values (HU).
    p.hu_muscle = _u(rng, 30, 60)
    p.hu_skin = float(np.clip(p.hu_muscle + _u(rng, -5, 10), 30, 60))
    p.hu_fat = _u(rng, -120, -80)
    p.hu_lung = _u(rng, -900, -800)
    p.lung_grad = _u(rng, 0, 50)
    p.lung_tex = _u(rng, 8, 30)
    p.tex = [
        [(_u(rng, 25, 90), _u(rng, 0, 6.3)) for _ in range(2)] for _ in range(12)
    ]  # 4 terms × (fx, fy, fz), each two cosines (wavelength mm, phase)
    p.hu_blood = _u(rng, 30, 50)
    p.hu_cancellous = _u(rng, 200, 400)
    p.hu_cortical = _u(rng, 700, 1200)
    p.t_cortex = _u(rng, 1.0, 2.0)
    p.hu_disc = _u(rng, 70, 110)
    p.hu_liver = _u(rng, 45, 70) if rng.random() > 0.15 else _u(rng, 5, 40)
    p.hu_spleen = _u(rng, 40, 55)
    p.hu_abd = _u(rng, 30, 45)
    p.hu_fissure = _u(rng, -350, -100)
    p.t_fissure = _u(rng, 0.3, 0.8)
    # PET (SUV-like).
    p.suv_muscle, p.suv_fat, p.suv_lung = _u(rng, 0.6, 1.0), _u(rng, 0.2, 0.4), _u(rng, 0.3, 0.6)
    p.suv_blood, p.suv_myo = _u(rng, 0.8, 1.6), _u(rng, 2.0, 8.0)
    p.suv_liver, p.suv_spleen, p.suv_marrow, p.suv_bone = (
        _u(rng, 1.5, 2.5), _u(rng, 1.3, 2.2), _u(rng, 1.0, 2.0), _u(rng, 0.3, 0.6))
    p.suv_stomach = _u(rng, 1.0, 3.0)
    # Table and mattress, breasts.
    p.table = bool(rng.random() < 0.75)
    p.table_hu = _u(rng, 100, 400)
    p.table_t = _u(rng, 4, 10)
    p.table_k = _u(rng, 1 / 5000, 1 / 1500)
    p.table_w = _u(rng, 200, 260)
    p.pad = _u(rng, 0, 25) if rng.random() < 0.4 else 0.0
    p.pad_hu = _u(rng, -950, -750)
    p.breasts = bool(rng.random() < 0.35)
    p.breast_ax = [_u(rng, 40, 65), _u(rng, 20, 45), _u(rng, 40, 60)]
    p.breast_x = _u(rng, 0.35, 0.55) * p.A0
    p.breast_z = p.heart_c[2] + _u(rng, 0, 40)
    p.gland_hu = _u(rng, -60, 20)
    # Abdomen below the domes.
    p.liver_cut = p.x_m + _u(rng, 0, 35)
    p.spleen_c = [_u(rng, 0.55, 0.75) * p.a0, p.y_c + _u(rng, 0.3, 0.6) * p.b0, p.z_dL - _u(rng, 30, 55)]
    p.spleen_ax = [_u(rng, 20, 35), _u(rng, 35, 55), _u(rng, 40, 60)]
    p.stomach_c = [_u(rng, 0.25, 0.45) * p.a0, p.y_c - _u(rng, 0.1, 0.4) * p.b0, p.z_dL - _u(rng, 25, 50)]
    p.stomach_ax = [_u(rng, 35, 55), _u(rng, 30, 45), _u(rng, 40, 60)]
    p.stomach_gas = _u(rng, 0.0, 0.7)
    p.stomach_hu = _u(rng, 5, 30)
    # Chest wall muscles (the rest of the wall inside the subcutaneous fat is intermuscular fat).
    p.hu_fat_im = p.hu_fat + _u(rng, 0, 20)
    p.w_ic = _u(rng, 6, 12)
    p.pec = [_u(rng, 0.3, 0.5) * p.a0, _u(rng, 6, 18), _u(rng, 0.3, 0.45) * p.a0, p.z_apex - _u(rng, 60, 95),
             _u(rng, 80, 110)]  # half-width, half-thickness, centre |x|, centre z, half-height
    p.psp = [_u(rng, 20, 30), _u(rng, 20, 32)]  # paraspinal muscles: half-width, half-depth
    p.t_lat_m = _u(rng, 5, 14)  # latissimus / back muscle layer under the subcutaneous fat
    return p


# ---------------------------------------------------------------------------------------------------- the model
@dataclass
class Anatomy:
    """One case's chest: parameters plus the tube sets (great vessels, airways, bones) built from them."""

    p: Params
    mediastinum: SegmentSet  # great vessels, oesophagus, lymph nodes: soft tissue / blood tubes
    central_airways: SegmentSet  # trachea and main bronchi (wall = outer radius, lumen = inner)
    bones: SegmentSet  # ribs (cortex + marrow), costal cartilage, clavicles, scapulae
    calcs: SegmentSet  # coronary calcifications
    hila: dict = field(default_factory=dict)  # roots of the pulmonary trees: artery/vein/bronchus per side
    fissures: list = field(default_factory=list)  # (point, normal, curvature, side, condition)
    bronchi: SegmentSet | None = None  # intrapulmonary bronchial tree
    vessels: SegmentSet | None = None  # pulmonary vessel trees

    # ------------------------------------------------------------------ z-dependent outlines
    def body_axes(self, Z):
        p = self.p
        ea, la, pa, eb, lb, pb = p.body_wobble
        A = p.A0 * (1 + ea * np.sin(Z * (2 * np.pi / la) + pa))
        B = p.B0 * (1 + eb * np.sin(Z * (2 * np.pi / lb) + pb))
        # narrower towards the neck above the lung apices
        neck = np.clip((Z - p.z_apex - 10) / 60.0, 0, 1)
        return A * (1 - 0.3 * neck), B * (1 - 0.15 * neck)

    def body_sdf(self, X, Y, Z):
        """Superellipse outline: the front follows the chest's shape along z, the back is flat and constant."""
        p = self.p
        A, B = self.body_axes(Z)
        B_eff = np.where(Y < 0, B, p.B0 * p.back_round)
        return np.maximum(superellipse2d(X - p.body_dx, Y, A, B_eff, p.p_body), Y - p.B0)

    def fat_inner_sdf(self, X, Y, Z):
        p = self.p
        A, B = self.body_axes(Z)
        shrink_a, shrink_b = p.A0 - p.Af, p.B0 - p.Bf
        B_eff = np.where(Y < p.yf_c, B - shrink_b, p.B0 * p.back_round - shrink_b)
        d = superellipse2d(X - p.body_dx, Y - p.yf_c, A - shrink_a, B_eff, p.p_body)
        return np.maximum(d, Y - (p.B0 - p.skin - p.t_post))

    def cavity_axes(self, Z):
        p = self.p
        zeta = np.clip(-Z / (p.H / 2), -1, 1.3)
        return p.a0 * (1 + p.cav_widen * zeta), p.b0 * (1 + 0.4 * p.cav_widen * zeta)

    def cavity_sdf(self, X, Y, Z):
        a, b = self.cavity_axes(Z)
        return superellipse2d(X, Y - self.p.y_c, a, b, self.p.p_cav)

    def dome_height(self, X, Y):
        p = self.p
        left = X > p.x_m
        xs = np.where(left, p.dome_xy[1], p.dome_xy[0])
        zp = np.where(left, p.z_dL, p.z_dR)
        D = np.where(left, p.dome_D[1], p.dome_D[0])
        rho2 = ((X - xs) / p.dome_ax) ** 2 + ((Y - p.dome_y) / p.dome_ay) ** 2
        zd = np.maximum(zp - D * rho2, p.z_rec)
        # slope, to turn the height difference into a distance
        gx = 2 * D * (X - xs) / p.dome_ax**2
        gy = 2 * D * (Y - p.dome_y) / p.dome_ay**2
        return zd, 1.0 / np.sqrt(1 + gx * gx + gy * gy)

    def dome_sdf(self, X, Y, Z):
        """Positive below the diaphragm surface (outside the lungs)."""
        zd, norm = self.dome_height(X, Y)
        return (zd - Z) * norm

    def cap_sdf(self, X, Y, Z):
        """The rounded lung apices (one ellipsoidal cap per lung, inactive well below the apex)."""
        p = self.p
        xs = np.where(X > p.x_m, p.cap_x, -p.cap_x)
        dz = Z - p.z_t
        below = np.maximum(-dz, 0)
        grow = 1 + below * (3.0 / (p.z_apex - p.z_t))
        cz = p.z_apex - p.z_t
        k = np.sqrt(((X - xs) / (p.cap_cx * grow)) ** 2 + ((Y - p.cap_y) / (p.cap_cy * grow)) ** 2
                    + (np.maximum(dz, 0) / cz) ** 2)
        return (k - 1) * min(p.cap_cx, p.cap_cy, cz)

    def band_sdf(self, X, Y, Z):
        p = self.p
        qx = np.abs(X - p.x_m) - p.w_band / 2
        y0, y1 = p.y_front - 20, p.y_vb
        qy = np.abs(Y - (y0 + y1) / 2) - (y1 - y0) / 2
        return np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)

    def spine_scale(self, Z):
        return 1.0 - 0.12 * np.clip(Z / (self.p.H / 2), -1.5, 1.5)

    def spine_body_sdf2(self, X, Y, Z):
        p = self.p
        s = self.spine_scale(Z)
        return superellipse2d(X, Y - p.y_vb, p.r_vbx * s, p.r_vby * s, 2.0)

    def heart_local(self, X, Y, Z):
        p = self.p
        c = p.heart_c
        qx, qy, qz = rotate(X - c[0], Y - c[1], Z - c[2], rot_z(p.heart_rot))
        return qx, qy, qz

    def heart_sdf(self, X, Y, Z, shrink: float = 0.0):
        qx, qy, qz = self.heart_local(X, Y, Z)
        ax = [a - shrink for a in self.p.heart_ax]
        return ellipsoid(qx, qy, qz, ax)

    def mediastinum_sdf(self, X, Y, Z, d_segs, d_heart):
        """Union of everything between the lungs (dilated by the pleural gap)."""
        p = self.p
        d = smin(self.band_sdf(X, Y, Z), d_heart - p.peri_fat, p.k_med)
        d = smin(d, self.spine_body_sdf2(X, Y, Z) - 4.0, p.k_med)
        d = smin(d, d_segs, p.k_med)
        return d - p.gap

    def lung_sdf(self, X, Y, Z, d_segs, d_heart):
        d = np.maximum(self.cavity_sdf(X, Y, Z), -self.mediastinum_sdf(X, Y, Z, d_segs, d_heart))
        d = np.maximum(d, self.dome_sdf(X, Y, Z))
        d = np.maximum(d, self.cap_sdf(X, Y, Z))
        return d

    def exclusion_segments(self) -> SegmentSet:
        if not hasattr(self, "_excl"):
            self._excl = SegmentSet.concat([self.mediastinum, self.central_airways])
        return self._excl

    def lung_sdf_points(self, pts: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) of body-frame points (N, 3) to the lungs."""
        pts = np.asarray(pts, dtype=float).reshape(-1, 3)
        X, Y, Z = pts[:, 0], pts[:, 1], pts[:, 2]
        d_seg = self.exclusion_segments().points_sdf(pts)
        return self.lung_sdf(X, Y, Z, d_seg, self.heart_sdf(X, Y, Z))

    def lung_side(self, pts: np.ndarray) -> np.ndarray:
        """+1 for the left lung, -1 for the right lung."""
        return np.where(np.asarray(pts)[:, 0] > self.p.x_m, 1, -1)

    def lung_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        a = p.a0 * (1 + p.cav_widen * 1.0)
        return (np.array([-a - 2, p.y_c - p.b0 * 1.1, p.z_rec - 2]),
                np.array([a + 2, p.y_c + p.b0 * 1.1, p.z_apex + 2]))

    def sample_lung_points(self, rng: np.random.Generator, n: int, max_depth: float = 0.0,
                           z_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` uniform points inside the lungs at least ``max_depth`` mm from the pleura (rejection sampling),
        with their signed distances to the lung surface."""
        lo, hi = self.lung_bounds()
        if z_range is not None:
            lo[2], hi[2] = max(lo[2], z_range[0]), min(hi[2], z_range[1])
            if hi[2] <= lo[2]:
                return np.zeros((0, 3)), np.zeros(0)
        out, dist = [], []
        got = 0
        for _ in range(40):
            cand = rng.uniform(lo, hi, size=(max(int(2.5 * (n - got)), 1000), 3))
            d = self.lung_sdf_points(cand)
            ok = d < -max_depth
            out.append(cand[ok])
            dist.append(d[ok])
            got += int(ok.sum())
            if got >= n:
                break
        pts = np.concatenate(out)
        return pts[:n], np.concatenate(dist)[:n]

    # ------------------------------------------------------------------ texture
    def lung_texture(self, X, Y, Z):
        p = self.p
        tex = None
        for t in range(4):
            f = []
            for axis, C in enumerate((X, Y, Z)):
                (w1, ph1), (w2, ph2) = p.tex[3 * t + axis]
                f.append(0.5 * (np.cos(C * (2 * np.pi / w1) + ph1) + np.cos(C * (2 * np.pi / w2) + ph2)))
            term = (f[0] * f[1]) * f[2]
            tex = term if tex is None else tex + term
        return tex * np.float32(p.lung_tex / 1.0)

    # ------------------------------------------------------------------ rendering
    def render(self, grid: Grid, zs: slice, aa: float, want_suv: bool, nodules=()) -> dict:
        """Noiseless HU (and SUV, tissue class, lung occupancy) on grid rows ``zs``; ``aa`` = ramp width in mm."""
        return _render(self, grid, zs, aa, want_suv, nodules)


class Painter:
    """Back-to-front compositing of partial-volume layers into HU, SUV and a dominant-tissue class map."""

    def __init__(self, shape, want_suv: bool):
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.suv = np.zeros(shape, dtype=np.float32) if want_suv else None
        self.cls = np.zeros(shape, dtype=np.uint8)

    def paint(self, occ, hu, suv=0.0, cls: int | None = None, box=(slice(None), slice(None), slice(None))):
        h = self.hu[box]
        occ = np.broadcast_to(occ, h.shape) if np.ndim(occ) and occ.shape != h.shape else occ
        if occ.size > 100_000 and h.flags.c_contiguous and occ.flags.c_contiguous:
            idx = np.flatnonzero(occ)
            if len(idx) < occ.size // 24:  # sparse layer (tubes): touch only the covered voxels
                o = occ.ravel()[idx]
                hf = h.reshape(-1)
                hv = hf[idx]
                hval = np.float32(hu) if np.ndim(hu) == 0 else np.ascontiguousarray(np.broadcast_to(hu, h.shape)).reshape(-1)[idx]
                hf[idx] = hv + o * (hval - hv)
                if self.suv is not None:
                    sf = self.suv[box].reshape(-1)
                    sv = sf[idx]
                    sval = np.float32(suv) if np.ndim(suv) == 0 else np.ascontiguousarray(np.broadcast_to(suv, h.shape)).reshape(-1)[idx]
                    sf[idx] = sv + o * (sval - sv)
                if cls is not None:
                    self.cls[box].reshape(-1)[idx[o >= 0.5]] = cls
                return
        h += occ * (np.float32(hu) - h) if np.ndim(hu) == 0 else occ * (hu - h)
        if self.suv is not None:
            s = self.suv[box]
            s += occ * (np.float32(suv) - s) if np.ndim(suv) == 0 else occ * (suv - s)
        if cls is not None:
            c = self.cls[box]
            c[occ >= 0.5] = cls


def _local(grid: Grid, zs: slice, coords, lo, hi, pad):
    """Block-relative box and coordinates of a body-frame bounding box (None when it misses the block)."""
    box = grid.index_box(lo, hi, pad)
    if box is None:
        return None
    z0, z1, _ = zs.indices(grid.shape[0])
    bz0, bz1 = max(box[0].start, z0), min(box[0].stop, z1)
    if bz1 <= bz0:
        return None
    rel = (slice(bz0 - z0, bz1 - z0), box[1], box[2])
    X, Y, Z = (sub(c, *rel) for c in coords)
    return rel, X, Y, Z


def _clip_to(rel, outer, coords):
    """Intersect a block-relative box with ``outer``; returns (box, X, Y, Z) or None."""
    box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(rel, outer))
    if any(b.stop <= b.start for b in box):
        return None
    return (box, *(sub(c, *box) for c in coords))


def _render(an: Anatomy, grid: Grid, zs: slice, aa: float, want_suv: bool, nodules) -> dict:
    p = an.p
    coords = grid.coords(zs, slice(None), slice(None))
    X, Y, Z = coords
    z0, z1, _ = zs.indices(grid.shape[0])
    shape = (z1 - z0, grid.shape[1], grid.shape[2])
    P = Painter(shape, want_suv)
    R = lambda d: ramp(d, aa)  # noqa: E731
    T = TISSUE

    # Table and mattress (below the body's back).
    Yb = p.B0 + 0.3
    if p.table or p.pad > 0:
        tl = _local(grid, zs, coords, np.array([-p.table_w - 5, Yb - 5, -1e4]),
                    np.array([p.table_w + 5, Yb + p.pad + p.table_t + p.table_k * p.table_w**2 + 5, 1e4]), 2)
        if tl is not None:
            rel, x, y, z = tl
            if p.table:
                top = Yb + p.pad + p.table_k * x * x
                d_tab = np.maximum(np.maximum(top - y, y - (top + p.table_t)), np.abs(x) - p.table_w)
                P.paint(R(d_tab), p.table_hu, 0.0, T["table"], rel)
            if p.pad > 0:
                d_pad = np.maximum(np.maximum(Yb - 3 - y, y - (Yb + p.pad)), np.abs(x) - p.table_w * 0.8)
                P.paint(R(d_pad), p.pad_hu, 0.0, T["air"], rel)

    # Body (skin and muscle), breasts, subcutaneous fat.
    d_body = an.body_sdf(X, Y, Z)
    breast_boxes = []
    if p.breasts:
        for s in (-1, 1):
            c = np.array([s * p.breast_x + p.body_dx, -p.B0 * 0.8, p.breast_z])
            ax = np.array(p.breast_ax)
            loc = _local(grid, zs, coords, c - ax, c + ax, 20)
            if loc is None:
                continue
            rel, x, y, z = loc
            d_b = ellipsoid(x - c[0], y - c[1], z - c[2], ax)
            d_body[rel] = smin(d_body[rel], d_b, 15.0)
            breast_boxes.append((rel, x, y, z, c, ax))
    P.paint(R(d_body), p.hu_muscle, p.suv_muscle, T["soft_tissue"])
    d_fat_in = an.fat_inner_sdf(X, Y, Z)
    fat_occ = R(np.maximum(d_body + p.skin, -d_fat_in))
    P.paint(fat_occ, p.hu_fat, p.suv_fat, T["fat"])
    # inside the subcutaneous fat: intermuscular fat, then the muscles of the chest wall
    P.paint(R(d_fat_in), p.hu_fat_im, p.suv_fat, T["fat"])
    d_lat = np.maximum(np.maximum(d_fat_in, -(d_fat_in + p.t_lat_m)), (p.y_c - 0.2 * p.b0) - Y)
    P.paint(R(d_lat), p.hu_muscle, p.suv_muscle, T["soft_tissue"])
    del d_lat
    pec_hw, pec_ht, pec_x, pec_z, pec_hz = p.pec
    for s in (-1, 1):
        c = np.array([s * pec_x, p.y_front - pec_ht * 0.6, pec_z])
        ax = np.array([pec_hw, pec_ht, pec_hz])
        loc = _local(grid, zs, coords, c - ax, c + ax, 2)
        if loc is not None:
            rel, x, y, z = loc
            d_m = np.maximum(ellipsoid(x - c[0], y - c[1], z - c[2], ax), d_fat_in[rel])
            P.paint(R(d_m), p.hu_muscle, p.suv_muscle, T["soft_tissue"], rel)
        psp_w, psp_d = p.psp
        c = np.array([s * (psp_w + p.r_sp + 1), p.y_back + psp_d * 0.45, 0.0])
        loc = _local(grid, zs, coords, np.array([c[0] - psp_w, c[1] - psp_d, -1e4]),
                     np.array([c[0] + psp_w, c[1] + psp_d, 1e4]), 2)
        if loc is not None:
            rel, x, y, z = loc
            d_m = np.maximum(superellipse2d(x - c[0], y - c[1], psp_w, psp_d, 2.2), d_fat_in[rel])
            P.paint(R(d_m), p.hu_muscle, p.suv_muscle, T["soft_tissue"], rel)
    for rel, x, y, z, c, ax in breast_boxes:
        d_g = ellipsoid(x - c[0], y - (c[1] + 5), z - c[2], ax * 0.55)
        P.paint(R(np.maximum(d_g, d_body[rel] + 3)), p.gland_hu, p.suv_muscle, T["soft_tissue"], rel)
    del fat_occ, d_body

    # Everything inside the thoracic cavity is computed in its bounding box only.
    lung_occ = np.zeros(shape, dtype=np.float32)
    d_lung = np.full(shape, BIG, dtype=np.float32)
    amax = p.a0 * (1 + p.cav_widen * 1.3) + 3
    bmax = p.b0 * (1 + 0.4 * p.cav_widen * 1.3) + 3
    cb = _local(grid, zs, coords, np.array([-amax, p.y_c - bmax, -1e4]), np.array([amax, p.y_c + bmax, 1e4]),
                2 * aa + p.w_ic + 4)
    vessel_d = None
    if cb is not None:
        rc, Xc, Yc, Zc = cb
        cshape = lung_occ[rc].shape
        d_cav = an.cavity_sdf(Xc, Yc, Zc)
        # the muscle band around the rib cage (intercostal and serratus muscles)
        P.paint(R(np.maximum(d_cav - p.w_ic, d_fat_in[rc])), p.hu_muscle, p.suv_muscle, T["soft_tissue"], rc)
        # mediastinal fat (muscle above the lung apices), then the lungs
        P.paint(R(np.maximum(d_cav, Zc - (p.z_apex + 10))), p.fat_med, p.suv_fat, T["fat"], rc)
        excl = an.exclusion_segments()
        d_seg = excl.render(grid, zs, coords, pad=2 * p.k_med + 10)[0][rc]
        d_heart = np.full(cshape, BIG, dtype=np.float32)
        hc, hax = np.array(p.heart_c), max(p.heart_ax)
        hloc = _local(grid, zs, coords, hc - hax, hc + hax, 2 * p.k_med + 12)
        if hloc is not None:
            hloc = _clip_to(hloc[0], rc, coords)
        if hloc is not None:
            rel, x, y, z = hloc
            hrel = tuple(slice(r.start - c.start, r.stop - c.start) for r, c in zip(rel, rc))
            d_heart[hrel] = an.heart_sdf(x, y, z)
        d_l = np.maximum(d_cav, -an.mediastinum_sdf(Xc, Yc, Zc, d_seg, d_heart))
        del d_seg
        d_dome = an.dome_sdf(Xc, Yc, Zc)
        np.maximum(d_l, d_dome, out=d_l)
        np.maximum(d_l, an.cap_sdf(Xc, Yc, Zc), out=d_l)
        d_lung[rc] = d_l
        l_occ = R(d_l)
        lung_occ[rc] = l_occ
        lung_hu = (np.float32(p.hu_lung) + np.float32(p.lung_grad / p.b0) * (Yc - np.float32(p.y_c))
                   + an.lung_texture(Xc, Yc, Zc))
        P.paint(l_occ, lung_hu, p.suv_lung, T["lung"], rc)
        del lung_hu

        # fissures: thin sheets inside the lungs
        for (pt, nrm, curv, side, cond) in an.fissures:
            s_f = (Xc - pt[0]) * nrm[0] + (Yc - pt[1]) * nrm[1] + (Zc - pt[2]) * nrm[2] + curv * (Xc - pt[0]) ** 2
            occ = R(np.abs(s_f) - p.t_fissure / 2)
            if cond is not None:
                pt2, n2 = cond
                s2 = (Xc - pt2[0]) * n2[0] + (Yc - pt2[1]) * n2[1] + (Zc - pt2[2]) * n2[2]
                occ *= R(-s2)
            side_mask = (Xc > p.x_m) if side > 0 else (Xc <= p.x_m)
            occ *= l_occ
            occ *= R(d_l + 8)
            occ *= side_mask
            P.paint(occ, p.hu_fissure, p.suv_lung, None, rc)
            del s_f, occ

        # pulmonary vessels and the bronchial tree, confined to the lungs (+3 mm towards the hila)
        clip = R(d_l - 3.0)
        if an.vessels is not None and len(an.vessels):
            d_v, v_v, s_v = an.vessels.render(grid, zs, coords, pad=aa, want_suv=want_suv)
            occ = R(d_v[rc])
            occ *= clip
            P.paint(occ, v_v[rc], s_v[rc] if s_v is not None else 0.0, T["blood"], rc)
            vessel_d = d_v
            del v_v, s_v, occ
        if an.bronchi is not None and len(an.bronchi):
            d_w, v_w, _ = an.bronchi.render(grid, zs, coords, pad=aa)
            P.paint(R(d_w[rc]) * clip, v_w[rc], p.suv_muscle, T["soft_tissue"], rc)
            d_w, v_w, _ = an.bronchi.render(grid, zs, coords, pad=aa, inner=True)
            P.paint(R(d_w[rc]) * clip, v_w[rc], 0.0, T["airway"], rc)
            del d_w, v_w
        del clip

        # heart: myocardium and blood look alike on CT; the PET channel sees the wall
        if hloc is not None:
            rel, x, y, z = hloc
            P.paint(R(d_heart[hrel]), p.hu_blood + 4, p.suv_myo, T["blood"], rel)
            P.paint(R(an.heart_sdf(x, y, z, shrink=p.heart_wall)), p.hu_blood, p.suv_blood, T["blood"], rel)
        del d_heart

        # upper abdomen under the diaphragm: liver, spleen, stomach
        d_abd = np.maximum(d_cav, -(d_dome - p.t_dia))
        del d_dome, d_cav
        abd_occ = R(d_abd)
        if float(abd_occ.max(initial=0)) > 0:
            P.paint(abd_occ, p.hu_abd, p.suv_muscle, T["organ"], rc)
            x_cut = p.liver_cut - 0.3 * (Yc - p.y_c)
            P.paint(abd_occ * R(Xc - x_cut), p.hu_liver, p.suv_liver, T["organ"], rc)
            for c, ax, hu, suv, is_stomach in ((p.spleen_c, p.spleen_ax, p.hu_spleen, p.suv_spleen, False),
                                               (p.stomach_c, p.stomach_ax, p.hu_abd + 5, p.suv_stomach, True)):
                c, ax = np.array(c), np.array(ax)
                loc = _local(grid, zs, coords, c - ax, c + ax, 3)
                if loc is None:
                    continue
                loc = _clip_to(loc[0], rc, coords)
                if loc is None:
                    continue
                rel, x, y, z = loc
                orel = tuple(slice(r.start - cc.start, r.stop - cc.start) for r, cc in zip(rel, rc))
                d_o = np.maximum(ellipsoid(x - c[0], y - c[1], z - c[2], ax), d_abd[orel])
                P.paint(R(d_o), hu, suv, T["organ"], rel)
                if is_stomach:  # fluid content, gas floating anteriorly (supine)
                    d_in = d_o + 4.0
                    P.paint(R(d_in), p.stomach_hu, 0.3, T["organ"], rel)
                    level = c[1] - ax[1] + 2 * ax[1] * p.stomach_gas
                    P.paint(R(np.maximum(d_in, y - level)), -1000.0, 0.0, T["air"], rel)
        del d_abd, abd_occ
    del d_fat_in

    # Great vessels, oesophagus, lymph nodes; trachea and main bronchi; coronary calcifications.
    for segs, wall_suv, inner_cls in ((an.mediastinum, None, T["airway"]), (an.central_airways, p.suv_muscle, T["airway"])):
        if not len(segs):
            continue
        d_m, v_m, s_m = segs.render(grid, zs, coords, pad=aa, want_suv=want_suv and wall_suv is None)
        suv_m = s_m if s_m is not None else (wall_suv if wall_suv is not None else 0.0)
        P.paint(R(d_m), v_m, suv_m, T["blood"] if wall_suv is None else T["soft_tissue"])
        d_m, v_m, _ = segs.render(grid, zs, coords, pad=aa, inner=True)
        P.paint(R(d_m), v_m, 0.0, inner_cls)
        del d_m, v_m, s_m
    if len(an.calcs):
        d_c, v_c, _ = an.calcs.render(grid, zs, coords, pad=aa)
        P.paint(R(d_c), v_c, p.suv_bone, T["bone"])

    # Spine: vertebral bodies (cortex, cancellous bone, discs) and posterior elements.
    sloc = _local(grid, zs, coords, np.array([-p.r_vbx - p.L_tp - 10, p.y_vb - p.r_vby * 1.3, -1e4]),
                  np.array([p.r_vbx + p.L_tp + 10, p.y_cn + p.r_cn + p.L_sp + 8, 1e4]), 2)
    if sloc is not None:
        rel, x, y, z = sloc
        d2 = an.spine_body_sdf2(x, y, z)
        period = p.hv + p.hd
        ph = np.mod(z - p.v_phase, period)
        d_z = np.abs(ph - p.hv / 2) - p.hv / 2  # inside a vertebral body when < 0
        d_vb = np.maximum(d2, d_z)
        P.paint(R(d2), p.hu_disc, p.suv_muscle, T["soft_tissue"], rel)
        P.paint(R(d_vb), p.hu_cortical, p.suv_bone, T["bone"], rel)
        P.paint(R(d_vb + p.t_cortex), p.hu_cancellous, p.suv_marrow, T["bone"], rel)
        s = an.spine_scale(z)
        rcn = np.sqrt(x * x + (y - p.y_cn) ** 2)
        d_ring = np.abs(rcn - (p.r_cn * s + p.t_ring / 2)) - p.t_ring / 2
        d_ring = np.maximum(d_ring, -(y - (p.y_vb + p.r_vby * 0.6)))
        qy = np.clip(y - (p.y_cn + p.r_cn), 0, p.L_sp)
        d_sp = np.sqrt(x * x + (y - (p.y_cn + p.r_cn) - qy) ** 2) - p.r_sp
        qx = np.clip(np.abs(x), 0, p.L_tp)
        d_tp = np.sqrt((np.abs(x) - qx) ** 2 + (y - p.y_cn + 0.15 * qx) ** 2) - p.r_tp
        d_pe = np.minimum(np.minimum(d_ring, d_sp), d_tp)
        gapz = np.abs(np.mod(z - p.v_phase - 0.35 * period, period) - period / 2) - period * 0.38
        d_pe = np.maximum(d_pe, gapz)
        P.paint(R(d_pe), p.hu_cortical * 0.8, p.suv_bone, T["bone"], rel)
        P.paint(R(d_pe + p.t_cortex + 0.3), p.hu_cancellous, p.suv_marrow, T["bone"], rel)

    # Sternum.
    stloc = _local(grid, zs, coords, np.array([-p.st_hx, p.st_y - p.st_hy, p.st_bot]),
                   np.array([p.st_hx, p.st_y + p.st_hy, p.st_top]), 2)
    if stloc is not None:
        rel, x, y, z = stloc
        d_st = np.maximum(superellipse2d(x - p.x_m * 0.3, y - p.st_y, p.st_hx, p.st_hy, 2.0),
                          np.abs(z - (p.st_top + p.st_bot) / 2) - (p.st_top - p.st_bot) / 2)
        P.paint(R(d_st), p.hu_cortical, p.suv_bone, T["bone"], rel)
        P.paint(R(d_st + 1.2), p.hu_cancellous, p.suv_marrow, T["bone"], rel)

    # Ribs, costal cartilage, clavicles, scapulae.
    if len(an.bones):
        d_b, v_b, _ = an.bones.render(grid, zs, coords, pad=aa)
        P.paint(R(d_b), v_b, p.suv_bone, T["bone"])
        d_b, v_b, _ = an.bones.render(grid, zs, coords, pad=aa, inner=True)
        P.paint(R(d_b), v_b, p.suv_marrow, T["bone"])
        del d_b, v_b

    # Nodules, last: they sit in the lung, over vessels they touch (ground glass lets vessels show through).
    for nod in nodules:
        loc = _local(grid, zs, coords, nod.bbox_lo, nod.bbox_hi, aa)
        if loc is None:
            continue
        rel, x, y, z = loc
        d_n = np.maximum(nod.sdf(x, y, z), d_lung[rel])
        occ = R(d_n)
        if not np.any(occ > 0):
            continue
        hu_n, suv_n = nod.values(x, y, z, d_n)
        before = P.hu[rel].copy() if nod.kind in ("ground-glass", "part-solid") else None
        P.paint(occ, hu_n, suv_n, T["nodule"], rel)
        if before is not None and vessel_d is not None:
            v_occ = R(vessel_d[rel])
            np.maximum(P.hu[rel], before * v_occ + P.hu[rel] * (1 - v_occ), out=P.hu[rel])

    return {"hu": P.hu, "suv": P.suv, "cls": P.cls, "lung_occ": lung_occ}


# ---------------------------------------------------------------------------------------------------- structures
def _chain(points, radii, value, suv=None, inner_offset=None, inner_value=None) -> SegmentSet:
    """A polyline of tubes through ``points`` (M, 3) with radii (M,) at the points."""
    pts = np.asarray(points, dtype=float)
    r = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),))
    n = len(pts) - 1
    kw = {}
    if inner_offset is not None:
        kw = dict(inner_offset=np.broadcast_to(np.asarray(inner_offset, dtype=float), (n,)),
                  inner_value=np.broadcast_to(np.asarray(inner_value, dtype=float), (n,)))
    return SegmentSet(pts[:-1], pts[1:], r[:-1], r[1:], np.full(n, value, dtype=float),
                      suv=None if suv is None else np.full(n, suv, dtype=float), **kw)


def _ray_radius(fn, centre_xy, theta, z, r_max=400.0) -> np.ndarray:
    """Distances from ``centre_xy`` along directions ``theta`` at height ``z`` where the sdf ``fn`` crosses zero."""
    theta = np.atleast_1d(np.asarray(theta, dtype=float))
    lo, hi = np.zeros_like(theta), np.full_like(theta, r_max)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        inside = fn(centre_xy[0] + mid * np.cos(theta), centre_xy[1] + mid * np.sin(theta), np.full_like(theta, z)) < 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return 0.5 * (lo + hi)


def build_anatomy(rng: np.random.Generator, p: Params) -> Anatomy:
    """The tube structures (great vessels, airways, bones), hila and fissures of a case from its parameters."""
    z_top = p.z_apex + 250.0
    z_bot = p.z_rec - 250.0
    blood = p.hu_blood
    jit = lambda: _u(rng, -5, 5)  # noqa: E731
    med = []
    hc, hax = p.heart_c, p.heart_ax

    # Aorta: ascending, arch, descending.
    r_aa, r_arch, r_da = _u(rng, 13, 18), _u(rng, 11, 15), _u(rng, 10, 14)
    x_d = p.x_m + p.r_vbx * 0.6 + r_da * 0.9
    y_d = p.y_vb - p.r_vby * 0.55
    a1 = [p.x_m + _u(rng, -2, 5), p.y_c - _u(rng, 0.25, 0.45) * p.b0, p.z_arch - r_aa * 0.3]
    asc = [[hc[0] - 12, hc[1] - 8, hc[2] + hax[2] * 0.4], a1]
    arch = [a1, [p.x_m + 8, (a1[1] + y_d) / 2, p.z_arch + r_arch * 0.5], [x_d, y_d, p.z_arch - 12]]
    desc = [[x_d, y_d, p.z_arch - 12], [x_d - 3, y_d - 4, p.z_dL - 30], [p.x_m + 3, y_d - 6, z_bot]]
    med += [_chain(asc, [r_aa, r_aa], blood + jit(), p.suv_blood),
            _chain(arch, [r_aa, r_arch, r_da], blood + jit(), p.suv_blood),
            _chain(desc, [r_da, r_da * 0.95, r_da * 0.9], blood + jit(), p.suv_blood)]
    # Arch branches up to the neck.
    for dx, r in ((-14, _u(rng, 5.5, 7.5)), (4, _u(rng, 4, 5.5)), (16, _u(rng, 4.5, 6))):
        b0 = [p.x_m + dx * 0.4 + 8, (a1[1] + y_d) / 2 + dx * 0.3, p.z_arch + r_arch * 0.5]
        med.append(_chain([b0, [p.x_m + dx * 1.6, b0[1] + _u(rng, -8, 8), p.z_apex + 40], [p.x_m + dx * 2.2, b0[1], z_top]],
                          [r, r, r], blood + jit(), p.suv_blood))
    # Pulmonary trunk and arteries to the hila (the roots of the arterial trees).
    bif = [p.x_m + _u(rng, 5, 15), p.y_c - _u(rng, 0.05, 0.2) * p.b0, p.z_car - _u(rng, 10, 20)]
    z_hil_R = p.z_car - _u(rng, 15, 30)
    z_hil_L = p.z_car - _u(rng, 0, 15)
    h_R = [p.x_m - p.w_band / 2 - _u(rng, 20, 30), p.y_c + _u(rng, -0.1, 0.15) * p.b0, z_hil_R]
    h_L = [p.x_m + p.w_band / 2 + _u(rng, 20, 30), p.y_c + _u(rng, 0.0, 0.2) * p.b0, z_hil_L]
    r_pt, r_rpa, r_lpa = _u(rng, 12, 15), _u(rng, 8, 11), _u(rng, 8, 11)
    med.append(_chain([[hc[0] - 5, hc[1] - hax[1] * 0.6, hc[2] + hax[2] * 0.5], bif], [r_pt, r_pt], blood + jit(),
                      p.suv_blood))
    med.append(_chain([bif, [p.x_m - 6, bif[1] + 14, (bif[2] + z_hil_R) / 2], h_R], [r_rpa, r_rpa, r_rpa * 0.8],
                      blood + jit(), p.suv_blood))
    med.append(_chain([bif, [h_L[0] - 12, h_L[1] - 4, h_L[2] + 8], h_L], [r_lpa, r_lpa, r_lpa * 0.8], blood + jit(),
                      p.suv_blood))
    # Pulmonary veins into the left atrium (posterior heart): the roots of the venous trees.
    la = [hc[0] - 8, hc[1] + hax[1] * 0.55, hc[2] + hax[2] * 0.25]
    v_R = [p.x_m - p.w_band / 2 - _u(rng, 12, 22), la[1] + _u(rng, 0, 12), z_hil_R - _u(rng, 20, 35)]
    v_L = [p.x_m + p.w_band / 2 + _u(rng, 22, 32), la[1] + _u(rng, 0, 12), z_hil_L - _u(rng, 25, 40)]
    r_pv = _u(rng, 6, 8)
    med.append(_chain([la, v_R], [r_pv, r_pv * 0.8], blood + jit(), p.suv_blood))
    med.append(_chain([la, v_L], [r_pv, r_pv * 0.8], blood + jit(), p.suv_blood))
    # Venae cavae, brachiocephalic vein, azygos.
    r_svc = _u(rng, 9, 12)
    svc_top = [p.x_m - _u(rng, 20, 30), p.y_c - _u(rng, 0.2, 0.4) * p.b0, z_top]
    svc_bot = [svc_top[0] + 4, svc_top[1] + 8, hc[2] + hax[2] * 0.35]
    med.append(_chain([svc_top, [svc_top[0], svc_top[1], p.z_arch + 20], svc_bot], [r_svc] * 3, blood + jit(),
                      p.suv_blood))
    med.append(_chain([[p.x_m + _u(rng, 35, 50), p.y_c - 0.45 * p.b0, p.z_arch + _u(rng, 20, 35)],
                       [svc_top[0], svc_top[1], p.z_arch + 22]], [_u(rng, 5, 7)] * 2, blood + jit(), p.suv_blood))
    r_ivc = _u(rng, 10, 13)
    med.append(_chain([[p.x_m - _u(rng, 15, 25), p.y_c + 0.1 * p.b0, z_bot], [p.x_m - 18, hc[1] + 5, p.z_dR + 8]],
                      [r_ivc, r_ivc], blood + jit(), p.suv_blood))
    r_az = _u(rng, 3, 5)
    az_x = p.x_m - p.r_vbx * 0.5 - 4
    med.append(_chain([[az_x, p.y_vb - p.r_vby * 0.4, z_bot], [az_x, p.y_vb - p.r_vby * 0.6, p.z_car + 5],
                       [svc_top[0] + 3, svc_top[1] + 10, p.z_car + 10]], [r_az] * 3, blood + jit(), p.suv_blood))
    # Oesophagus (sometimes with air in its lumen), running to the stomach.
    r_es = _u(rng, 7, 10)
    y_es = p.y_vb - p.r_vby - r_es - _u(rng, 1, 4)
    es = [[p.x_m + _u(rng, 0, 6), y_es, z_top], [p.x_m + 8, y_es - 2, p.z_dL - 5], list(p.stomach_c)]
    lumen = _u(rng, 1.5, 3.0) if rng.random() < 0.4 else 0.0
    med.append(_chain(es, [r_es] * 3, p.hu_muscle - 5, 1.5,
                      inner_offset=[r_es - lumen if lumen else 0.0] * 2, inner_value=[-1000.0] * 2))
    # Trachea and main bronchi; their ends are the roots of the bronchial trees.
    r_tr, wall = _u(rng, 7.5, 10), _u(rng, 1.5, 2.5)
    y_tr = y_es - r_es - r_tr - _u(rng, 3, 8)
    carina = [p.x_m + 2, y_tr + _u(rng, 0, 8), p.z_car]
    b_R = [p.x_m - p.w_band / 2 - _u(rng, 8, 14), carina[1] + _u(rng, 5, 15), p.z_car - _u(rng, 18, 28)]
    b_L = [p.x_m + p.w_band / 2 + _u(rng, 12, 20), carina[1] + _u(rng, 8, 16), p.z_car - _u(rng, 30, 45)]
    r_rb, r_lb = _u(rng, 6, 7.5), _u(rng, 5, 6.5)
    wall_hu = _u(rng, 20, 60)
    ca = SegmentSet.concat([
        _chain([[p.x_m + _u(rng, -2, 4), y_tr, z_top], carina], [r_tr + wall] * 2, wall_hu,
               inner_offset=[wall], inner_value=[-1000.0]),
        _chain([carina, b_R], [r_rb + wall * 0.8] * 2, wall_hu, inner_offset=[wall * 0.8], inner_value=[-1000.0]),
        _chain([carina, b_L], [r_lb + wall * 0.8] * 2, wall_hu, inner_offset=[wall * 0.8], inner_value=[-1000.0]),
    ])
    # Mediastinal lymph nodes: small soft-tissue ovals, nodule-like but outside the lungs.
    for _ in range(int(rng.integers(0, 8))):
        site = rng.integers(0, 4)
        base = {0: [p.x_m + _u(rng, -10, 10), y_tr - r_tr - 8, _u(rng, p.z_car, p.z_arch + 20)],
                1: [p.x_m + _u(rng, -8, 8), carina[1] + 5, p.z_car - _u(rng, 12, 25)],
                2: [h_R[0] + _u(rng, 0, 10), h_R[1] + _u(rng, 4, 12), h_R[2] - _u(rng, 5, 20)],
                3: [h_L[0] - _u(rng, 0, 10), h_L[1] + _u(rng, 4, 12), h_L[2] - _u(rng, 5, 20)]}[int(site)]
        r = _u(rng, 2.5, 7)
        dvec = rng.normal(size=3)
        dvec *= _u(rng, 0, 6) / np.linalg.norm(dvec)
        med.append(SegmentSet([base], [np.add(base, dvec)], [r], [r], [_u(rng, 20, 45)], suv=[_u(rng, 0.8, 3.0)]))
    mediastinum = SegmentSet.concat(med)

    # Coronary calcifications on the heart's surface.
    calcs = []
    if rng.random() < 0.4:
        R = rot_z(p.heart_rot)
        for _ in range(int(rng.integers(1, 5))):
            u = rng.normal(size=3)
            u[2] = abs(u[2])
            u[1] = -abs(u[1])
            u /= np.linalg.norm(u)
            c = np.array(hc) + R @ (np.array(hax) * u * 1.02)
            t = rng.normal(size=3)
            t *= _u(rng, 0, 6) / np.linalg.norm(t)
            r = _u(rng, 0.8, 2.0)
            calcs.append(SegmentSet([c], [c + t], [r], [r], [_u(rng, 300, 900)]))
    calcs = SegmentSet.concat(calcs)

    # Ribs: from the spine around the cavity outline, descending steeply towards the front. A rib is taller than
    # thick: two stacked tubes give its flat oval cross-section.
    bones = []
    n_ribs = 12
    dz_rib = _u(rng, 19, 24)
    z_first = p.z_apex + _u(rng, -5, 10)
    r_rib, h_rib, t_rc = _u(rng, 2.8, 3.8), _u(rng, 1.5, 3.0), _u(rng, 0.9, 1.4)
    m = 18
    tau = np.linspace(0, 1, m)
    for side in (-1, 1):
        for i in range(n_ribs):
            z_i = z_first - i * dz_rib + _u(rng, -2, 2)
            drop = _u(rng, 35, 55) if i < 2 else _u(rng, 80, 125)
            head = np.array([p.r_vbx + 8, p.y_vb + 2 - p.y_c])
            th0 = np.arctan2(head[1], head[0])
            th1 = -np.deg2rad(_u(rng, 70, 82) if i < 7 else (_u(rng, 35, 60) if i < 10 else _u(rng, -10, 20)))
            th = th0 + (th1 - th0) * tau
            zz = z_i - drop * tau**1.15
            zeta = np.clip(-zz / (p.H / 2), -1, 1.3)
            a = p.a0 * (1 + p.cav_widen * zeta)
            b = p.b0 * (1 + 0.4 * p.cav_widen * zeta)
            R_c = superellipse_radius(th, a, b, p.p_cav) + r_rib + _u(rng, 0.5, 2.0)
            rr = r_rib * (1 - 0.2 * tau)
            cart = min(int(m * (0.78 if i < 10 else 1.0)), m - 1)
            for dzs in (-h_rib, h_rib):
                pts = np.stack([side * R_c * np.cos(th), p.y_c + R_c * np.sin(th), zz + dzs * (1 - 0.4 * tau)], axis=1)
                bones.append(_chain(pts[: cart + 1], rr[: cart + 1], p.hu_cortical, p.suv_bone,
                                    inner_offset=[t_rc] * cart, inner_value=[p.hu_cancellous * 0.9] * cart))
                if cart < m - 1:
                    bones.append(_chain(pts[cart:], rr[cart:], _u(rng, 80, 200), p.suv_bone))
    # Clavicles.
    z_cl = p.z_apex - _u(rng, 15, 30)
    for side in (-1, 1):
        pts = [[side * _u(rng, 15, 25) + p.x_m * 0.3, p.st_y - 2, z_cl],
               [side * p.a0 * 0.8, p.y_c - p.b0 * 0.75, z_cl + 12],
               [side * p.Af * 0.97, p.y_c - p.b0 * 0.2, z_cl + 25]]
        r = _u(rng, 5, 7)
        bones.append(_chain(pts, [r, r * 0.8, r], p.hu_cortical, p.suv_bone, inner_offset=[1.3, 1.3],
                            inner_value=[p.hu_cancellous, p.hu_cancellous]))
    # Scapulae: thin curved plates behind the posterolateral ribs.
    z_sc_top = p.z_apex + _u(rng, 0, 20)
    z_sc_bot = p.z_apex - _u(rng, 110, 150)
    r_sc = _u(rng, 1.8, 3.0)
    for side in (-1, 1):
        levels = np.arange(z_sc_top, z_sc_bot, -min(r_sc * 1.6, 4.5))
        for lv, z in enumerate(levels):
            f = (z_sc_top - z) / (z_sc_top - z_sc_bot)
            th_a = np.deg2rad(72 - 12 * f)
            span = np.deg2rad(52 * (1 - f) + 8)
            ths = np.linspace(th_a, th_a - span, 4)
            zeta = np.clip(-z / (p.H / 2), -1, 1.3)
            a = p.a0 * (1 + p.cav_widen * zeta)
            b = p.b0 * (1 + 0.4 * p.cav_widen * zeta)
            rc = superellipse_radius(ths, a, b, p.p_cav)
            rf = _ray_radius(lambda X, Y, Z: _fat_inner(p, X, Y, Z), (0.0, p.y_c), ths, z)
            r_here = rc + r_rib * 2 + 2 + 0.5 * np.maximum(rf - rc - r_rib * 2 - 2, 0)
            pts = np.stack([side * r_here * np.cos(ths), p.y_c + r_here * np.sin(ths), np.full(4, z)], axis=1)
            bones.append(_chain(pts, [r_sc] * 4, p.hu_cortical * 0.75, p.suv_bone))
    bones = SegmentSet.concat(bones)

    # Fissures: oblique on both sides, horizontal on the right (only in front of the oblique one).
    fissures = []
    obl = {}
    for side in (-1, 1):
        # the sheet contains an in-plane line running antero-medial → postero-lateral and a sagittal line running
        # postero-superior → antero-inferior
        beta = np.deg2rad(_u(rng, 40, 60))
        gamma = np.deg2rad(_u(rng, 25, 55))
        d_ax = np.array([side * np.cos(gamma), np.sin(gamma), 0.0])
        d_sag = np.array([0.0, -np.cos(beta), -np.sin(beta)])
        n = np.cross(d_ax, d_sag)
        n /= np.linalg.norm(n)
        if n[2] < 0:
            n = -n
        pt = np.array([side * 0.5 * p.a0, p.y_c, _u(rng, -25, 10)])
        obl[side] = (pt, n)
        fissures.append((pt, n, _u(rng, -0.002, 0.002), side, None))
    n_h = np.array([_u(rng, -0.1, 0.1), _u(rng, -0.15, 0.15), 1.0])
    n_h /= np.linalg.norm(n_h)
    pt_h = np.array([-0.5 * p.a0, p.y_c, z_hil_R + _u(rng, -10, 10)])
    pt_o, n_o = obl[-1]
    fissures.append((pt_h, n_h, _u(rng, -0.002, 0.002), -1, (pt_o, -n_o)))

    hila = {"artery": {-1: np.array(h_R), 1: np.array(h_L)},
            "vein": {-1: np.array(v_R), 1: np.array(v_L)},
            "bronchus": {-1: np.array(b_R), 1: np.array(b_L)},
            "bronchus_r": {-1: r_rb, 1: r_lb}, "wall_hu": wall_hu,
            "radius": {"artery": {-1: r_rpa * 0.8, 1: r_lpa * 0.8}, "vein": {-1: r_pv * 0.8, 1: r_pv * 0.8}}}
    return Anatomy(p=p, mediastinum=mediastinum, central_airways=ca, bones=bones, calcs=calcs, hila=hila,
                   fissures=fissures)


def _fat_inner(p: Params, X, Y, Z):
    """The inner contour of the subcutaneous fat (same as :meth:`Anatomy.fat_inner_sdf`), from parameters only."""
    return Anatomy(p=p, mediastinum=None, central_airways=None, bones=None, calcs=None).fat_inner_sdf(X, Y, Z)
