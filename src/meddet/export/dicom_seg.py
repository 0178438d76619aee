"""Write detected lesions as a DICOM Segmentation (SEG) that lies exactly over the source CT series.

Why a SEG: it is the DICOM object PACS and viewers (OHIF, 3D Slicer, Horos...) show as an overlay on the series it
references, so a radiologist sees meddet's lesions in the images they already read, not in a separate file.

Why the geometry comes from the source files and never from a grid: a SEG frame is displayed where its
ImagePositionPatient/ImageOrientationPatient put it. highdicom copies those per frame from the *source images*
themselves when it is given one label frame per source frame, so every frame is stamped with the position of the
slice it was computed on, whatever the series' geometry: axial, oblique, or gantry-tilted (a sheared grid that a
regular volume description cannot hold; writing such a series from a resampled, de-sheared grid is how
TotalSegmentator issue #610 misplaced its masks). meddet's label volume is on the source's own voxel grid (one label
slice per source slice, see :mod:`meddet.inference.predictor`), so slice ``z`` of the labels is paired with the
source file ``source.metadata["source_files"][z]`` (frame ``frame_numbers[z]`` of a multi-frame file) and nothing
is resampled. Before writing, each source frame's position and orientation is checked against the Volume's grid,
so a reoriented Volume or files changed on disk fail loudly instead of producing a misplaced overlay.

Segments: with a lesion list, one segment per lesion ("Lung nodule 3", score and size in the segment description,
a tracking ID and a distinct display colour), numbered in descending score so segment 1 is the most suspicious;
a viewer then lists, colours and toggles each nodule on its own. Without a lesion list, one "Lung nodule" segment
holds every labelled voxel. All segments are SNOMED CT "Morphologically altered structure" (49755003, which pydicom
spells ``MorphologicallyAbnormalStructure``) / "Nodule" (27925004) in the lung, algorithm type AUTOMATIC.

No lesions: an empty mask writes **no** SEG and returns None (logged on ``meddet.export``). highdicom would accept
an all-empty segmentation (encoding every frame empty), but an empty SEG in PACS reads like a finding to open and
costs a full series of blank frames; the lesions.json contract (docs/lesions-json.md) already says the SEG is absent
when no lesion was found. A stale file at ``path`` from an earlier run is removed for the same reason.

Privacy: highdicom copies patient and study attributes from the source headers into the SEG, as it must; they are
never logged or put in messages here.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from meddet import __version__
from meddet.errors import MeddetInputError
from meddet.volume import Volume

logger = logging.getLogger("meddet.export")

SERIES_DESCRIPTION = "meddet lung nodules"
CONTENT_LABEL = "LUNG_NODULES"  # CS: upper case, at most 16 characters
CONTENT_DESCRIPTION = "meddet lung nodule segmentation"
SEGMENT_LABEL = "Lung nodule"
SERIES_NUMBER_OFFSET = 1000  # the SEG is listed next to its source series (source number + 1000) in a viewer
DEFAULT_SERIES_NUMBER = 1000
# Distinct, saturated display colours (RGB 0-255), cycled per segment: neighbouring nodules must not look alike.
PALETTE = (
    (255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 80),
    (255, 96, 255), (0, 255, 200), (255, 140, 40), (170, 120, 255),
)
MAX_SEGMENTS = 65535  # Segment Number is a US; one segment per lesion cannot exceed it
POSITION_TOL_FRACTION = 0.5  # a source frame further than this × slice step from its grid slice is "not the same"
ORIENTATION_TOL = 1e-3


def write_dicom_seg(
    labels: Volume,
    source: Volume,
    path: str | Path,
    lesions: list[dict[str, Any]] | None = None,
    algorithm_name: str = "meddet",
    algorithm_version: str = __version__,
) -> Path | None:
    """Write ``labels`` (on ``source``'s grid) as a BINARY DICOM SEG over ``source``'s DICOM files; return its path.

    ``labels`` is an instance label map (0 background, lesion ``id`` elsewhere; a boolean mask is one lesion) on
    exactly the voxel grid of ``source``, which must have been read from DICOM (``metadata["source_files"]``).
    ``lesions`` are lesions.json records (``id``, ``score``, ``diameter_mm``, ``volume_ml``...): one segment each,
    highest score first. Label values without a record still get a segment (no voxel is dropped); records without
    voxels are skipped with a logged note. Without ``lesions``, all labelled voxels form one segment.

    Returns None, and writes nothing, when the mask is empty (see the module docstring for why).
    Raises :class:`MeddetInputError` when the source files cannot be read or no longer match ``source``, and
    ValueError when ``labels`` is not on ``source``'s grid (a programming error, not bad input).
    """
    import highdicom as hd

    path = Path(path)
    _check_same_grid(labels, source)
    slice_labels, segments = _segment_plan(labels.array, lesions)
    if not segments:
        if path.is_file():
            path.unlink()
            logger.info("Removed the previous DICOM SEG at %s: this scan now has no lesions.", path)
        logger.info("No lesion voxels in the mask: no DICOM SEG written (%s).", path)
        return None

    datasets, frame_map = _load_sources(source)
    _check_source_geometry(source, datasets, frame_map)
    pixel_array = _frames_in_source_order(slice_labels, datasets, frame_map)

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=_codes().cid7162.ArtificialIntelligence,
        version=str(algorithm_version),
    )
    descriptions = [
        _segment_description(number, value, lesion, algorithm, single=lesions is None)
        for number, (value, lesion) in enumerate(segments, start=1)
    ]
    first = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(first),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="meddet",
        manufacturer_model_name=algorithm_name,
        software_versions=str(algorithm_version),
        device_serial_number=f"meddet-{__version__}",
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")  # a reader (PACS gateway) never sees a half-written file
    seg.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)
    logger.info("Wrote DICOM SEG with %d segment(s), %d frame(s) over %d source slice(s): %s",
                len(descriptions), int(seg.NumberOfFrames), source.shape[0], path)
    return path


# ---------------------------------------------------------------------------------------------------- segments
def _codes() -> Any:
    from pydicom.sr.codedict import codes

    return codes


def _check_same_grid(labels: Volume, source: Volume) -> None:
    """Labels must be the source's own grid: a SEG frame is paired with a source slice by index, nothing else."""
    if labels.shape != source.shape:
        raise ValueError(
            f"labels shape {labels.shape} differs from the source scan's {source.shape}: the SEG needs one label "
            "slice per source slice (predict on the source's own grid, do not resample)."
        )
    if not labels.same_geometry(source, atol=1e-3):
        raise ValueError("labels are not on the source scan's voxel grid (spacing, origin or direction differ).")


def _as_integer_labels(array: np.ndarray) -> np.ndarray:
    """Labels as an integer array without copying when they already are one (CT masks are large)."""
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    nonzero = array[array != 0]
    if not np.all(nonzero == np.rint(nonzero)) or (nonzero.size and nonzero.min() < 0):
        raise ValueError("labels must hold non-negative integer lesion ids (0 = background).")
    return array.astype(np.int64)


def _segment_plan(
    array: np.ndarray, lesions: list[dict[str, Any]] | None
) -> tuple[np.ndarray, list[tuple[int | None, dict[str, Any] | None]]]:
    """Relabel to segment numbers 1..N (slice order) and list ``(label value, lesion record)`` per segment.

    Works on the non-zero voxels only: a chest CT mask is ~10⁸ voxels of which a few thousand are lesion.
    """
    ints = _as_integer_labels(np.asarray(array))
    flat_index = np.flatnonzero(ints)
    if flat_index.size == 0:
        return np.zeros(ints.shape, np.uint8), []
    values = ints.ravel()[flat_index]
    if lesions is None:  # one segment for every labelled voxel
        out = np.zeros(ints.shape, np.uint8)
        out.ravel()[flat_index] = 1
        return out, [(None, None)]

    present = np.unique(values)
    by_id: dict[int, dict[str, Any]] = {}
    for lesion in lesions:
        if "id" in lesion:
            by_id.setdefault(int(lesion["id"]), lesion)
    ranked = sorted(by_id.items(), key=lambda item: -float(item[1].get("score") or 0.0))  # stable: ties keep order
    present_set = {int(v) for v in present}
    order = [lesion_id for lesion_id, _ in ranked if lesion_id in present_set]
    missing = len(ranked) - len(order)
    if missing:
        logger.warning("%d lesion record(s) have no voxels in the mask and get no SEG segment.", missing)
    listed = set(order)
    unlisted = [int(v) for v in present if int(v) not in listed]
    if unlisted:
        logger.warning("%d label value(s) in the mask are not in the lesion list; they get unnamed segments.",
                       len(unlisted))
    order += unlisted
    if len(order) > MAX_SEGMENTS:
        raise ValueError(f"{len(order)} lesions exceed the {MAX_SEGMENTS} segments a DICOM SEG can hold.")

    lookup = np.zeros(int(present.max()) + 1, np.uint16 if len(order) > 255 else np.uint8)
    lookup[order] = np.arange(1, len(order) + 1)
    out = np.zeros(ints.shape, lookup.dtype)
    out.ravel()[flat_index] = lookup[values]
    return out, [(value, by_id.get(value)) for value in order]


def _lesion_text(lesion: dict[str, Any]) -> str:
    """Score and size in words a viewer shows next to the segment (Segment Description, LO: 64 characters)."""
    parts = []
    if lesion.get("score") is not None:
        parts.append(f"score {float(lesion['score']):.2f}")
    if lesion.get("diameter_mm") is not None:
        parts.append(f"diameter {float(lesion['diameter_mm']):.1f} mm")
    if lesion.get("volume_ml") is not None:
        parts.append(f"volume {float(lesion['volume_ml']):.3f} ml")
    return ", ".join(parts)[:64]


def _segment_description(number: int, value: int | None, lesion: dict[str, Any] | None, algorithm: Any,
                         single: bool) -> Any:
    import highdicom as hd

    codes = _codes()
    label = SEGMENT_LABEL if single else f"{SEGMENT_LABEL} {value}"
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=f"meddet lesion {value}" if not single else "meddet lesions",
        anatomic_regions=[codes.SCT.Lung],
        display_color=hd.color.CIELabColor.from_rgb(*PALETTE[(number - 1) % len(PALETTE)]),
    )
    if lesion is not None:
        text = _lesion_text(lesion)
        if text:
            description.SegmentDescription = text
    elif not single:
        description.SegmentDescription = "label not in the lesion list"
    return description


def _series_number(first: Any) -> int:
    try:
        return int(first.SeriesNumber) + SERIES_NUMBER_OFFSET
    except (AttributeError, TypeError, ValueError):
        return DEFAULT_SERIES_NUMBER


# ---------------------------------------------------------------------------------------------------- source files
def _read_header(label: str) -> Any:
    """Read one source file's header (no pixels: highdicom needs only attributes of the source images).

    ``label`` is a path, or ``archive.zip::member`` for series read from a ZIP (the reader's extraction folder is
    gone by now, so the member is read straight from the archive; nothing is extracted).
    """
    import pydicom

    from meddet.io.dicom_scan import quiet_pydicom

    try:
        with quiet_pydicom():
            if Path(label).is_file():
                return pydicom.dcmread(label, stop_before_pixels=True)
            archive, sep, member = label.partition("::")
            if sep and Path(archive).is_file():
                with zipfile.ZipFile(archive) as zf, zf.open(member) as fh:
                    return pydicom.dcmread(fh, stop_before_pixels=True)
    except (OSError, KeyError, zipfile.BadZipFile, pydicom.errors.InvalidDicomError) as exc:
        raise MeddetInputError(
            f"The source DICOM file could not be read again to write the DICOM SEG ({type(exc).__name__}).",
            path=label, hint="Keep the input series in place until meddet has finished, then run again.",
        ) from exc
    raise MeddetInputError(
        "The source DICOM file is no longer there, so the DICOM SEG cannot reference it.",
        path=label, hint="Keep the input series in place until meddet has finished, then run again.",
    )


def _load_sources(source: Volume) -> tuple[list[Any], list[tuple[int, int]]]:
    """The source datasets highdicom references, and for each slice z its (dataset index, 0-based frame).

    A classic series is one single-frame file per slice; an enhanced series is one multi-frame file whose frames
    the reader may have re-ordered (``frame_numbers``). Several multi-frame files, or a mixture, cannot be given to
    highdicom with implicit frame positions and are refused rather than guessed.
    """
    files = source.metadata.get("source_files")
    if not files or len(files) != source.shape[0]:
        raise MeddetInputError(
            "A DICOM SEG can only be written for a scan read from DICOM files (one file or frame per slice).",
            hint="Pass the DICOM series itself, not a NIfTI/NRRD conversion of it.",
        )
    frames = list(source.metadata.get("frame_numbers") or [1] * len(files))
    uids = source.metadata.get("sop_instance_uids")
    unique = list(dict.fromkeys(files))
    datasets = [_read_header(label) for label in unique]
    index_of = {label: i for i, label in enumerate(unique)}
    frame_map = [(index_of[label], int(frame) - 1) for label, frame in zip(files, frames)]
    multi = [int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets]
    if any(multi) and len(datasets) > 1:
        raise MeddetInputError(
            "This series is split over several multi-frame DICOM files; meddet writes DICOM SEG only for a "
            "classic series (one file per slice) or a single multi-frame file.",
            path=unique[0], hint="Use the mask (NIfTI/NRRD) output for this series.",
        )
    if uids:
        for z, (i, _) in enumerate(frame_map):
            if str(getattr(datasets[i], "SOPInstanceUID", "")) != str(uids[z]):
                raise MeddetInputError(
                    f"The source file for slice {z + 1} is not the image meddet read (its SOP Instance UID changed).",
                    path=files[z], hint="Keep the input series unchanged until meddet has finished, then run again.",
                )
    return datasets, frame_map


def _frame_geometry(ds: Any, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(ImagePositionPatient, ImageOrientationPatient) of frame ``frame`` (0-based) of ``ds``."""
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 and "PerFrameFunctionalGroupsSequence" in ds:
        item = ds.PerFrameFunctionalGroupsSequence[frame]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        if "PlaneOrientationSequence" in item:
            orientation = item.PlaneOrientationSequence[0].ImageOrientationPatient
        else:
            orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    else:
        position, orientation = ds.ImagePositionPatient, ds.ImageOrientationPatient
    return np.asarray(position, float), np.asarray(orientation, float)


def _check_source_geometry(source: Volume, datasets: list[Any], frame_map: list[tuple[int, int]]) -> None:
    """Each source frame must sit where ``source``'s grid puts slice z: the labels are paired with it by index.

    Catches a Volume that was reoriented or cropped after reading, and files replaced on disk, both of which would
    otherwise give a SEG that looks valid but lies over the wrong anatomy.
    """
    expected_orientation = np.concatenate([source.direction[:, 0], source.direction[:, 1]])
    tolerance = POSITION_TOL_FRACTION * source.spacing[2]
    corners = source.index_zyx_to_lps(np.array([[z, 0, 0] for z in range(source.shape[0])], float))
    for z, (i, frame) in enumerate(frame_map):
        try:
            position, orientation = _frame_geometry(datasets[i], frame)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise MeddetInputError(
                f"The source image for slice {z + 1} has no usable position or orientation.",
                hint="The series headers changed since meddet read them; run again on an unchanged series.",
            ) from exc
        off = float(np.linalg.norm(position - corners[z]))
        if off > tolerance or not np.allclose(orientation, expected_orientation, atol=ORIENTATION_TOL):
            raise MeddetInputError(
                f"Source slice {z + 1} is not where the scan's grid puts it ({off:.2f} mm away, or rotated), so "
                "a DICOM SEG would lie over the wrong anatomy.",
                hint="Write the SEG from the Volume exactly as read from this series (not reoriented or cropped).",
            )


def _frames_in_source_order(slice_labels: np.ndarray, datasets: list[Any],
                            frame_map: list[tuple[int, int]]) -> np.ndarray:
    """The label frames in the order highdicom pairs them with the source: file order, or frame order of one file.

    For a multi-frame source, highdicom pairs ``pixel_array[i]`` with frame ``i + 1``; frames the reader dropped
    (none in a valid series) stay empty and are omitted from the SEG.
    """
    if len(datasets) > 1 or int(getattr(datasets[0], "NumberOfFrames", 1) or 1) == 1:
        return slice_labels  # slice z ↔ datasets[z], already in that order
    n_frames = int(datasets[0].NumberOfFrames)
    out = np.zeros((n_frames, *slice_labels.shape[1:]), slice_labels.dtype)
    for z, (_, frame) in enumerate(frame_map):
        out[frame] = slice_labels[z]
    return out


__all__ = ["write_dicom_seg"]
