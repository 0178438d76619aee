"""Write a Volume as a classic DICOM CT series (one file per slice).

Why: the synthetic chest CTs must enter meddet exactly the way a scanner's output does, through the DICOM reader,
so the reader, the SEG writer and the PACS gateway are exercised on the real format. Pixels are stored the way many
scanners store CT: unsigned 12-bit values with RescaleIntercept −1024, so every reader must apply the rescale.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from meddet.volume import Volume

HU_MIN, HU_MAX = -1024, 3071
RESCALE_INTERCEPT = -1024.0

# (centre, width, name) written as the series' default window presets: lung first, as a chest CT viewer opens it.
DEFAULT_WINDOWS = ((-600.0, 1500.0, "LUNG"), (50.0, 350.0, "MEDIASTINUM"), (400.0, 3500.0, "BONE"))


@dataclass
class SeriesIdentity:
    """Who and what the series belongs to. ``uid_seed`` makes UIDs reproducible for a seeded phantom."""

    patient_name: str = "PHANTOM^CHEST"
    patient_id: str = "PHANTOM-0000"
    series_description: str = "meddet synthetic chest CT"
    study_description: str = "CT CHEST"
    uid_seed: str | None = None
    study_date: str = "20260101"
    extra: dict[str, object] = field(default_factory=dict)


def _uid(seed: str | None, what: str) -> str:
    return generate_uid(entropy_srcs=[seed, what]) if seed is not None else generate_uid()


def write_dicom_series(volume: Volume, out_dir: str | Path, identity: SeriesIdentity | None = None) -> list[Path]:
    """Write ``volume`` (HU) as a CT series into ``out_dir``; returns the file paths in slice order.

    Geometry comes only from the Volume: ImageOrientationPatient from the first two direction columns,
    ImagePositionPatient of slice k from ``origin + k * spacing_z * direction[:, 2]``, which also reproduces a
    gantry-tilted (sheared) grid exactly.
    """
    identity = identity or SeriesIdentity()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hu = np.clip(np.rint(volume.array), HU_MIN, HU_MAX)
    stored = (hu - RESCALE_INTERCEPT).astype(np.uint16)

    study_uid = _uid(identity.uid_seed, "study")
    series_uid = _uid(identity.uid_seed, "series")
    frame_uid = _uid(identity.uid_seed, "frame-of-reference")
    row_dir = volume.direction[:, 0]
    col_dir = volume.direction[:, 1]
    slice_step = volume.direction[:, 2] * volume.spacing[2]
    origin = np.asarray(volume.origin)
    now = _dt.datetime(2026, 1, 1, 12, 0, 0)

    paths = []
    for k in range(volume.shape[0]):
        sop_uid = _uid(identity.uid_seed, f"sop-{k}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = out / f"slice_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: synthetic names may be non-ASCII
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.Manufacturer = "meddet"
        ds.PatientName = identity.patient_name
        ds.PatientID = identity.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = identity.study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.StudyDescription = identity.study_description
        ds.SeriesDescription = identity.series_description
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in (*row_dir, *col_dir)]
        position = origin + k * slice_step
        ds.ImagePositionPatient = [float(f"{v:.4f}") for v in position]
        ds.SliceLocation = float(f"{position[2]:.4f}")
        ds.PixelSpacing = [float(f"{volume.spacing[1]:.6f}"), float(f"{volume.spacing[0]:.6f}")]  # row, column
        ds.SliceThickness = float(f"{float(volume.metadata.get('slice_thickness', volume.spacing[2])):.4f}")
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.WindowCenter = [w[0] for w in DEFAULT_WINDOWS]
        ds.WindowWidth = [w[1] for w in DEFAULT_WINDOWS]
        ds.WindowCenterWidthExplanation = [w[2] for w in DEFAULT_WINDOWS]
        for keyword, value in identity.extra.items():
            setattr(ds, keyword, value)
        ds.PixelData = stored[k].tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
