"""Volume geometry: index ↔ LPS mapping, SimpleITK round trip, repr without identifying data."""

import numpy as np
import pytest
import SimpleITK as sitk

from meddet.volume import Volume


def _oblique_direction(deg: float = 20.0) -> np.ndarray:
    t = np.deg2rad(deg)
    rot_z = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    return rot_z @ rot_x


def test_index_to_lps_matches_simpleitk_for_oblique_volume():
    vol = Volume(np.zeros((7, 9, 11), np.int16), spacing=(0.7, 0.8, 2.5), origin=(-100, 50, 12), direction=_oblique_direction())
    image = vol.to_sitk()
    for zyx in [(0, 0, 0), (6, 8, 10), (3, 2, 5)]:
        expected = image.TransformIndexToPhysicalPoint([int(zyx[2]), int(zyx[1]), int(zyx[0])])
        np.testing.assert_allclose(vol.index_zyx_to_lps(np.array(zyx))[0], expected, atol=1e-9)
    point = vol.index_zyx_to_lps(np.array([2.5, 4.25, 1.5]))
    np.testing.assert_allclose(vol.lps_to_index_zyx(point)[0], [2.5, 4.25, 1.5], atol=1e-9)


def test_sitk_round_trip_keeps_everything():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    vol = Volume(array, spacing=(0.5, 0.6, 3.0), origin=(1, 2, 3), direction=_oblique_direction(), modality="CT")
    back = Volume.from_sitk(vol.to_sitk(), modality="CT")
    assert back.same_geometry(vol)
    np.testing.assert_array_equal(back.array, array)
    assert back.array[1, 2, 3] == array[1, 2, 3]  # [z, y, x] order is the numpy order of SimpleITK
    assert vol.to_sitk().GetPixel(3, 2, 1) == array[1, 2, 3]


def test_orientation_code_and_flips():
    assert Volume(np.zeros((2, 2, 2))).orientation_code() == "LPS"
    flipped = Volume(np.zeros((2, 2, 2)), direction=np.diag([-1.0, -1.0, 1.0]))
    assert flipped.orientation_code() == "RAS"
    # a flipped x axis maps index 1 to smaller x in LPS
    assert flipped.index_zyx_to_lps(np.array([0, 0, 1]))[0][0] == pytest.approx(-1.0)


def test_gantry_tilt_is_not_orthogonal():
    t = np.deg2rad(15)
    sheared = np.array([[1, 0, 0], [0, 1, np.sin(t)], [0, 0, np.cos(t)]])
    assert not Volume(np.zeros((2, 2, 2)), direction=sheared).is_orthogonal
    assert Volume(np.zeros((2, 2, 2)), direction=_oblique_direction()).is_orthogonal


def test_invalid_geometry_is_refused():
    with pytest.raises(ValueError):
        Volume(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(ValueError):
        Volume(np.zeros((2, 2, 2)), direction=np.zeros((3, 3)))


def test_repr_hides_patient_identity():
    vol = Volume(np.zeros((2, 2, 2)), metadata={"patient_id": "SECRET-42", "patient_name": "Doe^Jane", "series_uid": "1.2.3"})
    text = repr(vol)
    assert "SECRET-42" not in text and "Doe" not in text
    assert "1.2.3" in text


def test_with_array_keeps_geometry_and_copies_metadata():
    vol = Volume(np.zeros((2, 2, 2)), spacing=(1, 2, 3), metadata={"series_uid": "1"})
    other = vol.with_array(np.ones((2, 2, 2), np.uint8))
    assert other.same_geometry(vol)
    other.metadata["series_uid"] = "2"
    assert vol.metadata["series_uid"] == "1"
    assert sitk.GetArrayFromImage(other.to_sitk()).sum() == 8
