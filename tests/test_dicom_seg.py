"""DICOM SEG export: the SEG must reference the source instances and lie exactly over them, whatever the geometry.

Each geometry case writes a small CT series (8 × 32 × 32) with two known lesions, reads it with meddet's reader,
writes the SEG and reads it back with highdicom. The checks are the ones a viewer depends on: referenced SOP
Instance UIDs, per-frame ImagePositionPatient and shared ImageOrientationPatient equal to those of the source slices,
pixel spacing and slice thickness, and the label voxels recovered exactly per source instance.
"""

from __future__ import annotations

import zipfile

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_factory import rotation, tilted_direction, write_series
from meddet.errors import MeddetInputError
from meddet.export.dicom_seg import write_dicom_seg
from meddet.io.dicom_reader import read_dicom
from meddet.volume import Volume

SHAPE = (8, 32, 32)  # z, y, x
SPACING = (0.8, 0.7, 2.5)  # x, y, z mm
ORIGIN = (-12.5, -11.0, -40.0)
# Lesion 1: a cube; lesion 2: a sphere-ish blob, higher score, so it must become segment 1.
LESIONS = [
    {"id": 1, "score": 0.61, "diameter_mm": 3.1, "volume_ml": 0.016, "center_mm": [0, 0, 0]},
    {"id": 2, "score": 0.93, "diameter_mm": 5.2, "volume_ml": 0.074, "center_mm": [0, 0, 0]},
]
GEOMETRIES = {
    "axial": np.eye(3),
    "oblique": rotation("x", 20.0) @ rotation("z", 10.0),
    "tilted": tilted_direction(15.0),
}


def label_array() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:5, 4:9, 5:10] = 1
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    labels[((z - 5) * 2.5) ** 2 + ((y - 20) * 0.7) ** 2 + ((x - 21) * 0.8) ** 2 <= 3.0**2] = 2
    return labels


def make_series(folder, direction: np.ndarray) -> tuple[Volume, Volume]:
    """Write the CT (lesions brighter than lung) and return (source Volume as read back, labels on its grid)."""
    labels = label_array()
    ct = np.where(labels > 0, 40, -800).astype(np.int16)
    write_series(Volume(ct, spacing=SPACING, origin=ORIGIN, direction=direction, modality="CT"), folder)
    source = read_dicom(folder)
    return source, source.with_array(labels)


def source_headers(source: Volume) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in source.metadata["source_files"]]


def segment_to_label(seg: hd.seg.Segmentation) -> dict[int, int]:
    """Segment number -> lesion id, from the segment labels ('Lung nodule <id>')."""
    return {int(item.SegmentNumber): int(item.SegmentLabel.rsplit(" ", 1)[1]) for item in seg.SegmentSequence}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_lies_over_source_slices(tmp_path, geometry):
    source, labels = make_series(tmp_path / "ct", GEOMETRIES[geometry])
    if geometry == "tilted":
        assert not source.is_orthogonal  # the reader kept the shear: the case TotalSegmentator #610 got wrong
    out = write_dicom_seg(labels, source, tmp_path / "seg.dcm", lesions=LESIONS, algorithm_version="9.9")
    assert out == tmp_path / "seg.dcm" and out.is_file()
    seg = hd.seg.segread(out)
    headers = source_headers(source)
    uids = [str(h.SOPInstanceUID) for h in headers]

    # Identity and description.
    assert seg.SeriesDescription == "meddet lung nodules"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    referenced = [item.ReferencedSOPInstanceUID
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert sorted(referenced) == sorted(uids)

    # Segments: one per lesion, highest score first, SNOMED nodule, automatic with algorithm identification.
    mapping = segment_to_label(seg)
    assert mapping == {1: 2, 2: 1}
    first = seg.SegmentSequence[0]
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert first.SegmentAlgorithmType == "AUTOMATIC"
    assert first.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "9.9"
    assert "score 0.93" in first.SegmentDescription and "diameter 5.2 mm" in first.SegmentDescription

    # Geometry: shared orientation and pixel measures are the source's, each frame sits on its source slice.
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                       headers[0].ImageOrientationPatient, atol=1e-6)
    measures = shared.PixelMeasuresSequence[0]
    assert np.allclose(measures.PixelSpacing, headers[0].PixelSpacing)
    assert float(measures.SliceThickness) == pytest.approx(float(headers[0].SliceThickness))
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    nonempty = {(z, v) for v in (1, 2) for z in range(SHAPE[0]) if (labels.array[z] == v).any()}
    assert int(seg.NumberOfFrames) == len(nonempty)  # empty frames omitted
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                           by_uid[ref].ImagePositionPatient, atol=1e-4)

    # Pixels: per source instance, the labels come back exactly (same voxels, same lesion ids).
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    back = np.zeros(SHAPE, np.uint8)
    for number, lesion_id in mapping.items():
        back[pixels == number] = lesion_id
    np.testing.assert_array_equal(back, labels.array)


def test_single_segment_without_lesion_list_and_volume_geometry(tmp_path):
    """Without lesions one segment holds all voxels; highdicom's own volume reconstruction agrees on the grid."""
    source, labels = make_series(tmp_path / "ct", GEOMETRIES["oblique"])
    seg = hd.seg.segread(write_dicom_seg(labels, source, tmp_path / "seg.dcm"))
    assert len(seg.SegmentSequence) == 1 and seg.SegmentSequence[0].SegmentLabel == "Lung nodule"
    volume = seg.get_volume(combine_segments=True)
    got = np.argwhere(volume.array > 0)
    points = volume.affine[:3, :3] @ got.T + volume.affine[:3, 3:4]  # highdicom: index (slice, row, col) -> LPS
    want = source.index_zyx_to_lps(np.argwhere(labels.array > 0))
    assert len(got) == int((labels.array > 0).sum())
    np.testing.assert_allclose(np.sort(points.T, axis=0), np.sort(want, axis=0), atol=1e-3)


def test_multiframe_source_in_shuffled_frame_order(tmp_path):
    """An enhanced CT whose frames are not in slice order: label slice z must land on the frame that is slice z."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    classic, labels = make_series(tmp_path / "ct", GEOMETRIES["tilted"])
    datasets = [pydicom.dcmread(f) for f in classic.metadata["source_files"]]
    enhanced = LegacyConvertedEnhancedCTImage(datasets, hd.UID(), 2, hd.UID(), 1)  # frames in slice order
    order = [3, 0, 7, 1, 6, 2, 5, 4]  # frame f (0-based) of the shuffled file is slice order[f]
    enhanced.PerFrameFunctionalGroupsSequence = [enhanced.PerFrameFunctionalGroupsSequence[i] for i in order]
    enhanced.PixelData = np.ascontiguousarray(enhanced.pixel_array[order]).tobytes()
    enhanced.save_as(tmp_path / "enhanced.dcm")
    source = read_dicom(tmp_path / "enhanced.dcm")
    assert source.metadata["frame_numbers"] != list(range(1, 9))
    labels = source.with_array(labels.array)
    seg = hd.seg.segread(write_dicom_seg(labels, source, tmp_path / "seg.dcm", lesions=LESIONS))
    for item in seg.PerFrameFunctionalGroupsSequence:
        frame = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        assert np.allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                           datasets[order[frame - 1]].ImagePositionPatient, atol=1e-4)
    pixels = seg.get_pixels_by_source_frame(str(enhanced.SOPInstanceUID), list(range(1, 9)), combine_segments=True)
    mapping = segment_to_label(seg)
    for frame in range(8):
        want = labels.array[order[frame]]
        got = np.zeros_like(want)
        for number, lesion_id in mapping.items():
            got[pixels[frame] == number] = lesion_id
        np.testing.assert_array_equal(got, want)


def test_zip_source_is_read_from_the_archive(tmp_path):
    source, labels = make_series(tmp_path / "ct", GEOMETRIES["axial"])
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "ct").iterdir()):
            zf.write(f, f.name)
    zipped = read_dicom(archive)
    seg = hd.seg.segread(write_dicom_seg(zipped.with_array(labels.array), zipped, tmp_path / "seg.dcm"))
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == SHAPE[0]


def test_empty_mask_writes_no_seg_and_removes_stale_one(tmp_path, caplog):
    source, labels = make_series(tmp_path / "ct", GEOMETRIES["axial"])
    stale = tmp_path / "seg.dcm"
    stale.write_bytes(b"old")
    with caplog.at_level("INFO", logger="meddet.export"):
        assert write_dicom_seg(labels.with_array(np.zeros(SHAPE, np.uint8)), source, stale, lesions=[]) is None
    assert not stale.exists()
    assert "no DICOM SEG" in caplog.text
    assert "PHANTOM" not in caplog.text  # patient name/ID never logged


def test_labels_off_the_source_grid_are_refused(tmp_path):
    source, labels = make_series(tmp_path / "ct", GEOMETRIES["axial"])
    with pytest.raises(ValueError, match="grid"):
        write_dicom_seg(labels.with_array(labels.array, origin=(0.0, 0.0, 0.0)), source, tmp_path / "seg.dcm")
    # A Volume flipped after reading no longer matches its files: refused, not written misplaced.
    flipped_dir = source.direction.copy()
    flipped_dir[:, 2] *= -1
    last = source.index_zyx_to_lps([[SHAPE[0] - 1, 0, 0]])[0]
    flipped = source.with_array(source.array[::-1].copy(), origin=tuple(last), direction=flipped_dir)
    with pytest.raises(MeddetInputError, match="wrong anatomy"):
        write_dicom_seg(flipped.with_array(labels.array[::-1].copy()), flipped, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
