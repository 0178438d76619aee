"""The command line: input errors are a message and exit code 2, never a traceback; info and convert work."""

import subprocess
import sys

import numpy as np
import pytest

from meddet.io import read_volume
from meddet.io.dicom_writer import SeriesIdentity, write_dicom_series
from meddet.volume import Volume


def meddet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meddet", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def series(tmp_path):
    vol = Volume(np.arange(6 * 20 * 24, dtype=np.int16).reshape(6, 20, 24) % 900 - 800, spacing=(0.7, 0.75, 2.0), origin=(-5, 7, 11))
    write_dicom_series(vol, tmp_path / "ct", SeriesIdentity(patient_name="Müller^Jürgen", patient_id="ID-SECRET-1"))
    return tmp_path / "ct", vol


def _no_traceback(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_info_prints_geometry_without_identity(series):
    folder, vol = series
    result = meddet("info", str(folder))
    assert result.returncode == 0, result.stderr
    assert "24 × 20 × 6" in result.stdout and "(0.7000, 0.7500, 2.0000)" in result.stdout
    assert "ID-SECRET-1" not in result.stdout + result.stderr and "Müller" not in result.stdout + result.stderr


def test_convert_dicom_to_nifti_keeps_geometry(series, tmp_path):
    folder, vol = series
    result = meddet("convert", str(folder), str(tmp_path / "out.nii.gz"))
    assert result.returncode == 0, result.stderr
    back = read_volume(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)


@pytest.mark.parametrize("make_bad", ["empty_folder", "zero_byte", "text_file", "two_series", "truncated", "missing"])
def test_bad_input_gives_message_and_exit_code_2(tmp_path, series, make_bad):
    folder, vol = series
    if make_bad == "empty_folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif make_bad == "zero_byte":
        target = tmp_path / "zero.dcm"
        target.write_bytes(b"")
    elif make_bad == "text_file":
        target = tmp_path / "notes.txt"
        target.write_text("not a scan")
    elif make_bad == "two_series":
        write_dicom_series(vol, folder / "second", SeriesIdentity(series_description="second"))
        target = folder
    elif make_bad == "truncated":
        first = sorted(folder.glob("*.dcm"))[2]
        first.write_bytes(first.read_bytes()[:-300])
        target = folder
    else:
        target = tmp_path / "does-not-exist"
    result = meddet("info", str(target))
    assert result.returncode == 2, (result.stdout, result.stderr)
    _no_traceback(result)
    assert "Error:" in result.stderr
    assert "What to do" in result.stderr or "series" in result.stderr.lower()


def test_a_file_where_the_output_folder_should_be_is_a_clear_error(tmp_path):
    in_the_way = tmp_path / "results"
    in_the_way.write_text("not a folder")
    result = meddet("phantom", "--out", str(in_the_way), "--n", "1", "--small")
    _no_traceback(result)
    assert result.returncode == 2 and "Could not create, write or read this path" in result.stderr
    assert str(in_the_way) in result.stderr.replace("\n", "") and in_the_way.read_text() == "not a folder"
