"""A PNG overview of the detected lesions: one panel per lesion, its slice in lung window with its outline.

Why: a radiologist or a reviewer of a batch wants to see at a glance *what* meddet found before opening a viewer;
a picture also makes a misplaced mask (the classic geometry bug) obvious in seconds. The panels show the slice as
acquired (the image's own slice through the lesion centre, no resampling), so what is drawn is exactly the mask
voxels over exactly the image voxels.

Display conventions: lung window (width 1500, level -600 HU) by default; the pixel aspect ratio follows the pixel
spacing; axial-like slices are shown in radiological convention (patient's left on the screen's right, anterior at
the top), flipping the array for display only when the series is stored the other way round.

Rendering uses matplotlib's object API on the Agg canvas (no pyplot global state), so it is safe in a web worker
and costs well under a second for eight 512 × 512 panels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from meddet import __version__
from meddet.volume import Volume

MAX_PANELS = 8
COLUMNS = 4
PANEL_INCHES = 3.2  # image area of one panel; the caption sits above it
CAPTION_INCHES = 0.35
DPI = 100
CONTOUR_COLOR = (1.0, 0.15, 0.15)  # pure-ish red: unmistakable over a greyscale CT
BACKGROUND = "black"


def panel_layout(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid: at most ``COLUMNS`` per row, so the PNG width is bounded."""
    n = max(1, n_panels)
    cols = min(n, COLUMNS)
    return math.ceil(n / cols), cols


def render_overlay(
    image: Volume,
    labels: Volume,
    lesions: list[dict[str, Any]],
    path: str | Path,
    window: tuple[float, float] = (1500.0, -600.0),
    max_panels: int = MAX_PANELS,
) -> Path:
    """Write a PNG with one panel per lesion (highest ``score`` first, at most ``max_panels``); return its path.

    ``labels`` is the instance label map on ``image``'s grid (lesion ``id`` = voxel value); ``lesions`` are
    lesions.json records (``id``, ``score``, ``diameter_mm``, ``center_mm`` in LPS mm). ``window`` is (width,
    level) in the image's units (HU for CT). With no lesions the PNG is one panel, the middle slice captioned
    "no lesions found", so every scan gets an overview. The panel count is stored in the PNG's Description text.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if labels.shape != image.shape or not labels.same_geometry(image, atol=1e-3):
        raise ValueError("labels must be on the image's voxel grid to be drawn over it.")
    path = Path(path)
    ranked = sorted(lesions, key=lambda lesion: -float(lesion.get("score") or 0.0))[:max(1, max_panels)]
    rows, cols = panel_layout(len(ranked))
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * (PANEL_INCHES + CAPTION_INCHES)), dpi=DPI,
                 facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - 0.02 / rows, wspace=0.02,
                        hspace=CAPTION_INCHES / PANEL_INCHES)
    width, level = window
    flip_rows, flip_cols = _radiological_flips(image.direction)
    aspect = image.spacing[1] / image.spacing[0]  # row spacing / column spacing: mm-true shapes

    def show(ax: Any, z: int, mask: np.ndarray | None, caption: str) -> None:
        pixels = _oriented(image.array[z], flip_rows, flip_cols)
        ax.imshow(pixels, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect,
                  interpolation="nearest")
        if mask is not None and mask.any():
            ax.contour(_oriented(mask, flip_rows, flip_cols).astype(np.float32), levels=[0.5],
                       colors=[CONTOUR_COLOR], linewidths=1.2)
        ax.set_title(caption, color="white", fontsize=9, pad=3)

    if not ranked:
        show(axes[0, 0], image.shape[0] // 2, None, "no lesions found")
    for ax, lesion in zip(axes.ravel(), ranked):
        lesion_id = int(lesion.get("id", 0))
        z = _lesion_slice(image, labels, lesion)
        mask = labels.array[z] == lesion_id
        show(ax, z, mask, _caption(lesion, z, image.shape[0], has_voxels=bool(mask.any())))
    for ax in axes.ravel():
        ax.set_axis_off()
    extra = max(0, len(lesions) - len(ranked))
    if extra:
        fig.text(0.995, 0.002, f"+{extra} more lesion(s) not shown", color="white", fontsize=8, ha="right",
                 va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor=BACKGROUND, format="png", metadata={
        "Software": f"meddet {__version__}",
        "Description": f"meddet lesion overview: {max(1, len(ranked))} panel(s), {len(lesions)} lesion(s)",
    })
    return path


def _caption(lesion: dict[str, Any], z: int, n_slices: int, has_voxels: bool) -> str:
    parts = [f"#{lesion.get('id', '?')}"]
    if lesion.get("score") is not None:
        parts.append(f"score {float(lesion['score']):.2f}")
    if lesion.get("diameter_mm") is not None:
        parts.append(f"Ø {float(lesion['diameter_mm']):.1f} mm")
    parts.append(f"slice {z + 1}/{n_slices}")
    caption = "  ".join(parts)
    return caption if has_voxels else caption + " (not in mask)"


def _lesion_slice(image: Volume, labels: Volume, lesion: dict[str, Any]) -> int:
    """The image slice through the lesion centre; if the mask misses that slice, the slice with most voxels.

    The centre of mass of a non-convex lesion can fall on a slice the lesion does not touch; showing an empty
    outline there would look like a bug, so the fallback picks the slice where the lesion is largest.
    """
    n = image.shape[0]
    lesion_id = int(lesion.get("id", 0))
    z: int | None = None
    if lesion.get("center_mm") is not None:
        centre = image.lps_to_index_zyx(np.asarray(lesion["center_mm"], float).reshape(1, 3))[0]
        if np.all(np.isfinite(centre)):
            z = int(np.clip(np.rint(centre[0]), 0, n - 1))
            if (labels.array[z] == lesion_id).any():
                return z
    counts = (labels.array == lesion_id).sum(axis=(1, 2))
    if counts.any():
        return int(np.argmax(counts))
    return z if z is not None else n // 2


def _radiological_flips(direction: np.ndarray) -> tuple[bool, bool]:
    """(flip rows, flip columns) so an axial-like slice shows anterior up and the patient's left on the right.

    Only for slices whose column axis runs mainly left-right and row axis mainly anterior-posterior; other
    orientations (sagittal, coronal acquisitions) are shown as stored.
    """
    col_axis, row_axis = direction[:, 0], direction[:, 1]  # x index (columns), y index (rows), in LPS
    if int(np.argmax(np.abs(col_axis))) != 0 or int(np.argmax(np.abs(row_axis))) != 1:
        return False, False
    return bool(row_axis[1] < 0), bool(col_axis[0] < 0)


def _oriented(plane: np.ndarray, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    if flip_rows:
        plane = plane[::-1]
    if flip_cols:
        plane = plane[:, ::-1]
    return plane


__all__ = ["panel_layout", "render_overlay"]
