"""NIfTI / NRRD / MHA: geometry survives a round trip, bad files give MeddetInputError."""

import gzip

import numpy as np
import pytest

from meddet.errors import MeddetInputError
from meddet.io import read_volume, write_volume
from meddet.volume import Volume


def _volume(direction=None) -> Volume:
    rng = np.random.default_rng(0)
    t = np.deg2rad(25)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    return Volume(
        rng.integers(-1000, 1000, (6, 10, 12)).astype(np.int16),
        spacing=(0.73, 0.81, 2.5),
        origin=(-120.5, 33.25, -7.0),
        direction=rot if direction is None else direction,
        modality="CT",
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_world_points(tmp_path, suffix):
    vol = _volume()
    path = write_volume(vol, tmp_path / f"scan{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    point = np.array([[-118.0, 36.0, -3.0]])
    np.testing.assert_allclose(back.lps_to_index_zyx(point), vol.lps_to_index_zyx(point), atol=1e-4)


def test_nifti_refuses_sheared_grid_but_nrrd_keeps_it(tmp_path):
    t = np.deg2rad(12)
    vol = _volume(direction=np.array([[1, 0, 0], [0, 1, np.sin(t)], [0, 0, np.cos(t)]]))
    with pytest.raises(MeddetInputError, match="gantry-tilted"):
        write_volume(vol, tmp_path / "tilted.nii.gz")
    back = read_volume(write_volume(vol, tmp_path / "tilted.nrrd"))
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_file_gives_clear_error(tmp_path, suffix):
    path = write_volume(_volume(), tmp_path / f"scan{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MeddetInputError, match="missing or damaged"):
        read_volume(path)


def test_not_an_image_gives_clear_error(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is a text file, not a scan"))
    with pytest.raises(MeddetInputError, match="could not be read"):
        read_volume(path)


def test_2d_image_is_refused(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(path))
    with pytest.raises(MeddetInputError, match="2 dimensions"):
        read_volume(path)


def test_unknown_output_format(tmp_path):
    with pytest.raises(MeddetInputError, match="Unknown output format"):
        write_volume(_volume(), tmp_path / "scan.jpg")


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(MeddetInputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(MeddetInputError, match="empty"):
        read_volume(empty)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_nan_voxels_are_refused(tmp_path, suffix):
    # ITK's NIfTI reader would turn them into 0 (soft tissue in a CT) without a word; MetaImage keeps them
    import SimpleITK as sitk

    array = np.full((6, 8, 8), -800.0, np.float32)
    array[3] = np.nan
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(MeddetInputError, match="64 voxel.*not numbers"):
        read_volume(path)
    array[3] = -800.0
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert float(read_volume(path).array.min()) == -800.0


def test_a_header_without_spacing_is_refused(tmp_path):
    # ITK and nibabel would read a NIfTI spacing of 0 as 1 mm, so every size in mm would be silently wrong
    import nibabel as nib

    image = nib.Nifti1Image(np.full((8, 8, 6), -800, np.int16), np.diag([0.7, 0.7, 2.5, 1.0]))
    image.header["pixdim"][3] = 0.0
    nib.save(image, tmp_path / "lost.nii.gz")
    with pytest.raises(MeddetInputError, match="no usable voxel spacing.*0\\.7, 0\\.7, 0"):
        read_volume(tmp_path / "lost.nii.gz")
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementSpacing = 1 1 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    (tmp_path / "lost.mha").write_bytes(header + bytes(128))
    with pytest.raises(MeddetInputError, match="no usable voxel spacing"):
        read_volume(tmp_path / "lost.mha")
    (tmp_path / "fine.mha").write_bytes(header.replace(b"1 1 0", b"1 1 2") + bytes(128))
    assert read_volume(tmp_path / "fine.mha").spacing == (1.0, 1.0, 2.0)
