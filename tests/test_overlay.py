"""The PNG lesion overview: one panel per lesion (capped), a visible outline, radiological left-right convention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from meddet.export.overlay import CAPTION_INCHES, DPI, PANEL_INCHES, panel_layout, render_overlay
from meddet.volume import Volume

SHAPE = (6, 48, 40)  # z, y, x
SPACING = (0.8, 0.6, 2.0)  # non-square pixels: the aspect ratio must follow the spacing


def scene(n_lesions: int, direction: np.ndarray | None = None) -> tuple[Volume, Volume, list[dict]]:
    """Lung-like background with ``n_lesions`` small bright squares on slice 3, each its own label id."""
    direction = np.eye(3) if direction is None else direction
    ct = np.full(SHAPE, -850, np.int16)
    labels = np.zeros(SHAPE, np.uint16)
    image = Volume(ct, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=direction, modality="CT")
    lesions = []
    for i in range(n_lesions):
        y, x = 6 + 4 * (i % 9), 26 + (i % 3) * 3  # columns 26..34: the patient's left half when stored as LPS
        ct[3, y:y + 3, x:x + 3] = 30
        labels[3, y:y + 3, x:x + 3] = i + 1
        centre = image.index_zyx_to_lps([[3, y + 1, x + 1]])[0]
        lesions.append({"id": i + 1, "score": 0.5 + i / 100, "diameter_mm": 2.5, "center_mm": centre.tolist()})
    return image, image.with_array(labels), lesions


def red_pixels(png: np.ndarray) -> np.ndarray:
    rgb = png[..., :3].astype(int)
    return np.argwhere((rgb[..., 0] > 180) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110))


def expected_size(n_panels: int) -> tuple[int, int]:
    rows, cols = panel_layout(n_panels)
    return round(cols * PANEL_INCHES * DPI), round(rows * (PANEL_INCHES + CAPTION_INCHES) * DPI)


@pytest.mark.parametrize("n_lesions, n_panels", [(3, 3), (10, 8), (0, 1)])
def test_panels_and_outline(tmp_path, n_lesions, n_panels):
    image, labels, lesions = scene(n_lesions)
    out = render_overlay(image, labels, lesions, tmp_path / "overlay.png")
    with Image.open(out) as png:
        assert png.size == expected_size(n_panels)
        assert f"{n_panels} panel(s)" in png.text["Description"]
        pixels = np.asarray(png.convert("RGB"))
    if n_lesions:
        assert len(red_pixels(pixels)) > 10 * n_panels  # an outline in every panel
        assert pixels[..., 0].std() > 10  # not blank
    else:
        assert len(red_pixels(pixels)) == 0


def test_left_right_follows_radiological_convention(tmp_path):
    """The same lesion (patient's left) is drawn on the screen's right whether columns run to L or to R."""
    flipped = np.diag([-1.0, 1.0, 1.0])  # x index runs to the patient's right, as in RAS-stored NIfTI
    for name, direction in (("lps", None), ("flipped", flipped)):
        image, labels, lesions = scene(1)
        if direction is not None:  # same patient-space content, stored with columns reversed
            last = image.index_zyx_to_lps([[0, 0, SHAPE[2] - 1]])[0]
            image = image.with_array(image.array[:, :, ::-1].copy(), origin=tuple(last), direction=direction)
            labels = image.with_array(labels.array[:, :, ::-1].copy())
        out = render_overlay(image, labels, lesions, tmp_path / f"{name}.png")
        with Image.open(out) as png:
            pixels = np.asarray(png.convert("RGB"))
        columns = red_pixels(pixels)[:, 1]
        assert columns.size and columns.mean() > pixels.shape[1] / 2, name
