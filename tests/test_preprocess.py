"""Windowing, normalisation, resampling and lung cropping, against hand-computed values and geometry."""

import numpy as np
import pytest

from meddet.errors import MeddetInputError
from meddet.preprocess.crop import body_mask, bounding_box, crop, lung_bounding_box, lung_mask
from meddet.preprocess.normalize import clip_zscore, percentile_clip, zscore
from meddet.preprocess.resample import correct_tilt, resample_like, resample_to_spacing
from meddet.preprocess.windowing import WINDOW_PRESETS, apply_window, get_window
from meddet.volume import Volume


# ---------------------------------------------------------------- windows
@pytest.mark.parametrize(
    "preset, hu, expected",
    [
        ("lung", [-1350, -975, -600, 150, 500, -2000], [0.0, 0.25, 0.5, 1.0, 1.0, 0.0]),  # WW1500 WL-600
        ("bone", [-1350, 400, 1275, 2150], [0.0, 0.5, 0.75, 1.0]),  # WW3500 WL400
        ("mediastinum", [-125, 50, 137.5, 225], [0.0, 0.5, 0.75, 1.0]),  # WW350 WL50
        ("brain", [0, 40, 60, 80], [0.0, 0.5, 0.75, 1.0]),  # WW80 WL40
        ("abdomen", [-160, 40, 140, 240], [0.0, 0.5, 0.75, 1.0]),  # WW400 WL40
    ],
)
def test_window_presets_match_hand_computed_values(preset, hu, expected):
    np.testing.assert_allclose(apply_window(np.array(hu, float), get_window(preset)), expected, atol=1e-6)


def test_seed_window_numbers():
    assert (WINDOW_PRESETS["lung"].width, WINDOW_PRESETS["lung"].level) == (1500, -600)
    assert (WINDOW_PRESETS["bone"].width, WINDOW_PRESETS["bone"].level) == (3500, 400)


def test_explicit_window_and_errors():
    w = get_window(width=100, level=0)
    np.testing.assert_allclose(apply_window(np.array([-50.0, 0.0, 25.0]), w), [0.0, 0.5, 0.75])
    with pytest.raises(MeddetInputError, match="Unknown window preset"):
        get_window("liverish")
    with pytest.raises(MeddetInputError, match="positive"):
        get_window(width=0, level=10)
    with pytest.raises(MeddetInputError, match="not both"):
        get_window("lung", width=10, level=0)


# ---------------------------------------------------------------- normalisation
def test_zscore_and_percentile_clip():
    rng = np.random.default_rng(1)
    image = rng.normal(100, 20, (20, 20, 20))
    z = zscore(image)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-4
    image[0, 0, 0] = 1e6
    clipped = percentile_clip(image, 0.5, 99.5)
    assert clipped.max() < 1e3 and clipped.max() == pytest.approx(np.percentile(image, 99.5), rel=1e-6)
    mask = np.zeros(image.shape, bool)
    mask[5:10] = True
    assert abs(float(zscore(image, mask)[mask].mean())) < 1e-4
    np.testing.assert_allclose(clip_zscore(np.array([-2000.0, 0.0, 5000.0]), -1000, 1000, 0, 500), [-2.0, 0.0, 2.0])


# ---------------------------------------------------------------- resampling
def _blob_volume(direction=None) -> tuple[Volume, np.ndarray]:
    shape = (30, 40, 44)
    spacing = (0.8, 0.9, 2.5)  # x, y, z
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre_zyx = np.array([14.0, 21.0, 19.0])
    r2 = ((zz - centre_zyx[0]) * spacing[2]) ** 2 + ((yy - centre_zyx[1]) * spacing[1]) ** 2 + ((xx - centre_zyx[2]) * spacing[0]) ** 2
    image = np.exp(-r2 / (2 * 6.0**2)).astype(np.float32) * 1000
    vol = Volume(image, spacing=spacing, origin=(-10, 20, -30), direction=np.eye(3) if direction is None else direction)
    return vol, vol.index_zyx_to_lps(centre_zyx)[0]


def _centroid_lps(vol: Volume) -> np.ndarray:
    a = np.asarray(vol.array, float)
    idx = np.array(np.nonzero(a > 0.5 * a.max())).T
    w = a[a > 0.5 * a.max()]
    return vol.index_zyx_to_lps((idx * w[:, None]).sum(0) / w.sum())[0]


@pytest.mark.parametrize("method", ["linear", "bspline"])
def test_resample_keeps_extent_and_world_position(method):
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    vol, centre = _blob_volume(rot)
    out = resample_to_spacing(vol, (1.5, 1.5, 1.5), interpolation=method)
    assert out.spacing == (1.5, 1.5, 1.5)
    np.testing.assert_allclose(np.array(out.shape[::-1]) * 1.5, np.array(vol.shape[::-1]) * vol.spacing, atol=1.5)
    np.testing.assert_allclose(_centroid_lps(out), centre, atol=0.3)
    back = resample_like(out, vol)
    assert back.same_geometry(vol)
    assert np.abs(back.array - vol.array).max() < 60  # of a 1000-high smooth blob


def test_label_resampling_keeps_label_values_and_position():
    vol, centre = _blob_volume()
    labels = vol.with_array((vol.array > 500).astype(np.uint8) * 3)
    for method in ("nearest", "label_linear"):
        out = resample_to_spacing(labels, (1.2, 1.2, 1.2), is_label=True, interpolation=method)
        assert set(np.unique(out.array)) == {0, 3}
        idx = np.array(np.nonzero(out.array)).T.mean(0)
        np.testing.assert_allclose(out.index_zyx_to_lps(idx)[0], centre, atol=0.7)
    with pytest.raises(MeddetInputError):
        resample_to_spacing(labels, (1, 1, 1), is_label=True, interpolation="linear")


def test_bad_target_spacing_is_refused():
    vol, _ = _blob_volume()
    with pytest.raises(MeddetInputError, match="Target spacing"):
        resample_to_spacing(vol, (0, 1, 1))


def test_correct_tilt_gives_orthogonal_grid_with_same_anatomy():
    t = np.deg2rad(15)
    sheared = np.array([[1, 0, 0], [0, 1, np.sin(t)], [0, 0, np.cos(t)]])
    vol, centre = _blob_volume(sheared)
    out = correct_tilt(vol)
    assert out.is_orthogonal and not vol.is_orthogonal
    np.testing.assert_allclose(out.direction[:, 2], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(_centroid_lps(out), centre, atol=0.5)


# ---------------------------------------------------------------- masks and cropping
def _toy_chest() -> Volume:
    shape = (24, 96, 112)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, -1000.0)
    body = ((yy - 48) / 40) ** 2 + ((xx - 56) / 50) ** 2 < 1
    image[body] = 40
    for cx in (34, 78):
        lung = ((yy - 48) / 28) ** 2 + ((xx - cx) / 16) ** 2 + ((zz - 12) / 14) ** 2 < 1
        image[lung] = -850
    image[(yy - 48) ** 2 + (xx - 30) ** 2 < 9] = 40  # a vessel inside the left lung: a hole the mask must fill
    image[90:, :, :] = -1000
    image[:, 92:, 20:92] = 300  # a table below the body, touching the edge
    return Volume(image.astype(np.int16), spacing=(1.5, 1.5, 2.0), origin=(0, 0, 0))


def test_lung_and_body_masks_on_a_toy_chest():
    vol = _toy_chest()
    lungs = lung_mask(vol)
    body = body_mask(vol)
    assert lungs[12, 48, 34] and lungs[12, 48, 78]  # both lungs
    assert lungs[12, 48, 30]  # the vessel hole is filled
    assert not lungs[12, 48, 56]  # mediastinum
    assert not lungs[12, 5, 5]  # outside air
    assert body[12, 48, 56] and not body[12, 94, 56]  # the table is not body
    box = lung_bounding_box(vol, margin_mm=3)
    assert box is not None
    assert box[2].start <= 34 - 16 and box[2].stop >= 78 + 16
    assert box[2].start > 5 and box[1].start > 10  # smaller than the image: outside air cropped


def test_lung_box_of_a_thin_slice_scan_covers_the_full_resolution_lungs():
    """0.8 mm slices, 128² pixels: the box comes from every third slice and every second pixel, yet it contains the
    full-resolution lung mask's box with its margin, and is at most one coarse block larger on each side."""
    shape, spacing = (90, 128, 144), (1.2, 1.2, 0.8)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, -1000.0)
    image[((yy - 64) / 56) ** 2 + ((xx - 72) / 64) ** 2 < 1] = 40
    for cx in (46, 98):
        image[((yy - 64) / 36) ** 2 + ((xx - cx) / 20) ** 2 + ((zz - 47) / 30) ** 2 < 1] = -850
    vol = Volume(image.astype(np.int16), spacing=spacing)
    box = lung_bounding_box(vol, margin_mm=3)
    full = bounding_box(lung_mask(vol), (4, 3, 3))  # 3 mm: 4 slices of 0.8 mm, 3 pixels of 1.2 mm
    assert box is not None and full is not None
    for coarse, exact, block in zip(box, full, (3, 2, 2)):
        assert coarse.start <= exact.start and coarse.stop >= exact.stop
        assert exact.start - coarse.start <= 2 * block and coarse.stop - exact.stop <= 2 * block
    assert box[0].start > 0 and box[0].stop < shape[0]  # the slices above and below the lungs are cropped


def test_crop_keeps_world_positions():
    vol = _toy_chest()
    box = (slice(3, 20), slice(10, 80), slice(7, 100))
    sub = crop(vol, box)
    np.testing.assert_allclose(sub.index_zyx_to_lps(np.array([0, 0, 0])), vol.index_zyx_to_lps(np.array([3, 10, 7])))
    assert sub.array[2, 3, 4] == vol.array[5, 13, 11]


def test_bounding_box_margin_and_empty_mask():
    mask = np.zeros((10, 10, 10), bool)
    assert bounding_box(mask) is None
    mask[4:6, 2:3, 8:9] = True
    assert bounding_box(mask, (1, 1, 5)) == (slice(3, 7), slice(1, 4), slice(3, 10))
