"""Bad input to the DICOM reader: every case gives a MeddetInputError naming the file and the numbers, or is read
with a warning when it is safe to do so."""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_factory import (
    add_enhanced_geometry,
    data_file,
    edit,
    pattern_volume,
    strip_preamble,
    truncate,
    write_series,
    zip_folder,
)
from meddet.errors import MeddetInputError
from meddet.io.archive import safe_extract_zip
from meddet.io.dicom_reader import read_dicom
from meddet.io.dicom_scan import list_dicom_series

PNG_BYTES = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def series(tmp_path) -> tuple[Path, list[Path], object]:
    vol = pattern_volume()
    folder = tmp_path / "series"
    return folder, write_series(vol, folder), vol


def raises(path, match_all: list[str], **kwargs) -> MeddetInputError:
    with pytest.raises(MeddetInputError) as info:
        read_dicom(path, **kwargs)
    message = str(info.value)
    for word in match_all:
        assert word in message, f"{word!r} not in message:\n{message}"
    return info.value


# ---------------------------------------------------------------------------------------------------- paths & files
def test_missing_path(tmp_path):
    raises(tmp_path / "nope", ["does not exist", "nope"])


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    raises(tmp_path / "empty", ["No DICOM files", "empty"])


def test_folder_of_non_dicom_files(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / "thumb.png").write_bytes(PNG_BYTES)
    raises(folder, ["No DICOM files", "2 file(s) were skipped"])


def test_non_dicom_files_among_dicom_are_skipped_with_warnings(series):
    folder, _, vol = series
    (folder / "README.txt").write_text("Exported by PACS\n")
    (folder / "preview.png").write_bytes(PNG_BYTES)
    (folder / "zero").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: skipped silently
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    text = "\n".join(out.warnings)
    assert "README.txt" in text and "not a DICOM file" in text
    assert "preview.png" in text
    assert "zero" in text and "empty (0 bytes)" in text
    assert ".DS_Store" not in text


def test_zero_byte_file_given_directly(tmp_path):
    (tmp_path / "scan.dcm").write_bytes(b"")
    raises(tmp_path / "scan.dcm", ["empty (0 bytes)", "scan.dcm"])


def test_text_file_given_directly(tmp_path):
    (tmp_path / "scan.dcm").write_text("0008,0010 this is not DICOM")
    raises(tmp_path / "scan.dcm", ["not a DICOM file", "scan.dcm"])


def test_png_given_directly(tmp_path):
    (tmp_path / "image.png").write_bytes(PNG_BYTES)
    raises(tmp_path / "image.png", ["not a DICOM file", "image.png"])


def test_missing_preamble_is_read_with_force(series):
    folder, paths, vol = series
    for path in paths:
        strip_preamble(path)
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.same_geometry(vol, atol=1e-4)
    assert any("8 file(s) have no DICOM preamble" in w for w in out.warnings)


def test_damaged_header_among_slices_is_skipped_then_reported_as_gap(series):
    folder, paths, _ = series
    data = bytearray(paths[3].read_bytes())
    data[140:400] = os.urandom(260)  # 'DICM' kept, header destroyed
    paths[3].write_bytes(bytes(data))
    error = raises(folder, ["gap", "about 1 missing slice", "5.00 mm"])
    assert "slice_0002.dcm" in str(error) and "slice_0004.dcm" in str(error)


# ---------------------------------------------------------------------------------------------------- pixel data
def test_truncated_pixel_data(series):
    folder, paths, _ = series
    truncate(paths[5], 100)
    raises(folder, ["truncated", "slice_0005.dcm", "2048 bytes", "100 bytes missing"])


def test_pydicom_truncated_file():
    raises(data_file("MR_truncated.dcm"), ["truncated", "MR_truncated.dcm", "8192"])


def test_header_rows_larger_than_pixel_data(series):
    folder, paths, _ = series
    edit(paths[2], Rows=40)
    raises(folder, ["do not match", "slice_0002.dcm", "40×32×1×2 = 2560 bytes", "2048 bytes"])


def test_header_rows_smaller_than_pixel_data(series):
    folder, paths, _ = series
    edit(paths[2], Rows=16)
    raises(folder, ["do not match", "slice_0002.dcm", "1024 bytes", "2048 bytes"])


def test_huge_header_dimensions_refused_without_allocating(series):
    folder, paths, _ = series
    edit(paths[4], Rows=65535, Columns=65535)
    tracemalloc.start()
    try:
        error = raises(folder, ["65535 rows × 65535 columns", "slice_0004.dcm", "Nothing was loaded"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024**2, f"peak {peak / 1024**2:.1f} MiB"
    assert error.path is None or "slice_0004.dcm" in error.path


def test_huge_volume_refused_before_loading(series):
    folder, _, _ = series
    # 8 slices of 32×32 int16 = 16 KiB: a 10 KiB limit must refuse it from the headers alone.
    raises(folder, ["above the", "GiB limit", "8 slices of 32×32"], max_bytes=10 * 1024)


def test_colour_image_refused():
    raises(data_file("SC_rgb.dcm"), ["colour image", "RGB", "SC_rgb.dcm"])


def test_corrupt_compressed_data(tmp_path):
    add_enhanced_geometry(data_file("emri_small_jpeg_2k_lossless.dcm"), tmp_path / "short.dcm")
    truncate(tmp_path / "short.dcm", 3000)  # cut inside the last compressed frames
    raises(tmp_path / "short.dcm", ["could not be decoded", "JPEG 2000", "short.dcm"])


# ---------------------------------------------------------------------------------------------------- single images
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_single_2d_slice_file(name):
    error = raises(data_file(name), ["single 2D image", "not a 3D volume", "folder"])
    assert error.path.endswith(name)


def test_folder_with_one_slice(series):
    folder, paths, _ = series
    for path in paths[1:]:
        path.unlink()
    raises(folder, ["single 2D image", "32×32", "all the slices"])


def test_enhanced_mr_without_geometry():
    raises(data_file("emri_small.dcm"), ["PlanePositionSequence", "10 frames", "emri_small.dcm"])


def test_enhanced_file_missing_one_frame_position(tmp_path):
    add_enhanced_geometry(data_file("emri_small.dcm"), tmp_path / "mf.dcm")
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    del ds.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence
    ds.save_as(tmp_path / "mf.dcm")
    raises(tmp_path / "mf.dcm", ["PlanePositionSequence", "frame 5 of 10", "mf.dcm"])


def test_non_image_object_given_directly():
    raises(data_file("liver.dcm"), ["not an image", "SEG", "Segmentation Storage"])


def test_folder_with_only_non_image_objects(tmp_path):
    shutil.copy(data_file("liver.dcm"), tmp_path / "seg.dcm")
    raises(tmp_path, ["No image series", "SEG"])


# ---------------------------------------------------------------------------------------------------- series structure
def test_two_series_mixed(tmp_path):
    write_series(pattern_volume(seed=1), tmp_path / "a", series_description="Lung 1mm", uid_seed="a")
    write_series(pattern_volume(seed=2, shape=(5, 32, 32)), tmp_path / "b", series_description="Soft 5mm",
                 uid_seed="b")
    uids = [pydicom.dcmread(tmp_path / d / "slice_0000.dcm", stop_before_pixels=True).SeriesInstanceUID
            for d in ("a", "b")]
    error = raises(tmp_path, ["2 image series", "--series", "Lung 1mm", "8 slices", "Soft 5mm", "5 slices",
                              uids[0], uids[1]])
    assert "--series" in error.hint

    raises(tmp_path, ["1.2.3.4.5 is not here", uids[0], uids[1]], series_uid="1.2.3.4.5")
    shutil.copy(data_file("liver.dcm"), tmp_path / "seg.dcm")
    seg_uid = pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True).SeriesInstanceUID
    raises(tmp_path, ["not an image series", "SEG"], series_uid=seg_uid)
    assert read_dicom(tmp_path, series_uid=uids[1]).shape == (5, 32, 32)


def test_shuffled_extensionless_files_with_scrambled_instance_numbers(series, tmp_path):
    folder, paths, vol = series
    target = tmp_path / "shuffled" / "deeper"
    target.mkdir(parents=True)
    order = list(range(len(paths)))
    random.Random(7).shuffle(order)
    for new_name, k in enumerate(order):
        dest = target / f"IM{new_name:05d}"  # no extension; name order != slice order
        shutil.copy(paths[k], dest)
        edit(dest, InstanceNumber=100 - 7 * new_name)
    out = read_dicom(tmp_path / "shuffled")
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.same_geometry(vol, atol=1e-4)
    assert [Path(p).name for p in out.metadata["source_files"]] == [f"IM{order.index(k):05d}" for k in range(8)]


def test_gap_in_slices(series):
    folder, paths, _ = series
    paths[4].unlink()
    paths[5].unlink()
    error = raises(folder, ["1 gap", "7.50 mm", "about 2 missing slices", "2.50 mm apart", "slice_0003.dcm",
                            "slice_0006.dcm"])
    assert "missing" in error.hint


def test_duplicate_identical_slice_kept_once(series):
    folder, paths, vol = series
    shutil.copy(paths[3], folder / "copy_of_3")
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    assert any("Duplicate slice" in w and "copy_of_3" in w for w in out.warnings)


def test_duplicate_position_with_different_pixels(series):
    folder, paths, _ = series
    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(folder / "other_phase")
    raises(folder, ["Two different images", "same slice position", "slice_0003.dcm", "other_phase",
                    "-32.50 mm"])


def _move(path: Path, dz: float) -> None:
    ds = pydicom.dcmread(path)
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ipp[2] += dz
    ds.ImagePositionPatient = ipp
    ds.save_as(path)


def test_slightly_non_uniform_spacing_is_a_warning(series):
    folder, paths, vol = series
    _move(paths[3], 0.15)  # steps 2.65 and 2.35 around it: 6 % off
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    assert any("varies slightly" in w and "2.350" in w and "2.650" in w for w in out.warnings)


def test_strongly_non_uniform_spacing_is_an_error(series):
    folder, paths, _ = series
    _move(paths[3], 0.6)  # steps 3.1 and 1.9: 24 % off but below the gap threshold
    raises(folder, ["non-uniform slice spacing", "1.900", "3.100", "median 2.500"])


def test_all_slices_at_one_position(series):
    folder, paths, _ = series
    for k, path in enumerate(paths[1:], start=1):
        _move(path, -2.5 * k)
    raises(folder, ["same position", "-40.00 mm", "8 images"])


def test_inconsistent_orientation(series):
    folder, paths, _ = series
    edit(paths[6], ImageOrientationPatient=[1, 0, 0, 0, 0.9848078, 0.1736482])
    raises(folder, ["same orientation", "[1.0000, 0.0000, 0.0000, 0.0000, 0.9848, 0.1736]: 1 image(s)",
                    "slice_0006.dcm", "7 image(s)"])


def test_inconsistent_rows_columns(series):
    folder, paths, _ = series
    ds = pydicom.dcmread(paths[1])
    top_half = ds.pixel_array[:16].copy()
    ds.Rows = 16
    ds.PixelData = top_half.tobytes()
    ds.save_as(paths[1])
    raises(folder, ["same size", "16 rows × 32 columns: 1 image(s)", "slice_0001.dcm", "32 rows × 32 columns"])


def test_inconsistent_pixel_spacing(series):
    folder, paths, _ = series
    edit(paths[7], PixelSpacing=[0.9, 0.8])
    raises(folder, ["same pixel spacing", "[0.9000, 0.8000]", "[0.7000, 0.8000]", "slice_0007.dcm"])


def test_missing_position(series):
    folder, paths, _ = series
    edit(paths[2], ImagePositionPatient=None)
    raises(folder, ["ImagePositionPatient", "slice_0002.dcm"])


def test_garbage_position_value(series):
    folder, paths, _ = series
    raw = pydicom.dcmread(paths[2]).get_item("ImagePositionPatient").value  # e.g. b"-12.5\\-11.0\\-35.0"
    garbage = raw.replace(b"-11.0", b"ab*c!")
    assert garbage != raw and len(garbage) == len(raw)
    paths[2].write_bytes(paths[2].read_bytes().replace(raw, garbage, 1))
    raises(folder, ["ImagePositionPatient", "slice_0002.dcm"])


# ---------------------------------------------------------------------------------------------------- character sets
def _set_raw_name(path: Path, raw: bytes, charset: str | None) -> None:
    ds = pydicom.dcmread(path)
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    ds.add_new(0x00100010, "PN", raw)  # bytes are written as they are
    ds.save_as(path)


@pytest.mark.parametrize(
    "raw, charset, expected",
    [
        ("Müller^Zoë".encode("latin-1"), "ISO_IR 100", "Müller^Zoë"),  # declared Latin-1
        ("Šťastný^Jiří".encode("utf-8"), "ISO_IR 192", "Šťastný^Jiří"),  # declared UTF-8
        ("Müller^Zoë".encode("latin-1"), None, "Müller^Zoë"),  # undeclared Latin-1 bytes
        ("Øster^Ærø".encode("utf-8"), None, "Øster^Ærø"),  # undeclared UTF-8 bytes
        (b"\xff\xfe\x80bad^\xc3", "ISO_IR 192", None),  # declared UTF-8, invalid bytes: must not crash
        ("山田^太郎".encode("utf-8"), "ISO 2022 IR 87", None),  # wrong declaration: must not crash
    ],
)
def test_non_ascii_patient_names(series, raw, charset, expected, caplog):
    folder, paths, vol = series
    for path in paths:
        _set_raw_name(path, raw, charset)
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    assert isinstance(out.metadata["patient_name"], str)
    if expected is not None:
        assert out.metadata["patient_name"] == expected
        assert expected not in "\n".join(r.getMessage() for r in caplog.records)
    assert list_dicom_series(folder)[0].frame_count == 8


# ---------------------------------------------------------------------------------------------------- zip archives
def _zip_with(tmp_path: Path, name: str, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("entry", ["../evil.dcm", "a/../../evil.dcm", "{tmp}/evil.dcm", "C:/evil.dcm",
                                   "..\\evil.dcm"])
def test_zip_slip_refused(tmp_path, entry):
    entry = entry.format(tmp=tmp_path)  # an absolute path
    archive = _zip_with(tmp_path, "slip.zip", [("ok.dcm", b"x"), (entry, b"payload")])
    raises(archive, ["zip slip", "slip.zip", repr(entry)])
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_symlink_refused(tmp_path):
    info = zipfile.ZipInfo("link.dcm")
    info.create_system = 3
    info.external_attr = (0o120777 << 16)
    archive = _zip_with(tmp_path, "links.zip", [(info, b"/etc/passwd")])
    raises(archive, ["symbolic link", "'link.dcm'", "links.zip"])


def test_zip_bomb_ratio_refused(tmp_path):
    archive = _zip_with(tmp_path, "bomb.zip", [("slice.dcm", bytes(20 * 1024**2))])  # 20 MiB of zeros, ~1000:1
    raises(archive, ["zip bomb", "'slice.dcm'", ":1", "bomb.zip"])


def test_zip_total_size_limit(tmp_path):
    rng = np.random.default_rng(0)
    archive = _zip_with(tmp_path, "big.zip", [(f"f{i}", rng.bytes(300_000)) for i in range(4)])
    with pytest.raises(MeddetInputError) as info:
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=1_000_000)
    assert "zip bomb" in str(info.value) and "big.zip" in str(info.value)
    assert not (tmp_path / "out" / "f3").exists()


def test_zip_lying_about_sizes_is_stopped(tmp_path):
    """Headers claim 1 KiB, the data inflates to 2 MiB: extraction stops at the declared size."""
    archive = _zip_with(tmp_path, "liar.zip", [("slice.dcm", os.urandom(256) * 8192)])
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    # uncompressed size: local header offset 22, central directory entry offset 24
    struct.pack_into("<I", data, info.header_offset + 22, 1024)
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 1024)
    archive.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(MeddetInputError) as err:
        safe_extract_zip(archive, out)
    assert "slice.dcm" in str(err.value) and "liar.zip" in str(err.value)
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) <= 1024


def test_not_a_zip(tmp_path):
    (tmp_path / "study.zip").write_text("this is not an archive")
    raises(tmp_path / "study.zip", ["not a valid ZIP archive", "study.zip"])


def test_zip_of_truncated_zip(series, tmp_path):
    folder, _, _ = series
    archive = zip_folder(folder, tmp_path / "cut.zip")
    archive.write_bytes(archive.read_bytes()[:-200])  # the central directory is lost
    raises(archive, ["not a valid ZIP archive", "cut.zip"])


def test_zip_with_bad_slice_names_member(series, tmp_path):
    folder, paths, _ = series
    truncate(paths[1], 64)
    archive = zip_folder(folder, tmp_path / "study.zip")
    raises(archive, ["truncated", "study.zip::slice_0001.dcm"])


# ---------------------------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("seed", range(16))
def test_random_header_corruption_never_leaks_library_exceptions(series, seed):
    """Flip bytes in one slice's header: the reader must either succeed or raise MeddetInputError."""
    folder, paths, _ = series
    rng = random.Random(seed)
    target = paths[rng.randrange(len(paths))]
    data = bytearray(target.read_bytes())
    pixel_start = len(data) - 32 * 32 * 2
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(132, pixel_start)] = rng.randrange(256)
    target.write_bytes(bytes(data))
    try:
        read_dicom(folder)
    except MeddetInputError:
        pass


def test_zero_pixel_spacing(series):
    folder, paths, _ = series
    for path in paths:
        edit(path, PixelSpacing=[0.0, 0.7])
    raises(folder, ["PixelSpacing", "[0.0, 0.7]", "positive", "slice_0000.dcm"])


def test_positions_contradicting_orientation(tmp_path):
    # Slices stepped almost within the image plane: no scanner tilts like that, the headers are inconsistent.
    direction = np.column_stack([[1.0, 0, 0], [0, 1.0, 0], np.array([0, 0.95, 0.31]) / np.hypot(0.95, 0.31)])
    write_series(pattern_volume(direction=direction), tmp_path / "s")
    raises(tmp_path / "s", ["stepped", "71.9°", "slice normal", "contradict"])


def test_zip_with_damaged_member(series, tmp_path):
    folder, _, _ = series
    archive = zip_folder(folder, tmp_path / "damaged.zip")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("slice_0002.dcm")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(20, 60):
        data[start + i] ^= 0x5A
    archive.write_bytes(bytes(data))
    raises(archive, ["'slice_0002.dcm' is damaged", "damaged.zip"])


def test_zip_entry_both_file_and_folder(tmp_path):
    archive = _zip_with(tmp_path, "clash.zip", [("a", b"file"), ("a/b.dcm", b"x")])
    raises(archive, ["'a/b.dcm'", "both a file and a folder", "clash.zip"])


def test_image_file_without_pixel_data(series):
    folder, paths, _ = series
    edit(paths[6], PixelData=None)
    raises(folder, ["no pixel data", "slice_0006.dcm"])


def test_scout_and_dose_screenshot_beside_the_ct_are_set_aside(series, tmp_path):
    folder, _, vol = series
    scout = pattern_volume(shape=(2, 32, 32), seed=5)
    write_series(scout, folder / "scout", series_description="Topogram", uid_seed="scout",
                 extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    write_series(pattern_volume(shape=(1, 32, 32), seed=6), folder / "dose", series_description="Dose Report",
                 uid_seed="dose")
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    text = "\n".join(out.warnings)
    assert "'Topogram', 2 image(s)): a localizer (scout)" in text
    assert "'Dose Report', 1 image(s)): a single 2D image" in text

    write_series(pattern_volume(seed=7), folder / "second", series_description="Second CT", uid_seed="ct2")
    error = raises(folder, ["2 image series", "Second CT", "--series"])
    assert "Topogram" not in str(error)  # only the candidates are listed
