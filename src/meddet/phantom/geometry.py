"""Sampling the scan geometry: matrix, pixel and slice spacing, coverage, position and gantry tilt.

Why sampled per case: a detector must not learn one scanner's grid. In-plane spacing comes from a display field of
view in whole millimetres over a 512 matrix (as scanners do, e.g. 360/512 = 0.703125 mm); slice spacing mixes the
clinical presets (including 5 mm) with arbitrary values over the whole 0.8–5 mm range; the scan's world position
(table height, couch position) is random so absolute coordinates carry no information.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddet.phantom.grid import Grid

FULL_MATRIX = 512
SMALL_MATRIX = 256
FULL_PIXEL_MM = (0.55, 0.95)
SMALL_PIXEL_MM = (1.2, 1.5)
SLICE_SPACING_MM = (0.8, 5.0)
CLINICAL_SLICE_SPACINGS = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
FULL_EXTENT_MM = (120.0, 320.0)
SMALL_EXTENT_MM = (90.0, 170.0)
PSF_FWHM_MM = (0.6, 1.2)


@dataclass(frozen=True)
class InPlane:
    matrix: int
    pixel_mm: float

    @property
    def fov_mm(self) -> float:
        return self.matrix * self.pixel_mm


@dataclass(frozen=True)
class ScanGeometry:
    """Everything about the image grid and the scanner's imaging chain (no anatomy)."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    direction: np.ndarray  # 3×3, columns = LPS directions of the x, y, z index axes
    slice_thickness: float
    body_to_world: tuple[float, float, float]  # world LPS = body_rotation @ body frame + this
    psf_fwhm_mm: float
    tilt_deg: float
    body_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # the patient lies a little askew

    @property
    def steps(self) -> np.ndarray:
        return self.direction @ np.diag(self.spacing)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.steps)))

    def grid(self, n_sub: int = 1) -> Grid:
        """The body-frame grid; ``n_sub`` > 1 splits each slice into thin sub-slices spanning its thickness."""
        rot_t = np.asarray(self.body_rotation).T
        steps = rot_t @ self.steps
        origin = rot_t @ (np.asarray(self.origin) - np.asarray(self.body_to_world))
        if n_sub > 1:
            e2 = steps[:, 2].copy()
            steps[:, 2] = e2 / n_sub
            origin = origin + e2 * (0.5 / n_sub - 0.5)
        nz, ny, nx = self.shape
        return Grid(shape=(nz * n_sub, ny, nx), origin=origin, steps=steps)

    def world_to_body(self, pts: np.ndarray) -> np.ndarray:
        return (np.asarray(pts, dtype=float) - np.asarray(self.body_to_world)) @ np.asarray(self.body_rotation)

    def body_to_world_pts(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, dtype=float) @ np.asarray(self.body_rotation).T + np.asarray(self.body_to_world)


def sample_inplane(rng: np.random.Generator, small: bool) -> InPlane:
    """Matrix and pixel spacing: a field of view in whole millimetres over the matrix."""
    matrix = SMALL_MATRIX if small else FULL_MATRIX
    lo, hi = SMALL_PIXEL_MM if small else FULL_PIXEL_MM
    fov = float(rng.integers(int(np.ceil(lo * matrix)), int(np.floor(hi * matrix)) + 1))
    return InPlane(matrix=matrix, pixel_mm=fov / matrix)


def sample_slice_spacing(rng: np.random.Generator) -> float:
    """Half the cases use a clinical preset (5 mm among them), half any value in 0.8–5 mm."""
    if rng.random() < 0.5:
        return float(rng.choice(CLINICAL_SLICE_SPACINGS, p=[0.1, 0.15, 0.12, 0.1, 0.1, 0.12, 0.11, 0.2]))
    return float(np.round(rng.uniform(*SLICE_SPACING_MM), 2))


def tilt_direction(tilt_deg: float) -> np.ndarray:
    """Direction matrix of a gantry-tilted axial series: the image plane rotates about x, slices still step in z."""
    t = np.deg2rad(tilt_deg)
    d = np.eye(3)
    d[:, 1] = [0.0, np.cos(t), np.sin(t)]
    return d


def sample_scan_geometry(
    rng: np.random.Generator,
    inplane: InPlane,
    small: bool,
    lung_z_range: tuple[float, float],
    tilt_deg: float = 0.0,
) -> ScanGeometry:
    """Slice spacing, craniocaudal coverage centred on the lungs, world position and the imaging chain."""
    sz = sample_slice_spacing(rng)
    lo, hi = SMALL_EXTENT_MM if small else FULL_EXTENT_MM
    extent = rng.uniform(lo, hi)
    nz = max(8, int(round(extent / sz)))
    n = inplane.matrix
    spacing = (inplane.pixel_mm, inplane.pixel_mm, sz)
    direction = tilt_direction(tilt_deg)
    # The grid centre (body frame): centred on the lungs, with some positioning error.
    zc = 0.5 * (lung_z_range[0] + lung_z_range[1]) + rng.uniform(-0.08, 0.08) * (lung_z_range[1] - lung_z_range[0])
    centre_body = np.array([rng.uniform(-12, 12), rng.uniform(-25, 15), zc])
    # Where the body sits in scanner coordinates: table height and couch position are arbitrary.
    body_to_world = np.array([rng.uniform(-20, 20), rng.uniform(-60, 120), rng.uniform(-600, 150)])
    # The body frame could be rotated (patient askew): ``body_rotation`` supports it, but a rotation makes every
    # coordinate depend on every index and costs 3× the rendering time, and the table would tilt with the patient;
    # cases are generated straight.
    rot = np.eye(3)
    steps = direction @ np.diag(spacing)
    half = np.array([(n - 1) / 2, (n - 1) / 2, (nz - 1) / 2])
    origin = rot @ centre_body + body_to_world - steps @ half
    origin = np.round(origin, 3)
    return ScanGeometry(
        shape=(nz, n, n),
        spacing=spacing,
        origin=tuple(float(o) for o in origin),
        direction=direction,
        slice_thickness=sz,
        body_to_world=tuple(float(v) for v in body_to_world),
        psf_fwhm_mm=float(rng.uniform(*PSF_FWHM_MM)),
        tilt_deg=float(tilt_deg),
        body_rotation=rot,
    )
