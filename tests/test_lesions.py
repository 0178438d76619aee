"""Lesion extraction on hand-made masks: connectivity, rings, borders, analytic sizes, LPS centres on odd grids."""

import numpy as np
import pytest
import SimpleITK as sitk

from meddet.detection.lesions import extract_lesions, lesions_from_label_map
from meddet.volume import Volume


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    sx, sy, sz = spacing
    return ((zz - centre[0]) * sz) ** 2 + ((yy - centre[1]) * sy) ** 2 + ((xx - centre[2]) * sx) ** 2 <= radius**2


def test_sphere_volume_diameter_and_centre_match_analytic_values():
    spacing = (0.5, 0.5, 0.5)
    prob = _ball((60, 60, 60), (30.0, 28.0, 31.0), 10.0, spacing).astype(np.float32) * 0.8
    lesions, labels = extract_lesions(Volume(prob, spacing=spacing, origin=(-10, 20, 5)), threshold=0.5)
    assert len(lesions) == 1
    lesion = lesions[0]
    assert lesion["volume_ml"] * 1000 == pytest.approx(4 / 3 * np.pi * 10**3, rel=0.03)
    assert lesion["diameter_mm"] == pytest.approx(20.0, rel=0.02)
    np.testing.assert_allclose(lesion["center_mm"], [-10 + 31 * 0.5, 20 + 28 * 0.5, 5 + 30 * 0.5], atol=1e-6)
    assert lesion["score"] == pytest.approx(0.8)
    assert labels.array.dtype == np.uint16 and int(labels.array.max()) == 1


def test_touching_diagonal_voxels_depend_on_connectivity():
    prob = np.zeros((5, 5, 5), np.float32)
    prob[1, 1, 1] = prob[2, 2, 2] = 0.9  # corner-touching only
    assert len(extract_lesions(Volume(prob), connectivity=26)[0]) == 1
    assert len(extract_lesions(Volume(prob), connectivity=6)[0]) == 2


def test_two_touching_spheres_are_one_lesion_and_separate_ones_two():
    touching = _ball((40, 40, 60), (20, 20, 20), 8) | _ball((40, 40, 60), (20, 20, 36), 8)
    assert len(extract_lesions(Volume(touching.astype(np.float32)))[0]) == 1
    apart = _ball((40, 40, 60), (20, 20, 12), 6) | _ball((40, 40, 60), (20, 20, 45), 6)
    lesions, labels = extract_lesions(Volume(apart.astype(np.float32) * np.linspace(0.6, 0.9, 60, dtype=np.float32)))
    assert len(lesions) == 2
    assert lesions[0]["score"] > lesions[1]["score"] and lesions[0]["center_mm"][0] > 40  # right one scores higher
    assert set(np.unique(labels.array)) == {0, 1, 2}
    assert labels.array[20, 20, 45] == 1 and labels.array[20, 20, 12] == 2  # ids follow the score order


def test_ring_is_one_lesion_with_centre_off_the_ring():
    zz, yy, xx = np.meshgrid(np.arange(5), np.arange(40), np.arange(40), indexing="ij")
    r = np.hypot(yy - 20, xx - 20)
    ring = ((r >= 8) & (r <= 10) & (zz == 2)).astype(np.float32)
    lesions, labels = extract_lesions(Volume(ring))
    assert len(lesions) == 1
    np.testing.assert_allclose(lesions[0]["center_mm"], [20, 20, 2], atol=1e-6)
    assert labels.array[2, 20, 20] == 0  # the centre is not on the lesion


def test_lesion_cut_by_the_border_and_min_size_filter():
    prob = _ball((20, 20, 20), (0, 10, 10), 5).astype(np.float32)
    prob[15, 15, 15] = 1.0  # a single voxel
    lesions, labels = extract_lesions(Volume(prob), min_volume_mm3=2)
    assert len(lesions) == 1 and lesions[0]["center_mm"][2] < 3  # centre pulled inside the image
    assert lesions[0]["bbox_mm"][0][2] == 0.0
    assert labels.array[15, 15, 15] == 0


@pytest.mark.parametrize("kind", ["flipped", "oblique"])
def test_centre_in_lps_matches_simpleitk(kind):
    if kind == "flipped":
        direction = np.diag([-1.0, -1.0, 1.0])
    else:
        t = np.deg2rad(25)
        direction = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    prob = _ball((30, 30, 30), (12.0, 17.0, 9.0), 4).astype(np.float32)
    volume = Volume(prob, spacing=(0.7, 0.8, 1.5), origin=(30, -40, 12), direction=direction)
    lesion = extract_lesions(volume)[0][0]
    idx = np.argwhere(prob > 0).mean(0)
    expected = volume.to_sitk().TransformContinuousIndexToPhysicalPoint([float(idx[2]), float(idx[1]), float(idx[0])])
    np.testing.assert_allclose(lesion["center_mm"], expected, atol=1e-3)
    low, high = np.array(lesion["bbox_mm"])
    assert np.all(low <= np.array(expected)) and np.all(np.array(expected) <= high)


def test_lesions_from_instance_and_binary_maps():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:5, 2:5, 2:5] = 3
    labels[10:14, 10:14, 10:14] = 7
    assert [l["voxels"] for l in lesions_from_label_map(Volume(labels))] == [27, 64]
    assert len(lesions_from_label_map(Volume((labels > 0).astype(np.uint8)))) == 2
