"""Read a DICOM series (a folder, a single multi-frame file, or a ``.zip``) into a :class:`~meddet.volume.Volume`.

Why this is more than ``sitk.ReadImage``: real exports are messy, and a reader that silently "succeeds" on a
messy series puts lesions in the wrong place. This reader

- reads headers first and validates everything it can before touching pixel data: image dimensions against sane
  limits (a header claiming 65535×65535 is refused without allocating anything), declared pixel-data length
  against the dimensions and against the file size (truncated files), consistency of orientation, size and pixel
  spacing across the series, and the slice positions (duplicates, gaps, non-uniform spacing);
- sorts slices by their position along the slice normal (never by file name or InstanceNumber);
- keeps the true geometry: oblique orientations as they are, gantry tilt as a sheared grid (the third direction
  column is the slice-to-slice step, see :mod:`meddet.volume`);
- applies Rescale Slope/Intercept per slice (they may differ), or per frame from the functional groups of
  enhanced multi-frame files;
- reports every problem as a :class:`~meddet.errors.MeddetInputError` that names the file and the numbers, and
  every tolerated irregularity as a warning in ``Volume.warnings`` and on the ``meddet.io`` logger.

Patient names and IDs are stored in ``Volume.metadata`` but never appear in messages or logs.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from meddet.errors import MeddetInputError
from meddet.io.archive import extracted_zip, looks_like_zip
from meddet.io.dicom_scan import (
    PIXEL_TAGS,
    UNDEFINED_LENGTH,
    DicomHeader,
    NotDicomError,
    ScanResult,
    SeriesSummary,
    clean_text,
    decode_person_name,
    quiet_pydicom,
    read_dicom_header,
    safe_get,
    safe_int,
    safe_str,
    scan_path,
)
from meddet.volume import Volume

logger = logging.getLogger("meddet.io")

GiB = 1024**3
MAX_VOLUME_BYTES = 2 * GiB  # the decoded volume (and any one file's decoded pixels) may not exceed this
MAX_DIMENSION = 16384  # rows, columns, frames per file, slices per volume

ORIENTATION_TOL = 1e-3  # direction cosines
PIXEL_SPACING_TOL = 1e-3  # mm
DUPLICATE_TOL_MM = 1e-2  # two slices closer than this along the normal are at "the same position"
GAP_FACTOR = 1.5  # a step larger than this × the median step is a gap (missing slices)
SPACING_OK_REL, SPACING_OK_ABS = 0.01, 0.02  # step deviations below max(1 % of the median, 0.02 mm) are rounding
SPACING_WARN_REL = 0.10  # deviations up to 10 % of the median are a warning, above an error
TILT_TOL_DEG = 0.01  # a step direction further than this from the slice normal is a gantry tilt
MAX_TILT_DEG = 45.0  # beyond this the headers contradict each other (scanners tilt up to about 30°)
COLLINEAR_TOL_REL = 0.1  # slice positions off the line by more than 10 % of a pixel (and ≥ 0.05 mm) are an error

UNCOMPRESSED_SYNTAXES = frozenset(
    {
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    }
)
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")


class _Report:
    """Collects warnings for ``Volume.warnings`` and logs each one on ``meddet.io``."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warn(self, message: str) -> None:
        self.messages.append(message)
        logger.warning(message)


@dataclass
class _Frame:
    """One 2D image: a classic single-frame file, or one frame of a multi-frame file."""

    header: DicomHeader
    frame_index: int  # 0-based frame within the file
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (6 values)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slope: float
    intercept: float
    slice_thickness: float | None
    window: tuple[float, float] | None

    @property
    def where(self) -> str:
        if self.header.number_of_frames > 1:
            return f"{self.header.label} (frame {self.frame_index + 1})"
        return self.header.label


# ---------------------------------------------------------------------------------------------------- value parsing
def _floats(value: Any, n: int, what: str, where: str) -> np.ndarray:
    """Parse a DICOM multi-value into ``n`` finite floats, or raise a MeddetInputError naming the file."""
    if value is None:
        raise MeddetInputError(
            f"The image has no {what}, so meddet cannot place it in the patient.",
            path=where,
            hint="This series lacks the geometry meddet needs; export it again from the scanner or PACS "
            "(derived/secondary-capture images are not usable).",
        )
    items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError) as exc:
        shown = clean_text(str(value), 64) or "unreadable"
        raise MeddetInputError(f"The image's {what} is not a list of numbers ({shown}).", path=where,
                               hint="The file header is damaged; export the series again.") from exc
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise MeddetInputError(
            f"The image's {what} should be {n} finite numbers but is {values}.",
            path=where,
            hint="The file header is damaged; export the series again.",
        )
    return np.asarray(values, dtype=float)


def _number(value: Any, default: float | None) -> float | None:
    if value is None:
        return default
    try:
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            value = list(value)[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return default
    return number if math.isfinite(number) else default


def _check_pixel_spacing(spacing: np.ndarray, where: str) -> None:
    if spacing.min() <= 0 or spacing.max() > 1000:
        raise MeddetInputError(
            f"The image's PixelSpacing (0028,0030) is {[float(v) for v in spacing]} mm; it must be positive and "
            "plausible.",
            path=where, hint="The file header is damaged; export the series again.",
        )


def _first_item(item: Dataset | None, keyword: str) -> Dataset | None:
    """First item of sequence ``keyword`` in ``item`` (a functional-group item), or None."""
    if item is None:
        return None
    seq = safe_get(item, keyword)
    try:
        return seq[0] if seq is not None and len(seq) > 0 else None
    except (TypeError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------------- header checks
def _check_pixel_module(header: DicomHeader, max_bytes: int) -> None:
    """Validate the image pixel description of one file, before any of its pixel data is read."""
    ds, where = header.ds, header.label
    rows, cols, frames = header.rows, header.columns, header.number_of_frames
    samples = safe_int(ds, "SamplesPerPixel", 1)
    photometric = safe_str(ds, "PhotometricInterpretation", "MONOCHROME2").upper()
    photometric = clean_text(photometric, 16) or "unreadable"
    if (samples or 1) != 1 or photometric not in GREYSCALE:
        raise MeddetInputError(
            f"This is a colour image ({photometric}, {samples} samples per pixel). meddet reads greyscale "
            "CT/MR series only.",
            path=where,
            hint="Pass the original CT series, not a screenshot, secondary capture or colour rendering.",
        )
    if header.pixel_tag is None:
        raise MeddetInputError("The image file has no pixel data (it may be truncated).", path=where,
                               hint="Copy or export the series again; the file holds only a header.")
    if header.pixel_tag != 0x7FE00010:
        raise MeddetInputError(
            f"The image stores {PIXEL_TAGS[header.pixel_tag]} (floating-point pixels), which meddet does not read.",
            path=where, hint="Pass the original CT/MR series with integer pixel data.",
        )
    if not rows or not cols or rows < 1 or cols < 1:
        raise MeddetInputError(f"The header gives an invalid image size Rows={rows}, Columns={cols}.", path=where,
                               hint="The file header is damaged; export the series again.")
    if frames < 1:
        raise MeddetInputError(f"The header gives an invalid NumberOfFrames={frames}.", path=where,
                               hint="The file header is damaged; export the series again.")
    bits = safe_int(ds, "BitsAllocated")
    if bits not in (8, 16, 32):
        raise MeddetInputError(
            f"The header gives BitsAllocated={bits}; meddet reads 8-, 16- or 32-bit greyscale images.",
            path=where, hint="Pass the original CT/MR series.",
        )
    if rows > MAX_DIMENSION or cols > MAX_DIMENSION or frames > MAX_DIMENSION:
        raise MeddetInputError(
            f"The header claims an image of {rows} rows × {cols} columns × {frames} frames; meddet refuses "
            f"images larger than {MAX_DIMENSION} in any dimension (a damaged or malicious header). "
            "Nothing was loaded.",
            path=where, hint="Check the file; export the series again from the scanner or PACS.",
        )
    frame_bytes = rows * cols * (bits // 8)
    if frame_bytes * frames > max_bytes:
        raise MeddetInputError(
            f"The header claims {rows}×{cols}×{frames} pixels of {bits} bits = {frame_bytes * frames / GiB:.2f} GiB, "
            f"above the {max_bytes / GiB:.2f} GiB limit. Nothing was loaded.",
            path=where, hint="Check the file; if it is genuine, split the series or raise the memory limit.",
        )
    ts = header.transfer_syntax
    if ts in UNCOMPRESSED_SYNTAXES:
        expected = frame_bytes * frames
        declared = header.pixel_length
        if declared is None or declared == UNDEFINED_LENGTH:
            raise MeddetInputError(
                f"The pixel data is encapsulated (compressed) but the transfer syntax says "
                f"'{UID(ts).name}' (uncompressed).",
                path=where, hint="The file is damaged; export the series again.",
            )
        if header.pixel_offset is not None and header.pixel_offset + declared > header.file_size:
            present = max(header.file_size - header.pixel_offset, 0)
            raise MeddetInputError(
                f"The file is truncated: its pixel data should hold {declared} bytes but the file ends after "
                f"{present} bytes of it ({declared - present} bytes missing).",
                path=where,
                hint="The copy or download was interrupted; copy or export the series again.",
            )
        if declared < expected:
            raise MeddetInputError(
                f"The header dimensions do not match the pixel data: Rows×Columns×frames×bytes = "
                f"{rows}×{cols}×{frames}×{bits // 8} = {expected} bytes, but the pixel data holds {declared} bytes.",
                path=where, hint="The file header is damaged or was edited; export the series again.",
            )
        extra = declared - expected
        if extra > 1:  # one byte of padding to an even length is normal
            if extra >= frame_bytes:
                raise MeddetInputError(
                    f"The header dimensions do not match the pixel data: Rows×Columns×frames×bytes = "
                    f"{rows}×{cols}×{frames}×{bits // 8} = {expected} bytes, but the pixel data holds "
                    f"{declared} bytes ({extra} too many).",
                    path=where, hint="The file header is damaged or was edited; export the series again.",
                )
    else:
        try:
            decoder = pydicom.pixels.get_decoder(ts)
            available = decoder.is_available
        except (NotImplementedError, ValueError, KeyError):
            available = False
        if not available:
            raise MeddetInputError(
                f"The pixel data is compressed with '{UID(ts).name}' ({ts}), which meddet cannot decode here.",
                path=where,
                hint="Export the series uncompressed (or JPEG/JPEG 2000/JPEG-LS/RLE lossless), "
                "or install the matching pylibjpeg/pyjpegls plugin.",
            )


def _frames_of(header: DicomHeader) -> list[_Frame]:
    """The 2D images of one file with their geometry and rescale, from its header only."""
    ds, where = header.ds, header.label
    if header.is_enhanced:
        return _enhanced_frames(header)
    if header.number_of_frames > 1:
        raise MeddetInputError(
            f"This multi-frame file ({header.number_of_frames} frames) has no per-frame positions "
            "(no PerFrameFunctionalGroupsSequence with a PlanePositionSequence per frame), so meddet cannot tell "
            "where each frame lies in the patient.",
            path=where,
            hint="Export the series as enhanced multi-frame DICOM, or as classic one-file-per-slice DICOM.",
        )
    position = _floats(safe_get(ds, "ImagePositionPatient"), 3, "ImagePositionPatient (0020,0032)", where)
    orientation = _floats(safe_get(ds, "ImageOrientationPatient"), 6, "ImageOrientationPatient (0020,0037)", where)
    spacing = _floats(safe_get(ds, "PixelSpacing"), 2, "PixelSpacing (0028,0030)", where)
    window = None
    centre, width = _number(safe_get(ds, "WindowCenter"), None), _number(safe_get(ds, "WindowWidth"), None)
    if centre is not None and width is not None:
        window = (centre, width)
    _check_pixel_spacing(spacing, where)
    return [
        _Frame(
            header=header,
            frame_index=0,
            position=position,
            orientation=orientation,
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            slope=_number(safe_get(ds, "RescaleSlope"), 1.0),
            intercept=_number(safe_get(ds, "RescaleIntercept"), 0.0),
            slice_thickness=_number(safe_get(ds, "SliceThickness"), None),
            window=window,
        )
    ]


def _enhanced_frames(header: DicomHeader) -> list[_Frame]:
    """Frames of an enhanced multi-frame file from its shared and per-frame functional groups."""
    ds, where = header.ds, header.label
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = safe_get(ds, "PerFrameFunctionalGroupsSequence") or []
    n = header.number_of_frames
    if len(per_frame) != n:
        raise MeddetInputError(
            f"The file declares NumberOfFrames={n} but its PerFrameFunctionalGroupsSequence has "
            f"{len(per_frame)} items.",
            path=where, hint="The file header is damaged; export the series again.",
        )

    def group(frame_item: Dataset, keyword: str) -> Dataset | None:
        # Per-frame values override shared ones (DICOM PS3.3 C.7.6.16).
        return _first_item(frame_item, keyword) or _first_item(shared, keyword)

    frames = []
    for i, item in enumerate(per_frame):
        here = f"{where} (frame {i + 1})"
        plane_pos = group(item, "PlanePositionSequence")
        plane_ori = group(item, "PlaneOrientationSequence")
        measures = group(item, "PixelMeasuresSequence")
        if plane_pos is None or plane_ori is None or measures is None:
            missing = [name for name, seq in (("PlanePositionSequence", plane_pos),
                                              ("PlaneOrientationSequence", plane_ori),
                                              ("PixelMeasuresSequence", measures)) if seq is None]
            raise MeddetInputError(
                f"This multi-frame file has no {', '.join(missing)} for frame {i + 1} of {n}, so meddet cannot "
                "tell where its frames lie in the patient.",
                path=where,
                hint="Export the series again with its geometry (enhanced multi-frame with plane position and "
                "orientation), or as classic one-file-per-slice DICOM.",
            )
        transform = group(item, "PixelValueTransformationSequence")
        voi = group(item, "FrameVOILUTSequence")
        spacing = _floats(safe_get(measures, "PixelSpacing"), 2, "PixelSpacing (0028,0030)", here)
        _check_pixel_spacing(spacing, here)
        window = None
        if voi is not None:
            centre, width = _number(safe_get(voi, "WindowCenter"), None), _number(safe_get(voi, "WindowWidth"), None)
            if centre is not None and width is not None:
                window = (centre, width)
        frames.append(
            _Frame(
                header=header,
                frame_index=i,
                position=_floats(safe_get(plane_pos, "ImagePositionPatient"), 3, "ImagePositionPatient", here),
                orientation=_floats(safe_get(plane_ori, "ImageOrientationPatient"), 6, "ImageOrientationPatient",
                                    here),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=_number(safe_get(transform, "RescaleSlope") if transform is not None else None, 1.0),
                intercept=_number(safe_get(transform, "RescaleIntercept") if transform is not None else None, 0.0),
                slice_thickness=_number(safe_get(measures, "SliceThickness"), None),
                window=window,
            )
        )
    return frames


def _check_consistency(frames: list[_Frame], series: str) -> None:
    """All images of a volume must share size, orientation and pixel spacing; report the numbers if not."""
    sizes = Counter((f.header.rows, f.header.columns) for f in frames)
    if len(sizes) > 1:
        lines = []
        for (rows, cols), count in sizes.most_common():
            example = next(f for f in frames if (f.header.rows, f.header.columns) == (rows, cols))
            lines.append(f"  {rows} rows × {cols} columns: {count} image(s), e.g. {example.where}")
        raise MeddetInputError(
            f"The images of series {series} do not all have the same size:\n" + "\n".join(lines),
            hint="The series mixes different images (e.g. a scout with the axial slices); export only the axial "
            "series, or remove the odd files.",
        )

    def clusters(values: list[np.ndarray], tol: float) -> list[tuple[np.ndarray, list[_Frame]]]:
        groups: list[tuple[np.ndarray, list[_Frame]]] = []
        for value, frame in zip(values, frames):
            for ref, members in groups:
                if np.max(np.abs(ref - value)) <= tol:
                    members.append(frame)
                    break
            else:
                groups.append((value, [frame]))
        return sorted(groups, key=lambda g: -len(g[1]))

    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    orientations = clusters([f.orientation for f in frames], ORIENTATION_TOL)
    if len(orientations) > 1:
        lines = [f"  ImageOrientationPatient {fmt(v)}: {len(m)} image(s), e.g. {m[0].where}" for v, m in orientations]
        raise MeddetInputError(
            f"The images of series {series} do not all have the same orientation (ImageOrientationPatient):\n"
            + "\n".join(lines),
            hint="The series mixes image planes (e.g. axial with a scout or reformats); export only one stack.",
        )
    spacings = clusters([np.asarray(f.pixel_spacing) for f in frames], PIXEL_SPACING_TOL)
    if len(spacings) > 1:
        lines = [f"  PixelSpacing {fmt(v)} mm: {len(m)} image(s), e.g. {m[0].where}" for v, m in spacings]
        raise MeddetInputError(
            f"The images of series {series} do not all have the same pixel spacing:\n" + "\n".join(lines),
            hint="The series mixes reconstructions with different fields of view; export only one.",
        )


@dataclass
class _Grid:
    groups: list[list[_Frame]]  # one list per slice position, sorted along the normal; first item is used
    origin: np.ndarray
    direction: np.ndarray
    spacing: tuple[float, float, float]
    tilt_deg: float


def _build_grid(frames: list[_Frame], series: str, report: _Report) -> _Grid:
    """Sort images along the slice normal and derive the voxel grid; refuse duplicates, gaps, irregular spacing."""
    first = frames[0]
    row_dir, col_dir = first.orientation[:3].copy(), first.orientation[3:].copy()
    norms = (np.linalg.norm(row_dir), np.linalg.norm(col_dir))
    iop_text = [float(v) for v in first.orientation]
    if min(norms) < 1e-6:
        raise MeddetInputError(
            f"ImageOrientationPatient {iop_text} contains a zero direction.", path=first.where,
            hint="The file header is damaged; export the series again.",
        )
    if abs(norms[0] - 1) > 0.01 or abs(norms[1] - 1) > 0.01:
        report.warn(f"ImageOrientationPatient direction cosines are not unit length (lengths {norms[0]:.4f}, "
                    f"{norms[1]:.4f}) in series {series}; they were normalised.")
    row_dir /= norms[0]
    col_dir /= norms[1]
    dot = float(row_dir @ col_dir)
    if abs(dot) > 0.01:
        raise MeddetInputError(
            f"ImageOrientationPatient {iop_text} gives row and column directions that are not "
            f"perpendicular (angle {math.degrees(math.acos(max(-1.0, min(1.0, dot)))):.2f}°).",
            path=first.where, hint="The file header is damaged; export the series again.",
        )
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    along = np.array([f.position @ normal for f in frames])
    order = np.argsort(along, kind="stable")
    sorted_frames = [frames[i] for i in order]
    along = along[order]

    # Group images at the same position (duplicates); pixel comparison comes later.
    groups: list[list[_Frame]] = [[sorted_frames[0]]]
    group_along = [along[0]]
    for frame, z in zip(sorted_frames[1:], along[1:]):
        if z - group_along[-1] <= DUPLICATE_TOL_MM:
            groups[-1].append(frame)
        else:
            groups.append([frame])
            group_along.append(z)
    if len(groups) < 2:
        raise MeddetInputError(
            f"All {len(frames)} images of series {series} lie at the same position "
            f"({group_along[0]:.2f} mm along the slice normal), so they do not form a 3D volume "
            "(a time series or repeated acquisition of one slice?).",
            path=first.where, hint="Pass a series that covers a volume (a stack of slices).",
        )

    steps = np.diff(group_along)
    median = float(np.median(steps))
    big = [k for k, s in enumerate(steps) if s > GAP_FACTOR * median]
    if big:
        lines = []
        for k in big[:5]:
            missing = max(int(round(steps[k] / median)) - 1, 1)
            lines.append(
                f"  between slice {k + 1} ({groups[k][0].where}, at {group_along[k]:.2f} mm) and slice {k + 2} "
                f"({groups[k + 1][0].where}, at {group_along[k + 1]:.2f} mm): {steps[k]:.2f} mm, "
                f"about {missing} missing slice{'s' if missing != 1 else ''}"
            )
        more = f"\n  ... and {len(big) - 5} more gaps" if len(big) > 5 else ""
        raise MeddetInputError(
            f"Series {series} has {len(big)} gap{'s' if len(big) != 1 else ''} where slices are missing "
            f"(slices are normally {median:.2f} mm apart, positions measured along the slice normal):\n"
            + "\n".join(lines) + more,
            hint="Some files of the series are missing (incomplete transfer?). Send or export the complete series "
            "again.",
        )
    deviation = np.abs(steps - median)
    worst = int(np.argmax(deviation))
    if deviation[worst] > max(SPACING_OK_REL * median, SPACING_OK_ABS):
        detail = (
            f"slice-to-slice distances range from {steps.min():.3f} to {steps.max():.3f} mm (median {median:.3f} mm; "
            f"most irregular between slice {worst + 1} ({groups[worst][0].where}) and slice {worst + 2} "
            f"({groups[worst + 1][0].where}): {steps[worst]:.3f} mm)"
        )
        if deviation[worst] > SPACING_WARN_REL * median:
            raise MeddetInputError(
                f"Series {series} has non-uniform slice spacing: {detail}. A regular 3D grid would misplace "
                "slices by up to "
                f"{deviation[worst]:.2f} mm.",
                hint="Check that the series is complete and not a mix of reconstructions; export it again.",
            )
        report.warn(f"Slice spacing of series {series} varies slightly: {detail}. The volume uses the mean spacing.")

    # Grid: origin at the first slice, step = mean step from first to last slice.
    positions = np.array([g[0].position for g in groups])
    n = len(groups)
    step = (positions[-1] - positions[0]) / (n - 1)
    step_len = float(np.linalg.norm(step))
    cos_tilt = float(step @ normal) / step_len
    tilt_deg = math.degrees(math.acos(max(-1.0, min(1.0, cos_tilt))))
    if tilt_deg > MAX_TILT_DEG:
        raise MeddetInputError(
            f"The slices of series {series} are stepped {tilt_deg:.1f}° away from the slice normal (real gantry "
            f"tilts stay below {MAX_TILT_DEG:.0f}°): the positions and orientations in the headers contradict each "
            "other.",
            path=first.where, hint="The series geometry is damaged; export the series again.",
        )
    if tilt_deg > TILT_TOL_DEG:
        slice_dir = step / step_len
        spacing_z = step_len
    else:
        slice_dir = normal
        spacing_z = float(step @ normal)
        tilt_deg = 0.0
    # Every slice must lie on the line origin + k·step (only the along-step part may vary, checked above).
    residual = positions - (positions[0] + np.outer(np.arange(n), step))
    off_line = residual - np.outer(residual @ (step / step_len), step / step_len)
    off = np.linalg.norm(off_line, axis=1)
    k_off = int(np.argmax(off))
    pixel = min(first.pixel_spacing)
    if off[k_off] > max(COLLINEAR_TOL_REL * pixel, 0.05):
        raise MeddetInputError(
            f"The slice positions of series {series} do not lie on a straight line: slice {k_off + 1} "
            f"({groups[k_off][0].where}) is {off[k_off]:.2f} mm off the line through the first and last slices "
            f"(pixel size {pixel:.3f} mm).",
            hint="The series mixes stacks or has a varying gantry tilt; export a single regular stack.",
        )
    direction = np.column_stack([row_dir, col_dir, slice_dir])
    spacing = (first.pixel_spacing[1], first.pixel_spacing[0], spacing_z)
    return _Grid(groups=groups, origin=positions[0], direction=direction, spacing=spacing, tilt_deg=tilt_deg)


# ---------------------------------------------------------------------------------------------------- pixels
def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = safe_int(ds, "BitsAllocated", 16) or 16
    stored = safe_int(ds, "BitsStored", bits) or bits
    stored = min(max(stored, 1), bits)
    if safe_int(ds, "PixelRepresentation", 0) == 1:
        return -(2 ** (stored - 1)), 2 ** (stored - 1) - 1
    return 0, 2**stored - 1


def _output_dtype(frames: list[_Frame]) -> np.dtype:
    """int16 when every rescale is integral and the rescaled stored range fits, else float32."""
    lo, hi = math.inf, -math.inf
    for f in frames:
        if f.slope != round(f.slope) or f.intercept != round(f.intercept):
            return np.dtype(np.float32)
        s_lo, s_hi = _stored_range(f.header.ds)
        a, b = f.slope * s_lo + f.intercept, f.slope * s_hi + f.intercept
        lo, hi = min(lo, a, b), max(hi, a, b)
    if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def _decode(header: DicomHeader) -> np.ndarray:
    """Decode all frames of one file as (frames, rows, columns) stored values. Headers were validated before."""
    try:
        ds = pydicom.dcmread(header.path, force=header.forced)
        if "TransferSyntaxUID" not in ds.file_meta:  # header-less file: use the encoding pydicom detected
            ds.file_meta.TransferSyntaxUID = UID(header.transfer_syntax)
        array = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure on damaged data is bad input
        raise MeddetInputError(
            f"The pixel data could not be decoded ({UID(header.transfer_syntax).name}: "
            f"{type(exc).__name__}: {exc}).",
            path=header.label,
            hint="The file is damaged (incomplete copy?) or uses an unusual encoding; export the series again, "
            "uncompressed if possible.",
        ) from exc
    expected = (header.number_of_frames, header.rows, header.columns)
    if array.ndim == 2:
        array = array[np.newaxis]
    if tuple(array.shape) != expected:
        raise MeddetInputError(
            f"The decoded pixel data has shape {tuple(array.shape)} but the header says "
            f"{expected[0]} frame(s) of {expected[1]}×{expected[2]}.",
            path=header.label, hint="The file is damaged; export the series again.",
        )
    return array


def _rescaled(stored: np.ndarray, frame: _Frame, dtype: np.dtype) -> np.ndarray:
    if dtype == np.int16:
        return stored.astype(np.int32) * int(round(frame.slope)) + int(round(frame.intercept))
    return stored.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)


def _load_pixels(grid: _Grid, dtype: np.dtype, report: _Report) -> np.ndarray:
    rows, cols = grid.groups[0][0].header.rows, grid.groups[0][0].header.columns
    out = np.empty((len(grid.groups), rows, cols), dtype=dtype)

    def by_file(pairs: list[tuple[int, _Frame]]) -> dict[int, tuple[DicomHeader, list[tuple[int, _Frame]]]]:
        files: dict[int, tuple[DicomHeader, list[tuple[int, _Frame]]]] = {}
        for k, frame in pairs:
            files.setdefault(id(frame.header), (frame.header, []))[1].append((k, frame))
        return files

    # Pass 1: the first image of every position.
    for header, needed in by_file([(k, g[0]) for k, g in enumerate(grid.groups)]).values():
        stored = _decode(header)
        for k, frame in needed:
            values = _rescaled(stored[frame.frame_index], frame, dtype)
            if dtype == np.int16 and (values.min() < -32768 or values.max() > 32767):
                report.warn(f"Pixel values of {frame.where} exceed the 16-bit range; the volume is stored as float32.")
                out = out.astype(np.float32)
                dtype = np.dtype(np.float32)
                values = _rescaled(stored[frame.frame_index], frame, dtype)
            out[k] = values
        del stored

    # Pass 2: duplicates must be pixel-identical to the image kept at their position.
    dupes = [(k, f) for k, g in enumerate(grid.groups) for f in g[1:]]
    for header, needed in by_file(dupes).values():
        stored = _decode(header)
        for k, frame in needed:
            kept = grid.groups[k][0]
            if not np.array_equal(_rescaled(stored[frame.frame_index], frame, np.dtype(np.float32)),
                                  out[k].astype(np.float32)):
                raise MeddetInputError(
                    f"Two different images lie at the same slice position (slice {k + 1}, "
                    f"{kept.position @ np.cross(kept.orientation[:3], kept.orientation[3:]):.2f} mm along the "
                    f"normal): {kept.where} and {frame.where}.",
                    hint="The series mixes two acquisitions (e.g. two contrast phases or repeated scans) under one "
                    "series UID; export them separately or remove the extra files.",
                )
            report.warn(f"Duplicate slice: {frame.where} is identical to {kept.where} (same position, same pixels); "
                        "kept one.")
    return out


# ---------------------------------------------------------------------------------------------------- public API
def _series_listing(summaries: list[SeriesSummary]) -> str:
    return "\n".join(f"  {s.describe()}" for s in summaries)


def _key(display_uid: str) -> str:
    return "" if display_uid == "(no SeriesInstanceUID)" else display_uid


def _not_a_volume(headers: list[DicomHeader]) -> str | None:
    """Why a series cannot be a volume, judged from headers (None when it may be one)."""
    images = [h for h in headers if h.is_image]
    if sum(h.number_of_frames for h in images) < 2:
        return "a single 2D image"
    photometric = {safe_str(h.ds, "PhotometricInterpretation").upper() for h in images}
    if not photometric & set(GREYSCALE) and photometric != {""}:
        return "colour images"
    image_types = []
    for h in images:
        value = safe_get(h.ds, "ImageType") or []
        values = [value] if isinstance(value, str) else list(value)
        image_types.append({str(v).upper() for v in values})
    if all("LOCALIZER" in t for t in image_types):
        return "a localizer (scout)"
    return None


def _select_series(scan: ScanResult, series_uid: str | None, path: Path, report: _Report) -> list[DicomHeader]:
    summaries = scan.summaries()
    by_uid = scan.by_series()
    images = [s for s in summaries if s.is_image]
    others = [s for s in summaries if not s.is_image]
    skipped_note = ""
    if scan.skipped:
        skipped_note = f" {len(scan.skipped)} file(s) were skipped because they are not readable DICOM files."
    if not scan.headers:
        raise MeddetInputError(
            f"No DICOM files were found here.{skipped_note}",
            path=path,
            hint="Pass the folder that holds the DICOM files of the scan (or the scan's ZIP archive).",
        )
    if series_uid is not None:
        wanted = [s for s in summaries if s.series_uid == series_uid]
        if not wanted:
            raise MeddetInputError(
                f"Series {series_uid} is not here. Image series found:\n"
                + (_series_listing(images) or "  (none)"),
                path=path, hint="Copy one of the UIDs above into --series.",
            )
        if not wanted[0].is_image:
            raise MeddetInputError(
                f"Series {series_uid} is not an image series: it holds {wanted[0].non_image_reason}.",
                path=path,
                hint="Pass the CT/MR image series instead. Image series found:\n" + (_series_listing(images)
                                                                                     or "  (none)"),
            )
        chosen = series_uid
    else:
        if not images:
            raise MeddetInputError(
                "No image series was found here, only non-image objects:\n" + _series_listing(others)
                + skipped_note,
                path=path, hint="Pass the folder of the CT/MR image series itself.",
            )
        if len(images) > 1:
            # A CT export usually also holds a scout and a dose screenshot: set aside what cannot be a volume.
            reasons = {s.series_uid: _not_a_volume(by_uid[_key(s.series_uid)]) for s in images}
            volumes = [s for s in images if reasons[s.series_uid] is None]
            if len(volumes) != 1:
                listed = volumes or images
                raise MeddetInputError(
                    f"This folder holds {len(listed)} image series; meddet reads one at a time:\n"
                    + _series_listing(listed),
                    path=path,
                    hint=f"Choose one and pass its UID with --series, e.g. --series {listed[0].series_uid}",
                )
            for s in images:
                if reasons[s.series_uid] is not None:
                    report.warn(f"Ignored series {s.series_uid} ('{s.description}', {s.frame_count} image(s)): "
                                f"{reasons[s.series_uid]}, not a volume.")
            images = volumes
        chosen = images[0].series_uid
    headers = by_uid[_key(chosen)]
    for other in others:
        report.warn(f"Ignored series {other.series_uid}: it is not an image series ({other.non_image_reason}, "
                    f"{other.instance_count} file(s)).")
    non_images = [h for h in headers if not h.is_image]
    for h in non_images[:5]:
        report.warn(f"Ignored {h.label}: {h.non_image_reason()} inside image series {chosen}.")
    if len(non_images) > 5:
        report.warn(f"Ignored {len(non_images) - 5} more non-image objects inside image series {chosen}.")
    return [h for h in headers if h.is_image]


def _volume_from_headers(headers: list[DicomHeader], series: str, path: Path, report: _Report,
                         max_bytes: int) -> Volume:
    forced = [h.label for h in headers if h.forced]
    if forced:
        names = ", ".join(forced[:5]) + (f" and {len(forced) - 5} more" if len(forced) > 5 else "")
        report.warn(f"{len(forced)} file(s) have no DICOM preamble/'DICM' marker and were read anyway: {names}.")
    for header in headers:
        _check_pixel_module(header, max_bytes)
    frames = [f for h in headers for f in _frames_of(h)]
    if len(frames) == 1:
        raise MeddetInputError(
            f"Series {series} has a single 2D image ({frames[0].header.rows}×{frames[0].header.columns}), which is "
            "not a 3D volume.",
            path=frames[0].header.label if len(headers) == 1 else path,
            hint="Pass the folder that holds all the slices of the series (a chest CT has dozens to hundreds of "
            "files), or an enhanced multi-frame file.",
        )
    if len(frames) > MAX_DIMENSION:
        raise MeddetInputError(
            f"Series {series} has {len(frames)} images, more than the limit of {MAX_DIMENSION} slices.",
            path=path, hint="Split the series.",
        )
    _check_consistency(frames, series)
    grid = _build_grid(frames, series, report)
    dtype = _output_dtype(frames)
    rows, cols = frames[0].header.rows, frames[0].header.columns
    total = len(grid.groups) * rows * cols * dtype.itemsize
    if total > max_bytes:
        raise MeddetInputError(
            f"Series {series} would need {total / GiB:.2f} GiB in memory ({len(grid.groups)} slices of "
            f"{rows}×{cols}, {dtype}), above the {max_bytes / GiB:.2f} GiB limit. Nothing was loaded.",
            path=path, hint="Pass a smaller series (e.g. a thicker-slice reconstruction).",
        )
    if grid.tilt_deg:
        declared = _number(safe_get(frames[0].header.ds, "GantryDetectorTilt"), None)
        note = f" (header GantryDetectorTilt {declared:g}°)" if declared is not None else ""
        report.warn(f"Series {series} is gantry-tilted by {grid.tilt_deg:.2f}°{note}: slices are stepped "
                    "off the slice normal. The sheared grid is kept as acquired (not resampled).")
    photometrics = {safe_str(f.header.ds, "PhotometricInterpretation").upper() for f in frames}
    if "MONOCHROME1" in photometrics:
        report.warn(f"Series {series} is MONOCHROME1 (bright = low values); pixel values are kept as stored and "
                    "rescaled, only their display is inverted.")
    slopes = {(f.slope, f.intercept) for f in frames}
    if len(slopes) > 1:
        logger.info("series %s: rescale slope/intercept differ between slices (%d combinations); applied per slice",
                    series, len(slopes))

    array = _load_pixels(grid, dtype, report)
    return _make_volume(array, grid, frames, report)


def _make_volume(array: np.ndarray, grid: _Grid, frames: list[_Frame], report: _Report) -> Volume:
    kept = [g[0] for g in grid.groups]
    ds = kept[0].header.ds
    metadata: dict[str, Any] = {
        "series_uid": kept[0].header.series_uid,
        "study_uid": kept[0].header.study_uid,
        "series_description": kept[0].header.description,
        "patient_id": safe_str(ds, "PatientID"),
        "patient_name": decode_person_name(ds),
        "slice_thickness": kept[0].slice_thickness,
        "source_files": [f.header.label for f in kept],
        "sop_instance_uids": [f.header.sop_instance_uid for f in kept],
        "frame_numbers": [f.frame_index + 1 for f in kept],
        "sop_class_uid": kept[0].header.sop_class_uid,
        "frame_of_reference_uid": safe_str(ds, "FrameOfReferenceUID"),
        "manufacturer": safe_str(ds, "Manufacturer"),
        "transfer_syntax": kept[0].header.transfer_syntax,
    }
    if kept[0].window is not None:
        metadata["window_center"], metadata["window_width"] = kept[0].window
    if grid.tilt_deg:
        metadata["gantry_tilt_deg"] = round(grid.tilt_deg, 4)
    try:
        return Volume(
            array=array,
            spacing=grid.spacing,
            origin=tuple(grid.origin),
            direction=grid.direction,
            modality=kept[0].header.modality,
            metadata=metadata,
            warnings=list(report.messages),
        )
    except ValueError as exc:  # geometry the checks above did not foresee
        raise MeddetInputError(
            f"The geometry of series {metadata['series_uid']} is unusable ({exc}).",
            path=kept[0].where, hint="The series headers are damaged; export the series again.",
        ) from exc


def read_dicom(path: str | Path, series_uid: str | None = None, *, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    """Read one DICOM image series into a Volume (HU for CT).

    ``path`` is a folder (searched recursively; file names and extensions do not matter), a single enhanced
    multi-frame DICOM file, or a ``.zip`` archive (extracted safely, see :mod:`meddet.io.archive`). With several
    image series present, ``series_uid`` picks one; without it the error lists them. Non-image objects (SEG, SR,
    RTSTRUCT, presentation states...) and non-DICOM files are skipped with a warning.

    Raises :class:`~meddet.errors.MeddetInputError` for every kind of unusable input, with the file and numbers.
    Metadata: see :mod:`meddet.volume`; ``source_files``, ``sop_instance_uids`` and ``frame_numbers`` (1-based)
    are per slice, in slice order (for zip input ``source_files`` entries read ``archive.zip::member``).
    """
    src = Path(path)
    if not src.exists():
        raise MeddetInputError("This path does not exist.", path=src, hint="Check the spelling of the path.")
    with quiet_pydicom():
        return _read_path(src, series_uid, max_bytes)


def _read_path(src: Path, series_uid: str | None, max_bytes: int) -> Volume:
    report = _Report()
    if src.is_file() and (src.suffix.lower() == ".zip" or looks_like_zip(src)):
        with extracted_zip(src) as folder:
            scan = scan_path(folder, label_base=str(src))
            return _read_scan(scan, series_uid, src, report, max_bytes)
    if src.is_file():
        try:
            header = read_dicom_header(src)
        except NotDicomError as exc:
            raise MeddetInputError(
                f"This file {exc}.", path=src,
                hint="Pass a DICOM file, a folder of DICOM files, or a ZIP archive of them.",
            ) from exc
        if not header.is_image:
            raise MeddetInputError(
                f"This DICOM file is not an image: it is a {header.non_image_reason()}.", path=src,
                hint="Pass the CT/MR image series (folder of slices or an enhanced multi-frame file).",
            )
        scan = ScanResult(root=src, headers=[header])
        return _read_scan(scan, series_uid, src, report, max_bytes)
    scan = scan_path(src)
    return _read_scan(scan, series_uid, src, report, max_bytes)


def _read_scan(scan: ScanResult, series_uid: str | None, path: Path, report: _Report, max_bytes: int) -> Volume:
    for message in scan.skip_warnings():
        report.warn(message)
    headers = _select_series(scan, series_uid, path, report)
    series = headers[0].series_uid or "(no SeriesInstanceUID)"
    return _volume_from_headers(headers, series, path, report, max_bytes)
