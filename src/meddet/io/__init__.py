"""Reading and writing scans: one entry point each, whatever the format.

``read_volume`` decides the format from the path (a folder or .zip is DICOM, .nii/.nrrd/.mha go through SimpleITK,
any other single file is tried as DICOM) so every command accepts every format the same way.
"""

from __future__ import annotations

from pathlib import Path

from meddet.errors import MeddetInputError
from meddet.io.itk_formats import has_itk_suffix, read_itk_file, write_itk_file
from meddet.volume import Volume


def read_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a DICOM folder / zip / file, or a NIfTI, NRRD or MetaImage file, into a Volume."""
    path = Path(path)
    if not path.exists():
        raise MeddetInputError("This path does not exist.", path, "Check the spelling of the path.")
    if path.is_file() and path.stat().st_size == 0:
        raise MeddetInputError("This file is empty (0 bytes).", path, "Copy the file again from its source.")
    if path.is_file() and has_itk_suffix(path):
        return read_itk_file(path)
    from meddet.io.dicom_reader import read_dicom  # imported here: pydicom start-up is not needed for NIfTI

    return read_dicom(path, series_uid=series_uid)


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write by suffix: NIfTI/NRRD/MHA files, or a DICOM CT series when ``path`` is a folder (no suffix)."""
    path = Path(path)
    if has_itk_suffix(path):
        return write_itk_file(volume, path)
    if path.suffix == "" or path.is_dir():
        from meddet.io.dicom_writer import SeriesIdentity, write_dicom_series

        identity = SeriesIdentity(
            patient_name=str(volume.metadata.get("patient_name", "ANONYMOUS")),
            patient_id=str(volume.metadata.get("patient_id", "ANONYMOUS")),
            series_description=str(volume.metadata.get("series_description", "meddet export")),
        )
        write_dicom_series(volume, path, identity)
        return path
    raise MeddetInputError(
        f"Unknown output format '{path.suffix}'.",
        path,
        "Use .nii.gz, .nrrd or .mha for a file, or a folder name (no suffix) for a DICOM series.",
    )


__all__ = ["read_volume", "write_volume"]
