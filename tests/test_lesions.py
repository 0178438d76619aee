"""Lesion extraction on hand-made masks: connectivity, rings, borders, analytic sizes, LPS centres on odd grids."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from meddet.detection.lesions import extract_lesions, lesions_from_label_map, refine_outlines
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


def test_spheres_touching_only_at_a_corner_are_one_lesion_with_26_and_two_with_6_connectivity():
    # radius-4 balls whose centres are 5 voxels apart along each axis share no face or edge, only a corner
    a = _ball((24, 24, 24), (8, 8, 8), 4)
    b = _ball((24, 24, 24), (13, 13, 13), 4)
    assert not (a & b).any()
    prob = (a | b).astype(np.float32)
    one, labels26 = extract_lesions(Volume(prob), connectivity=26)
    two, labels6 = extract_lesions(Volume(prob), connectivity=6)
    assert len(one) == 1 and one[0]["voxels"] == int(a.sum() + b.sum())
    assert len(two) == 2 and sorted(l["voxels"] for l in two) == [int(a.sum()), int(b.sum())]
    assert len(extract_lesions(Volume(prob), connectivity=18)[0]) == 2
    assert set(np.unique(labels6.array)) == {0, 1, 2} and set(np.unique(labels26.array)) == {0, 1}
    with pytest.raises(ValueError):
        extract_lesions(Volume(prob), connectivity=8)


def test_overlapping_spheres_are_one_lesion_and_ids_follow_the_score():
    touching = _ball((40, 40, 60), (20, 20, 20), 8) | _ball((40, 40, 60), (20, 20, 36), 8)
    assert len(extract_lesions(Volume(touching.astype(np.float32)))[0]) == 1
    apart = _ball((40, 40, 60), (20, 20, 12), 6) | _ball((40, 40, 60), (20, 20, 45), 6)
    lesions, labels = extract_lesions(Volume(apart.astype(np.float32) * np.linspace(0.6, 0.9, 60, dtype=np.float32)))
    assert len(lesions) == 2 and [l["id"] for l in lesions] == [1, 2]
    assert lesions[0]["score"] > lesions[1]["score"] and lesions[0]["center_mm"][0] > 40  # right one scores higher
    assert set(np.unique(labels.array)) == {0, 1, 2}
    assert labels.array[20, 20, 45] == 1 and labels.array[20, 20, 12] == 2  # mask values match the list's ids


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


def _direction(kind):
    if kind == "flipped":
        return np.diag([-1.0, -1.0, 1.0])
    t = np.deg2rad(25)
    if kind == "oblique":  # rotated about y
        return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    return np.array([[1, 0, 0], [0, 1, np.sin(t)], [0, 0, np.cos(t)]])  # gantry tilt: z axis sheared, not orthogonal


@pytest.mark.parametrize("kind", ["flipped", "oblique", "tilted"])
def test_centre_and_box_in_lps_match_simpleitk(kind):
    prob = _ball((30, 30, 30), (12.0, 17.0, 9.0), 4).astype(np.float32)
    prob[12:14, 17:19, 9:16] = 1.0  # an arm so the centre of mass is not the ball's centre
    volume = Volume(prob, spacing=(0.7, 0.8, 1.5), origin=(30, -40, 12), direction=_direction(kind))
    image = sitk.GetImageFromArray(prob)  # built directly, not through Volume.to_sitk: an independent reference
    image.SetSpacing((0.7, 0.8, 1.5))
    image.SetOrigin((30, -40, 12))
    image.SetDirection(tuple(float(v) for v in _direction(kind).ravel()))
    lesion = extract_lesions(volume)[0][0]
    idx = np.argwhere(prob > 0).mean(0)
    expected = image.TransformContinuousIndexToPhysicalPoint([float(idx[2]), float(idx[1]), float(idx[0])])
    np.testing.assert_allclose(lesion["center_mm"], expected, atol=1e-3)
    # the box: min/max over the 8 corners of the index box, each mapped by SimpleITK
    low_idx, high_idx = np.argwhere(prob > 0).min(0), np.argwhere(prob > 0).max(0)
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])
               for c in itertools.product(*zip(low_idx, high_idx))]
    np.testing.assert_allclose(lesion["bbox_mm"][0], np.min(corners, axis=0), atol=1e-3)
    np.testing.assert_allclose(lesion["bbox_mm"][1], np.max(corners, axis=0), atol=1e-3)
    voxel_mm3 = 0.7 * 0.8 * 1.5 * abs(np.linalg.det(_direction(kind)))  # a sheared voxel is smaller
    assert lesion["volume_ml"] * 1000 == pytest.approx(int((prob > 0).sum()) * voxel_mm3, rel=1e-5)


def test_lesions_from_instance_and_binary_maps():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:5, 2:5, 2:5] = 3
    labels[10:14, 10:14, 10:14] = 7
    lesions = lesions_from_label_map(Volume(labels))
    assert [l["voxels"] for l in lesions] == [27, 64] and all(l["score"] == 1.0 for l in lesions)
    assert len(lesions_from_label_map(Volume((labels > 0).astype(np.uint8)))) == 2
    # one instance in two pieces stays one nodule in an instance map, two in a binary map
    split = np.zeros((20, 20, 20), np.uint8)
    split[2:4, 2:4, 2:4] = 1
    split[10:12, 10:12, 10:12] = 1
    assert len(lesions_from_label_map(Volume(split), binary=False)) == 1
    assert len(lesions_from_label_map(Volume(split), binary=True)) == 2
    assert lesions_from_label_map(Volume(np.zeros((4, 4, 4), np.uint8))) == []


def test_refined_outlines_shrink_low_level_components_to_the_network_boundary():
    """Two blurred balls taken at 0.05: the strong one (peak 0.9) is redrawn at the level, the faint one (peak 0.3)
    at half its peak; sizes and centres are measured again, scores and other keys kept."""
    shape, spacing = (40, 40, 80), (1.0, 1.0, 1.0)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    strong = 0.9 / (1 + np.exp((np.sqrt((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2) - 6.0) / 1.0))
    faint = 0.3 / (1 + np.exp((np.sqrt((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 60) ** 2) - 4.0) / 1.0))
    probability = Volume((strong + faint).astype(np.float32), spacing=spacing)
    lesions, instances = extract_lesions(probability, 0.05)
    for lesion in lesions:
        lesion["candidate_score"], lesion["score"] = lesion["score"], 0.5 + lesion["id"] / 10  # as a two-stage model
    refined, labels = refine_outlines([dict(lesion) for lesion in lesions], instances, probability, level=0.3)
    by_x = sorted(refined, key=lambda lesion: lesion["center_mm"][0])
    before = sorted(lesions, key=lambda lesion: lesion["center_mm"][0])
    assert [lesion["score"] for lesion in by_x] == [lesion["score"] for lesion in before]
    # the strong ball at 0.3 of its 0.9 plateau: radius 6 + ln(2) mm; the faint one at 0.15: radius 4 mm
    assert by_x[0]["diameter_mm"] == pytest.approx(2 * (6 + np.log(2)), rel=0.05)
    assert by_x[1]["diameter_mm"] == pytest.approx(8.0, rel=0.08)
    for old, new in zip(before, by_x):
        assert new["diameter_mm"] < old["diameter_mm"] and new["voxels"] == (labels.array == new["id"]).sum()
        np.testing.assert_allclose(new["center_mm"], old["center_mm"], atol=0.1)
    assert set(np.unique(labels.array).tolist()) == {0, 1, 2}
    assert np.all(np.asarray(labels.array)[np.asarray(instances.array) == 0] == 0)  # only ever shrinks
