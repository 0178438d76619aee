"""NIfTI, NRRD and MetaImage files, read and written through SimpleITK.

Why SimpleITK: it converts NIfTI's RAS convention to the LPS one DICOM and meddet use, so geometry survives a
round trip without hand-written flips. The one thing NIfTI cannot hold is a sheared grid (gantry tilt): ITK would
silently coerce it to an orthogonal one, so meddet refuses instead and points to the formats that can.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from meddet.errors import MeddetInputError
from meddet.volume import Volume

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_VOXELS = 2**31 // 4  # 2 GiB of float32: far beyond any CT, small enough to refuse nonsense headers


def has_itk_suffix(path: str | Path) -> bool:
    """True for the file names this module reads and writes."""
    return str(path).lower().endswith(ITK_SUFFIXES)


def _nifti_header(path: Path) -> nib.Nifti1Header | None:
    """The NIfTI header exactly as the file stores it, or None when it cannot be parsed.

    Why read the header bytes ourselves rather than through ``nib.load``: ITK and nibabel both replace a voxel
    spacing of 0 by 1 mm (nibabel only logs a warning), and a scan read at a spacing it does not have gives every
    size, volume and position in wrong mm; ``read_itk_file`` must see the 0.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read(540)
        nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
        return (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(io.BytesIO(raw), check=False)
    except Exception:  # nibabel raises many types; ITK parsed this header, so the file itself is cut or damaged
        return None


def _nifti_is_complete(path: Path, header: nib.Nifti1Header) -> bool:
    """True when a NIfTI file holds all the voxel bytes its header promises.

    Why: ITK fills a truncated NIfTI with zeros without a word (NRRD and MetaImage readers do complain).
    """
    needed = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size >= needed
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < needed and (chunk := stream.read(1 << 22)):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        return False
    return total >= needed


def _nonfinite_voxels(path: Path, volume: Volume) -> int:
    """How many voxels of a floating-point file are NaN or infinite (integer files cannot hold them).

    Why NIfTI is counted from the file with nibabel: ITK's NIfTI reader turns them into 0 without a word, and 0 in
    a CT reads as soft tissue (a NaN slice becomes a wall of it).
    """
    if path.name.lower().endswith((".nii", ".nii.gz")):
        image = nib.load(str(path))  # float files only (checked below): integer NIfTI, the usual CT, is not read twice
        if not np.issubdtype(image.get_data_dtype(), np.floating):
            return 0
        data = np.asanyarray(image.dataobj)
    else:
        data = volume.array
        if not np.issubdtype(data.dtype, np.floating):
            return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def read_itk_file(path: str | Path, modality: str = "OT") -> Volume:
    """Read a 3D NIfTI/NRRD/MHA file; header first, so an absurd size is refused before allocation."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MeddetInputError(
            "This file could not be read as a NIfTI, NRRD or MetaImage file (damaged or not an image).",
            path,
            "Check that the file was copied completely; re-export it from the scanner or viewer.",
        ) from exc
    size = reader.GetSize()
    dims = len(size)
    if dims == 4 and size[3] == 1:
        dims = 3
    if dims != 3:
        raise MeddetInputError(
            f"This image has {len(size)} dimensions (size {size}); meddet needs a single 3D volume.",
            path,
            "Export one 3D volume (one time point, one channel) per file.",
        )
    if reader.GetNumberOfComponents() != 1:
        raise MeddetInputError(
            f"This image has {reader.GetNumberOfComponents()} values per voxel (colour or vector image).",
            path,
            "meddet reads greyscale scans; export the scan itself, not a coloured rendering.",
        )
    if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise MeddetInputError(
            f"The header claims {size[0]}×{size[1]}×{size[2]} voxels, more than any scan meddet accepts.",
            path,
            "The file header is probably damaged; re-export the scan.",
        )
    spacing = np.asarray(reader.GetSpacing()[:3], dtype=float)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        header = _nifti_header(path)
        if header is None or not _nifti_is_complete(path, header):
            raise MeddetInputError(
                "The image header is readable but its voxel data is missing or damaged (truncated file?).",
                path,
                "Copy the file again from its source.",
            )
        spacing = np.abs(np.asarray(header["pixdim"][1:4], dtype=float))  # as stored, before ITK turns 0 into 1
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise MeddetInputError(
            f"The header gives no usable voxel spacing (x, y, z = {', '.join(f'{v:g}' for v in spacing)}): "
            "without it no size, volume or position in mm can be right.",
            path,
            "Convert the scan again from its DICOM series (`meddet convert`), or set the spacing in the header.",
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MeddetInputError(
            "The image header is readable but its voxel data is missing or damaged (truncated file?).",
            path,
            "Copy the file again from its source.",
        ) from exc
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    volume = Volume.from_sitk(image, modality=modality, metadata={"source_files": [str(path)]})
    bad = _nonfinite_voxels(path, volume)
    if bad:
        raise MeddetInputError(
            f"{bad} voxel(s) ({100 * bad / volume.array.size:.2g} % of the image) are not numbers (NaN or "
            "infinite): a scan has a value in every voxel, so the conversion that wrote this file went wrong.",
            path,
            "Re-export the scan; if a tool masked a region with NaN, fill it with air (-1024 HU) instead.",
        )
    if min(volume.spacing) < 0.01 or max(volume.spacing) > 50:
        volume.warnings.append(
            f"Unusual voxel spacing {tuple(round(s, 4) for s in volume.spacing)} mm: check the file's header "
            "(a spacing of 1 often means the exporter lost it)."
        )
    return volume


def write_itk_file(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NIfTI/NRRD/MHA (by suffix), compressed. Refuses sheared grids for NIfTI."""
    path = Path(path)
    if not has_itk_suffix(path):
        raise MeddetInputError(
            f"Unknown output format for '{path.name}'.",
            path,
            f"Use one of: {', '.join(ITK_SUFFIXES)}, or a folder for a DICOM series.",
        )
    if path.name.lower().endswith((".nii", ".nii.gz")) and not volume.is_orthogonal:
        raise MeddetInputError(
            "This series is gantry-tilted (its slices are sheared); NIfTI cannot store that grid exactly.",
            path,
            "Write .nrrd or .mha instead, or resample onto an orthogonal grid (meddet convert --correct-tilt).",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path), True)
    return path
