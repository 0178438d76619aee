"""CT display windows: named presets and the mapping of HU to [0, 1].

Why presets by name: radiologists think in "lung window", not in numbers, and a model's input normalisation is
easier to audit when it says which window it used. Width/level (WW/WL) follow the DICOM definition used by every
viewer: values below ``WL - WW/2`` are 0, above ``WL + WW/2`` are 1, linear in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meddet.errors import MeddetInputError


@dataclass(frozen=True)
class Window:
    """A display window in HU: ``width`` (WW) and ``level`` (WL, the centre)."""

    width: float
    level: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


WINDOW_PRESETS: dict[str, Window] = {
    "lung": Window(width=1500, level=-600),
    "mediastinum": Window(width=350, level=50),
    "bone": Window(width=3500, level=400),
    "brain": Window(width=80, level=40),
    "abdomen": Window(width=400, level=40),
}


def get_window(preset: str | None = None, width: float | None = None, level: float | None = None) -> Window:
    """A preset by name, or an explicit WW/WL; explicit values override nothing silently: give one or the other."""
    if preset is not None and (width is not None or level is not None):
        raise MeddetInputError("Give either a window preset name or explicit width/level, not both.")
    if preset is not None:
        key = preset.lower()
        if key not in WINDOW_PRESETS:
            raise MeddetInputError(
                f"Unknown window preset '{preset}'.", hint=f"Use one of: {', '.join(sorted(WINDOW_PRESETS))}."
            )
        return WINDOW_PRESETS[key]
    if width is None or level is None:
        raise MeddetInputError("A window needs both a width (WW) and a level (WL).")
    if width <= 0:
        raise MeddetInputError(f"Window width must be positive, got {width}.")
    return Window(width=float(width), level=float(level))


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to [0, 1] float32 through ``window`` (clipping outside it)."""
    out = (np.asarray(hu, dtype=np.float32) - np.float32(window.low)) / np.float32(window.width)
    return np.clip(out, 0.0, 1.0, out=out)
