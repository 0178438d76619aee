"""The sampling grid the phantom is rendered on, in the phantom's body frame.

Why a separate grid type: the image is rendered on a grid finer than the final one along the slice axis (the
slice profile is a box over the slice thickness, so each final slice averages several thin sub-slices), and the
ground truth is computed by supersampling single voxels. Both need the same "index → body millimetres" mapping,
including the shear of a gantry-tilted series, so it lives in one place.

Body frame: millimetres, x towards the patient's left, y posterior, z superior (the LPS axes), origin at the centre
of the thorax at mid-lung height. World (LPS) = ``body_rotation`` @ body + ``body_to_world`` (a few degrees:
the patient never lies perfectly straight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular (possibly sheared) grid: body point of index (i, j, k) = ``origin + steps @ [i, j, k]``.

    ``shape`` is array order ``(nz, ny, nx)``; ``steps`` columns are the body-frame step vectors of the x, y and z
    index axes (direction × spacing).
    """

    shape: tuple[int, int, int]
    origin: np.ndarray
    steps: np.ndarray

    @property
    def inv_steps(self) -> np.ndarray:
        return np.linalg.inv(self.steps)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Body points (N, 3) → fractional indices (N, 3) in ``[i, j, k]`` (x, y, z) order."""
        pts = np.atleast_2d(np.asarray(points, dtype=float))
        return (pts - self.origin) @ self.inv_steps.T

    def to_body(self, index_ijk: np.ndarray) -> np.ndarray:
        """Fractional indices (N, 3) ``[i, j, k]`` → body points (N, 3)."""
        idx = np.atleast_2d(np.asarray(index_ijk, dtype=float))
        return idx @ self.steps.T + self.origin

    def coords(self, zs: slice, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body coordinates X, Y, Z (float32) of a box of the grid, as broadcastable arrays.

        Each coordinate keeps only the axes it depends on (shape 1 elsewhere), so an axial grid gives
        X (1, 1, nx), Y (1, ny, 1), Z (nz, 1, 1) and nothing full-size is allocated here.
        """
        nz, ny, nx = self.shape
        k = np.arange(*zs.indices(nz), dtype=np.float64)[:, None, None]
        j = np.arange(*ys.indices(ny), dtype=np.float64)[None, :, None]
        i = np.arange(*xs.indices(nx), dtype=np.float64)[None, None, :]
        out = []
        for axis in range(3):
            c = float(self.origin[axis])
            acc = None
            for coef, idx in ((self.steps[axis, 0], i), (self.steps[axis, 1], j), (self.steps[axis, 2], k)):
                if abs(coef) < 1e-12:
                    continue
                term = coef * idx
                acc = term if acc is None else acc + term
            if acc is None:
                acc = np.zeros((1, 1, 1))
            out.append((acc + c).astype(np.float32))
        return out[0], out[1], out[2]

    def index_box(self, lo: np.ndarray, hi: np.ndarray, pad: float = 0.0) -> tuple[slice, slice, slice] | None:
        """Array slices ``(z, y, x)`` covering the body-frame box [lo, hi] (+ pad mm); None when outside the grid."""
        lo = np.asarray(lo, dtype=float) - pad
        hi = np.asarray(hi, dtype=float) + pad
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = self.to_index(corners)
        imin = np.floor(idx.min(axis=0)).astype(int)
        imax = np.ceil(idx.max(axis=0)).astype(int) + 1
        nz, ny, nx = self.shape
        size = (nx, ny, nz)
        lo_i = np.maximum(imin, 0)
        hi_i = np.minimum(imax, size)
        if np.any(hi_i <= lo_i):
            return None
        return slice(lo_i[2], hi_i[2]), slice(lo_i[1], hi_i[1]), slice(lo_i[0], hi_i[0])

    def index_boxes(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`index_box` for (N, 3) boxes: integer ``[i, j, k]`` start (incl.) and stop (excl.)."""
        lo = np.asarray(lo, dtype=float)
        hi = np.asarray(hi, dtype=float)
        inv = self.inv_steps
        centre = (lo + hi) / 2 - self.origin
        half = (hi - lo) / 2
        c_idx = centre @ inv.T
        h_idx = half @ np.abs(inv).T
        start = np.floor(c_idx - h_idx).astype(int)
        stop = np.ceil(c_idx + h_idx).astype(int) + 1
        nz, ny, nx = self.shape
        start = np.maximum(start, 0)
        stop = np.minimum(stop, np.array([nx, ny, nz]))
        return start, stop


def sub(arr: np.ndarray, zs: slice, ys: slice, xs: slice) -> np.ndarray:
    """Slice a broadcastable coordinate array (axes of length 1 are left whole)."""
    s = tuple(sl if arr.shape[a] > 1 else slice(None) for a, sl in enumerate((zs, ys, xs)))
    return arr[s]
