"""The DICOM reader on good input: geometry, pixels, rescale, compression, multi-frame, series listing."""

from __future__ import annotations

import logging
import random
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid

from dicom_factory import (
    SPACING,
    add_enhanced_geometry,
    edit,
    pattern_volume,
    rotation,
    stack_single_file,
    data_file,
    tilted_direction,
    write_series,
    zip_folder,
)
from meddet.io.dicom_reader import read_dicom
from meddet.io.dicom_scan import list_dicom_series


# ---------------------------------------------------------------------------------------------------- classic series
def test_axial_series_round_trip(tmp_path):
    vol = pattern_volume()
    paths = write_series(vol, tmp_path / "ax", series_description="thin lung", patient_name="DOE^JANE")
    out = read_dicom(tmp_path / "ax")

    assert out.array.dtype == np.int16  # integral rescale of 12-bit data: exact HU in int16
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.same_geometry(vol, atol=1e-4)
    np.testing.assert_allclose(out.spacing, SPACING)
    np.testing.assert_allclose(out.direction, np.eye(3))
    assert out.modality == "CT"
    assert out.warnings == []

    md = out.metadata
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert md["series_uid"] == headers[0].SeriesInstanceUID
    assert md["study_uid"] == headers[0].StudyInstanceUID
    assert md["series_description"] == "thin lung"
    assert md["patient_name"] == "DOE^JANE"
    assert md["patient_id"] == headers[0].PatientID
    assert md["source_files"] == [str(p) for p in paths]
    assert md["sop_instance_uids"] == [h.SOPInstanceUID for h in headers]
    assert md["slice_thickness"] == pytest.approx(2.5)
    assert (md["window_center"], md["window_width"]) == (-600.0, 1500.0)
    assert md["manufacturer"] == "meddet"
    assert md["transfer_syntax"] == pydicom.uid.ExplicitVRLittleEndian


def test_patient_identity_never_in_warnings_or_logs(tmp_path, caplog):
    vol = pattern_volume(direction=tilted_direction(12))  # a tilt produces a warning
    write_series(vol, tmp_path / "s", patient_name="SECRETNAME^ZOË", patient_id="SECRET-ID-42")
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    with caplog.at_level(logging.DEBUG, logger="meddet"):
        out = read_dicom(tmp_path / "s")
    assert out.warnings  # the test would be vacuous without warnings
    text = "\n".join(out.warnings + [r.getMessage() for r in caplog.records] + [repr(out)])
    assert "SECRETNAME" not in text and "SECRET-ID-42" not in text
    assert out.metadata["patient_name"] == "SECRETNAME^ZOË"


def test_oblique_series_maps_points_like_simpleitk(tmp_path):
    direction = rotation("z", 30) @ rotation("x", 20)
    vol = pattern_volume(direction=direction, origin=(10.0, -20.0, 35.0))
    write_series(vol, tmp_path / "obl")
    out = read_dicom(tmp_path / "obl")

    np.testing.assert_array_equal(out.array, vol.array)
    np.testing.assert_allclose(out.direction, direction, atol=1e-5)
    np.testing.assert_allclose(out.origin, vol.origin, atol=1e-3)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "obl")))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), out.array)
    rng = np.random.default_rng(3)
    corners = out.index_zyx_to_lps(np.array([[0, 0, 0], [7, 31, 31], [3.5, 10.2, 20.7]]))
    points = np.vstack([corners, corners[0] + rng.uniform(-5, 25, size=(5, 3))])
    for point in points:
        ours = out.lps_to_index_zyx(point)[0]
        theirs = np.array(image.TransformPhysicalPointToContinuousIndex(tuple(point)))[::-1]
        np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_gantry_tilted_series_keeps_sheared_grid(tmp_path):
    direction = tilted_direction(20.0)
    vol = pattern_volume(direction=direction)
    paths = write_series(vol, tmp_path / "tilt", extra={"GantryDetectorTilt": 20.0})
    out = read_dicom(tmp_path / "tilt")

    np.testing.assert_array_equal(out.array, vol.array)
    np.testing.assert_allclose(out.direction[:, 2], [0.0, 0.0, 1.0], atol=1e-5)  # the step, not the normal
    np.testing.assert_allclose(out.direction[:, :2], direction[:, :2], atol=1e-5)
    assert not out.is_orthogonal
    assert out.spacing[2] == pytest.approx(2.5, abs=1e-4)
    assert out.metadata["gantry_tilt_deg"] == pytest.approx(20.0, abs=0.01)
    assert any("tilt" in w and "20.00" in w for w in out.warnings)
    # The first voxel of every slice lies exactly at that file's ImagePositionPatient.
    for k, path in enumerate(paths):
        ipp = np.array(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(out.index_zyx_to_lps([k, 0, 0])[0], ipp, atol=1e-3)


def test_rescale_applied_per_slice(tmp_path):
    vol = pattern_volume()
    paths = write_series(vol, tmp_path / "s")
    edit(paths[2], RescaleIntercept=-1000)  # same stored values, 24 HU higher
    out = read_dicom(tmp_path / "s")
    expected = vol.array.astype(np.int32)
    expected[2] += 24
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, expected)

    edit(paths[5], RescaleSlope=0.5)  # a fractional slope: float32 output, exact values
    out = read_dicom(tmp_path / "s")
    assert out.array.dtype == np.float32
    stored = vol.array[5].astype(np.float64) + 1024
    np.testing.assert_allclose(out.array[5], stored * 0.5 - 1024)
    np.testing.assert_allclose(out.array[2], expected[2])


def test_zip_archive_reads_like_folder(tmp_path):
    vol = pattern_volume()
    write_series(vol, tmp_path / "study" / "series1")
    archive = zip_folder(tmp_path / "study", tmp_path / "study.zip")
    out = read_dicom(archive)
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.same_geometry(vol, atol=1e-4)
    assert out.metadata["source_files"][0] == f"{archive}::series1/slice_0000.dcm"
    [summary] = list_dicom_series(archive)
    assert (summary.frame_count, summary.rows, summary.columns, summary.modality) == (8, 32, 32, "CT")


def test_series_selected_by_uid_and_non_image_objects_ignored(tmp_path):
    a, b = pattern_volume(seed=1), pattern_volume(seed=2, shape=(6, 32, 32))
    write_series(a, tmp_path / "a", series_description="A", uid_seed="a")
    write_series(b, tmp_path / "b", series_description="B", uid_seed="b")
    shutil.copy(data_file("liver.dcm"), tmp_path / "seg")  # a SEG object
    shutil.copy(data_file("test-SR.dcm"), tmp_path / "report")  # a structured report
    uid_b = pydicom.dcmread(tmp_path / "b" / "slice_0000.dcm", stop_before_pixels=True).SeriesInstanceUID

    out = read_dicom(tmp_path, series_uid=uid_b)
    np.testing.assert_array_equal(out.array, b.array)
    assert any("SEG" in w for w in out.warnings)
    assert any("SR" in w for w in out.warnings)

    summaries = list_dicom_series(tmp_path)
    images = [s for s in summaries if s.is_image]
    assert sorted((s.description, s.frame_count, s.rows, s.columns) for s in images) == [
        ("A", 8, 32, 32), ("B", 6, 32, 32)]
    seg = [s for s in summaries if s.modality == "SEG"]
    assert len(seg) == 1 and not seg[0].is_image and seg[0].frame_count == 3
    assert summaries[0].is_image  # image series listed first


# ---------------------------------------------------------------------------------------------------- multi-frame
def test_enhanced_ct_geometry_from_functional_groups():
    path = data_file("eCT_Supplemental.dcm")
    out = read_dicom(path)
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float) for f in frames]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]

    assert out.shape == (2, 512, 512)
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([p @ normal for p in positions])  # sorted along the normal: frame 2 first here
    assert list(order) == [1, 0]
    np.testing.assert_allclose(out.origin, positions[order[0]])
    np.testing.assert_allclose(out.direction[:, 0], iop[:3])
    np.testing.assert_allclose(out.direction[:, 1], iop[3:])
    np.testing.assert_allclose(out.direction[:, 2], normal)
    np.testing.assert_allclose(out.spacing, (ps[1], ps[0], np.linalg.norm(positions[1] - positions[0])))
    transform = shared.PixelValueTransformationSequence[0]
    expected = ds.pixel_array[order].astype(np.float64) * float(transform.RescaleSlope) + float(
        transform.RescaleIntercept)
    np.testing.assert_array_equal(out.array, expected)
    assert out.metadata["frame_numbers"] == [2, 1]
    assert (out.metadata["window_center"], out.metadata["window_width"]) == (49.0, 102.0)


def test_enhanced_mr_with_functional_groups(tmp_path):
    # pydicom-data's emri_small has no functional groups (see test_bad_input); give it the ones a scanner writes.
    src = data_file("emri_small.dcm")
    written = add_enhanced_geometry(src, tmp_path / "emri.dcm", orientation=(0, 1, 0, 0, 0, -1))
    out = read_dicom(tmp_path / "emri.dcm")
    assert out.shape == (10, 64, 64)
    assert out.modality == "MR"
    np.testing.assert_allclose(out.spacing, (0.6, 0.5, 1.2))
    np.testing.assert_allclose(out.origin, written["positions"][0])
    np.testing.assert_allclose(out.direction, np.column_stack([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]), atol=1e-9)
    np.testing.assert_array_equal(out.array, pydicom.dcmread(src).pixel_array)


@pytest.mark.parametrize("per_frame_rescale", [False, True])
def test_legacy_converted_enhanced_ct_matches_classic_series(tmp_path, per_frame_rescale):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    vol = pattern_volume(direction=rotation("y", 15))
    paths = write_series(vol, tmp_path / "classic")
    expected = vol.array.astype(np.int32)
    if per_frame_rescale:  # slice 3 rescaled differently: goes to the per-frame functional groups
        edit(paths[3], RescaleIntercept=-1000)
        expected[3] += 24
    datasets = [pydicom.dcmread(p) for p in paths]
    random.Random(0).shuffle(datasets)
    enhanced = LegacyConvertedEnhancedCTImage(datasets, generate_uid(), 2, generate_uid(), 1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    assert ("PixelValueTransformationSequence" in shared) != per_frame_rescale
    out = read_dicom(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(out.array, expected)
    assert out.same_geometry(vol, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- compression
@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_decodes_to_uncompressed_pixels(tmp_path, syntax):
    vol = pattern_volume(shape=(4, 32, 32))
    paths = write_series(vol, tmp_path / "s")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    out = read_dicom(tmp_path / "s")
    assert out.metadata["transfer_syntax"] == syntax
    np.testing.assert_array_equal(out.array, vol.array)


@pytest.mark.parametrize(
    "twin",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
     "MR_small_implicit.dcm"],
)
def test_pydicom_compressed_twins_match_uncompressed(tmp_path, twin):
    stack_single_file(data_file("MR_small.dcm"), tmp_path / "ref")
    stack_single_file(data_file(twin), tmp_path / "twin")
    ref, out = read_dicom(tmp_path / "ref"), read_dicom(tmp_path / "twin")
    assert out.shape == (3, 64, 64)
    twin_header = pydicom.dcmread(data_file(twin), stop_before_pixels=True)
    assert out.metadata["transfer_syntax"] == twin_header.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(out.array, ref.array)
    np.testing.assert_array_equal(out.array[1], pydicom.dcmread(data_file("MR_small.dcm")).pixel_array)


@pytest.mark.parametrize(
    "twin", ["emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm",
             "emri_small_big_endian.dcm"]
)
def test_enhanced_mr_compressed_twins_match(tmp_path, twin):
    add_enhanced_geometry(data_file("emri_small.dcm"), tmp_path / "ref.dcm")
    add_enhanced_geometry(data_file(twin), tmp_path / "twin.dcm")
    ref, out = read_dicom(tmp_path / "ref.dcm"), read_dicom(tmp_path / "twin.dcm")
    np.testing.assert_array_equal(out.array, ref.array)
    assert out.same_geometry(ref)


def test_jpeg_lossless_file_decodes(tmp_path):
    # Process 14 SV1, as many CT scanners export; no uncompressed twin is bundled, so compare with the raw decode.
    src = data_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    stack_single_file(src, tmp_path / "s", n=2)
    out = read_dicom(tmp_path / "s")
    assert out.shape == (2, 768, 1024)
    np.testing.assert_array_equal(out.array[0], pydicom.dcmread(src).pixel_array)


def test_jpeg_baseline_series_close_to_original(tmp_path):
    """8-bit lossy JPEG baseline (encoded here with Pillow) decodes to the original within JPEG error."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    yy, xx = np.mgrid[0:32, 0:32]
    original = np.stack([(4 * xx + 3 * yy + 10 * k) % 200 + 20 for k in range(4)]).astype(np.uint8)
    vol = pattern_volume(shape=(4, 32, 32))
    paths = write_series(vol, tmp_path / "s")
    for k, path in enumerate(paths):
        buf = io.BytesIO()
        Image.fromarray(original[k]).save(buf, format="JPEG", quality=95)
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleIntercept = 0
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(path)
    out = read_dicom(tmp_path / "s")
    assert out.shape == (4, 32, 32)
    diff = np.abs(out.array.astype(float) - original)
    assert diff.mean() < 3 and diff.max() < 30
