"""``meddet info``: a human-readable account of what meddet sees in a scan.

Why: before trusting any result a user should see the geometry meddet will work with (spacing, orientation, tilt,
HU range) and every warning the reader raised. Patient names and IDs are never shown.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meddet.io import read_volume
from meddet.volume import Volume


def _fmt(values, digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}f}" for v in values) + ")"


def volume_summary(volume: Volume) -> dict[str, str]:
    """The facts ``meddet info`` prints, as strings (also handy in reports)."""
    array = np.asarray(volume.array)
    p1, p99 = np.percentile(array, [1, 99]) if array.size else (0.0, 0.0)
    meta = volume.safe_metadata()
    rows = {
        "Modality": volume.modality,
        "Series UID": str(meta.get("series_uid", "—")),
        "Description": str(meta.get("series_description", "—")),
        "Size (x, y, z)": " × ".join(str(s) for s in volume.shape[::-1]),
        "Spacing (x, y, z) mm": _fmt(volume.spacing, 4),
        "Slice thickness mm": str(meta.get("slice_thickness", "—")),
        "Origin (LPS mm)": _fmt(volume.origin, 2),
        "Orientation": volume.orientation_code() + ("" if volume.is_orthogonal else " (sheared: gantry tilt)"),
        "Direction": " ".join(_fmt(row, 4) for row in volume.direction),
        "Extent (x, y, z) mm": _fmt(np.array(volume.shape[::-1]) * np.array(volume.spacing), 1),
        "Intensity min / max": f"{float(array.min()):.1f} / {float(array.max()):.1f}" if array.size else "—",
        "Intensity 1st / 99th pct": f"{float(p1):.1f} / {float(p99):.1f}",
        "Data type": str(array.dtype),
    }
    if "gantry_tilt_deg" in meta:
        rows["Gantry tilt"] = f"{float(meta['gantry_tilt_deg']):.2f}°"
    if "transfer_syntax" in meta:
        rows["Transfer syntax"] = str(meta["transfer_syntax"])
    return rows


def describe(path: Path, series_uid: str | None, console: Console) -> Volume:
    """Read ``path`` and print its summary table and warnings; returns the volume."""
    io_logger = logging.getLogger("meddet.io")
    previous = io_logger.level
    io_logger.setLevel(logging.ERROR)  # the warnings are printed below, once, in the report
    try:
        volume = read_volume(path, series_uid=series_uid)
    finally:
        io_logger.setLevel(previous)
    table = Table(title=f"meddet info: {escape(str(path))}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in volume_summary(volume).items():
        table.add_row(key, escape(value))
    console.print(table)
    if volume.warnings:
        console.print("[bold yellow]Warnings:[/]")
        for warning in volume.warnings:
            console.print(f"  • {escape(warning)}")
    else:
        console.print("No warnings.")
    return volume
