"""Fixed-size cubes of CT around candidate centres, in patient orientation and millimetres.

Why a canonical cube: a second-stage classifier should see every candidate the same way whatever the scan's grid
(0.6 mm or 5 mm slices, flipped, oblique, gantry-tilted), so each cube is resampled (SimpleITK, linear, in
physical space) onto an isotropic grid whose axes are the patient's L, P and S axes, centred on the candidate.
Thick-slice scans give blurred cubes along S: that is their real appearance and the classifier must learn it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from meddet.volume import Volume

CROP_VOXELS = 40  # stored cube edge (voxels); the classifier sees a 32-voxel cube inside it (shift augmentation)
CROP_SPACING_MM = 1.0
AIR_HU = -1024.0


def crops_around(volume: Volume, centres_lps: np.ndarray, voxels: int = CROP_VOXELS,
                 spacing_mm: float | np.ndarray = CROP_SPACING_MM) -> np.ndarray:
    """``(N, voxels, voxels, voxels)`` float32 cubes (z=S, y=P, x=L order) of ``volume`` centred on each LPS point,
    at ``spacing_mm`` (one for all, or one per centre).

    Outside the scan the cube holds air (-1024 HU), which is what lies beyond a CT's field of view.
    """
    centres = np.asarray(centres_lps, dtype=float).reshape(-1, 3)
    spacings = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (len(centres),))
    out = np.empty((len(centres), voxels, voxels, voxels), dtype=np.float32)
    if len(centres) == 0:
        return out
    image = volume.to_sitk()  # no float copy of the whole scan: Resample interpolates in float and writes float32
    for k, (centre, spacing) in enumerate(zip(centres, spacings)):
        origin = [float(c - (voxels - 1) / 2.0 * spacing) for c in centre]
        cube = sitk.Resample(image, [voxels] * 3, sitk.Transform(), sitk.sitkLinear, origin, [float(spacing)] * 3,
                             [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], AIR_HU, sitk.sitkFloat32)
        out[k] = sitk.GetArrayFromImage(cube)
    return out
