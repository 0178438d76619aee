"""The one image type every meddet stage takes and returns.

Why: geometry lost between stages is the classic silent bug of medical imaging pipelines (a mask flipped
left-right, a lesion reported 3 cm off). A ``Volume`` keeps the voxel array and its geometry together so
no stage has to guess.

Conventions (the same as ITK and DICOM, so nothing is converted twice):
- ``array`` is indexed ``[z, y, x]`` (slice, row, column), as numpy and SimpleITK's GetArrayFromImage give it.
- ``spacing`` and ``origin`` are in ITK order ``(x, y, z)``: column spacing, row spacing, slice spacing, in mm.
- ``direction`` is a 3×3 matrix whose *columns* are the patient-space (LPS) directions of the x, y and z index
  axes. For an axial head-first supine CT it is the identity. For a gantry-tilted series the third column is
  not orthogonal to the first two: the grid is sheared, and that is kept rather than silently resampled.
- World coordinates are LPS millimetres: ``world = origin + direction @ (spacing * [i, j, k])``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

# Metadata keys that identify a person: never printed, logged or put in a repr.
IDENTIFYING_KEYS = frozenset({"patient_id", "patient_name", "patient_birth_date"})


@dataclass
class Volume:
    """A 3D image with its geometry. See the module docstring for axis conventions."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "OT"
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D [z, y, x], got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError("spacing and origin must have three values (x, y, z)")
        if min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        if abs(np.linalg.det(self.direction)) < 1e-6:
            raise ValueError("direction matrix is singular: the three image axes are not independent")

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array order, for numpy/scipy code that works on ``array`` directly."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def affine_lps(self) -> np.ndarray:
        """4×4 matrix mapping ``(i, j, k, 1)`` index (x, y, z order) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def index_zyx_to_lps(self, index_zyx: np.ndarray) -> np.ndarray:
        """Map (N, 3) array indices ``[z, y, x]`` (may be fractional) to LPS mm points (N, 3) ``[x, y, z]``."""
        idx = np.atleast_2d(np.asarray(index_zyx, dtype=float))[:, ::-1]
        return idx @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]

    def lps_to_index_zyx(self, points_lps: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`index_zyx_to_lps`: LPS mm points (N, 3) to fractional ``[z, y, x]`` indices."""
        pts = np.atleast_2d(np.asarray(points_lps, dtype=float))
        ijk = (pts - self.affine_lps[:3, 3]) @ np.linalg.inv(self.affine_lps[:3, :3]).T
        return ijk[:, ::-1]

    @property
    def is_orthogonal(self) -> bool:
        """False for sheared grids (gantry tilt), which some file formats cannot store exactly."""
        d = self.direction
        return bool(np.allclose(d.T @ d, np.eye(3), atol=1e-4))

    def same_geometry(self, other: "Volume", atol: float = 1e-3) -> bool:
        """True when both volumes lie on the same voxel grid in patient space."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    # ------------------------------------------------------------------ copies
    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """A new Volume on the same grid (unless ``changes`` says otherwise) holding ``array``."""
        fields = dict(
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction.copy(),
            modality=self.modality,
            metadata=copy.deepcopy(self.metadata),
            warnings=list(self.warnings),
        )
        fields.update(changes)
        return Volume(array=array, **fields)

    # ------------------------------------------------------------------ SimpleITK
    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (metadata is not carried)."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, modality: str = "OT", metadata: dict[str, Any] | None = None) -> "Volume":
        """Wrap a 3D SimpleITK image; the array is copied so the image may be freed."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("multi-component (e.g. RGB) images are not volumes meddet can use")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            modality=modality,
            metadata=dict(metadata or {}),
        )

    # ------------------------------------------------------------------ display
    def orientation_code(self) -> str:
        """Three-letter code of the patient direction each index axis (x, y, z) points to, e.g. 'LPS'."""
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        code = ""
        for col in self.direction.T:
            axis = int(np.argmax(np.abs(col)))
            code += letters[axis][0] if col[axis] > 0 else letters[axis][1]
        return code

    def safe_metadata(self) -> dict[str, Any]:
        """Metadata without identifying fields: what may be printed or logged."""
        return {k: v for k, v in self.metadata.items() if k not in IDENTIFYING_KEYS}

    def __repr__(self) -> str:
        meta = {k: (f"<{len(v)} items>" if isinstance(v, (list, tuple)) else v) for k, v in self.safe_metadata().items()}
        return (
            f"Volume(shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(o, 2) for o in self.origin)}, orientation={self.orientation_code()}, "
            f"modality={self.modality!r}, dtype={self.array.dtype}, metadata={meta!r})"
        )
