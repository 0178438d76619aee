"""Build small DICOM series for the reader tests, and damage them in the ways real exports are damaged.

Series are written with the project's own writer (``write_dicom_series``) so they look like the synthetic CTs,
then edited with pydicom. Volumes are small (8 × 32 × 32) and filled with a seeded random pattern, so a flipped,
shuffled or mis-rescaled slice changes the array and a test can fail.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from meddet.io.dicom_writer import SeriesIdentity, write_dicom_series
from meddet.volume import Volume

SHAPE = (8, 32, 32)  # z, y, x
SPACING = (0.8, 0.7, 2.5)  # x, y, z mm
ORIGIN = (-12.5, -11.0, -40.0)


def pattern_volume(shape=SHAPE, spacing=SPACING, origin=ORIGIN, direction=None, seed: int = 0) -> Volume:
    """A volume of random integer HU in the writer's range; every slice differs from every other."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 3000, size=shape).astype(np.int16)
    return Volume(array=array, spacing=spacing, origin=origin,
                  direction=np.eye(3) if direction is None else direction, modality="CT")


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def tilted_direction(tilt_deg: float) -> np.ndarray:
    """Gantry tilt about the patient's left-right axis: image planes tilted, slices stepped along the table (z)."""
    t = np.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(t), np.sin(t)])
    step = np.array([0.0, 0.0, 1.0])
    return np.column_stack([row, col, step])


def write_series(volume: Volume, folder: Path, **identity) -> list[Path]:
    return write_dicom_series(volume, folder, SeriesIdentity(**identity))


def edit(path: Path, **changes) -> None:
    """Set (or, with value None, delete) header attributes of one file and save it in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def strip_preamble(path: Path) -> None:
    """Remove the 128-byte preamble and the 'DICM' marker (as some old exporters write files)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    path.write_bytes(data[132:])


def truncate(path: Path, remove_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-remove_bytes])


def zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    return zip_path


# ---------------------------------------------------------------------------------------------------- test data files
def data_file(name: str) -> Path:
    """A file bundled with pydicom or with the pydicom-data package (never downloaded); skip the test if absent."""
    bundled = Path(pydicom.data.__file__).parent / "test_files" / name
    if bundled.exists():
        return bundled
    try:
        import data_store  # the pydicom-data package

        candidate = Path(data_store.__file__).parent / "data" / name
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    pytest.skip(f"test file {name} is not installed (pydicom-data missing?)")


def stack_single_file(src: Path, folder: Path, n: int = 3, step: float = 2.0,
                      series_uid: str | None = None) -> list[Path]:
    """Clone a single-frame file into an ``n``-slice series (axial, ``step`` mm apart), keeping its pixel encoding.

    Used to turn pydicom's single-image test files and their compressed twins into volumes the reader accepts.
    Geometry is added where the file has none.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid(entropy_srcs=[str(src.name), "series"])
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[src.name, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * step]
        if "PixelSpacing" not in ds:
            ds.PixelSpacing = [1.0, 1.0]
        if "NumberOfFrames" in ds and int(ds.NumberOfFrames) == 1:
            del ds.NumberOfFrames
        path = folder / f"{k:03d}"
        ds.save_as(path)
        paths.append(path)
    return paths


def add_enhanced_geometry(src: Path, dst: Path, pixel_spacing=(0.5, 0.6), step: float = 1.2,
                          orientation=(1, 0, 0, 0, 1, 0), origin=(-16.0, -19.2, 30.0)) -> dict:
    """Give a multi-frame file without functional groups (e.g. emri_small) the groups a scanner writes.

    Frames are placed ``step`` mm apart along the normal. Returns the values written, for the test to compare.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(src)
    n = int(ds.NumberOfFrames)
    normal = np.cross(orientation[:3], orientation[3:])
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    measures.SliceThickness = step
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = list(orientation)
    shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    positions = []
    for k in range(n):
        item = Dataset()
        pos = Dataset()
        position = [float(v) for v in np.asarray(origin) + k * step * normal]
        pos.ImagePositionPatient = position
        positions.append(position)
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.save_as(dst)
    return {"pixel_spacing": pixel_spacing, "step": step, "orientation": orientation, "positions": positions}


def copy_files(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in paths]
