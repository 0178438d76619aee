"""Find DICOM files and group them into series, reading headers only.

Why: a study folder from a PACS export holds several series (scout, thin and thick reconstructions, a dose report,
maybe a SEG), often in files without extension and with arbitrary names, mixed with README files, thumbnails and
zero-byte leftovers. Before any pixel is read, meddet must know which files are DICOM, which series they belong
to, and whether each is an image series at all. Headers are read up to (not including) the pixel data, and the
declared position and length of the pixel data are recorded so the reader can check them against the file size
and the image dimensions before decoding anything.

Nothing here logs or prints patient names or IDs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.uid import UID

from meddet.errors import MeddetInputError

logger = logging.getLogger("meddet.io")

PIXEL_TAGS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
UNDEFINED_LENGTH = 0xFFFFFFFF

# Modalities whose objects are never image series that meddet can turn into a volume.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "PR", "KO", "REG", "FID", "DOC",
     "RWV", "PLAN", "AU", "ECG", "HD", "EPS", "RESP", "SMR", "M3D", "ASMT", "POS", "STAIN", "TEXTUREMAP"}
)
# Words in SOP Class names of non-image objects (pydicom's UID dictionary names).
NON_IMAGE_SOP_CLASS_WORDS = (
    "Segmentation", "SR Storage", "Structured Report", "Presentation State", "Key Object", "Structure Set",
    "RT Plan", "RT Dose", "RT Beams", "RT Treatment", "Registration", "Encapsulated", "Waveform", "Raw Data",
    "Media Storage Directory", "Spectroscopy", "Surface", "Tractography", "Real World Value Mapping",
    "Document", "Parametric Map", "Measurement Report",
)
MAX_NAMED_SKIPS = 20  # individual "skipped file" warnings before they are summarised


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings (Python warnings and its ``pydicom`` logger) while meddet reads files.

    pydicom's messages about malformed values quote those values, which may be patient names; meddet reports the
    problems that matter in its own words instead.
    """
    pydicom_logger = logging.getLogger("pydicom")
    old_level = pydicom_logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            pydicom_logger.setLevel(old_level)


class NotDicomError(Exception):
    """Internal: the file is not a (readable) DICOM file. Carries a reason for the user."""


def safe_get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.keyword`` or ``default`` when absent, empty or unreadable (a malformed value must not crash a scan)."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - any decoding problem of a damaged header means "no usable value"
        return default
    if value is None:
        return default
    if isinstance(value, (str, bytes)) and len(value) == 0:
        return default
    return value


def safe_int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = safe_get(ds, keyword)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return default


def safe_str(ds: Dataset, keyword: str, default: str = "") -> str:
    value = safe_get(ds, keyword)
    if value is None:
        return default
    try:
        return str(value).strip()
    except Exception:  # noqa: BLE001
        return default


_UID_RE = re.compile(r"^[0-9][0-9.]{0,127}$")
_CODE_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def clean_text(value: str, max_len: int) -> str | None:
    """``value`` if it is plausible header text (not over-long, no control characters), else None.

    A damaged length field makes pydicom read neighbouring elements into a value; such garbage could contain
    the patient's name, so it is never put into a message.
    """
    if len(value) > max_len or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value):
        return None
    return value


def decode_person_name(ds: Dataset) -> str:
    """The patient name as text, whatever the (declared or undeclared) character set; never raises.

    With no SpecificCharacterSet, raw bytes are tried as UTF-8 first (common in undeclared exports), then Latin-1
    (which decodes any byte). The result is identifying: store it, never log it.
    """
    try:
        elem = ds.get_item(0x00100010)
    except Exception:  # noqa: BLE001
        elem = None
    if elem is None:
        return ""
    raw = getattr(elem, "value", None)
    declared = safe_get(ds, "SpecificCharacterSet")
    if isinstance(raw, (bytes, bytearray)) and not declared:
        text = bytes(raw).rstrip(b" \x00")
        for encoding in ("utf-8", "latin-1"):
            try:
                return text.decode(encoding)
            except UnicodeDecodeError:
                continue
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(ds.PatientName)
    except Exception:  # noqa: BLE001
        if isinstance(raw, (bytes, bytearray)):
            return bytes(raw).decode("latin-1", errors="replace")
        return ""


@dataclass
class DicomHeader:
    """One DICOM file's header (no pixel data) plus where its pixel data lies in the file."""

    path: Path
    label: str  # how the file is named in messages and in ``source_files`` (a path, or ``archive.zip::member``)
    ds: Dataset
    forced: bool  # read without the 128-byte preamble / 'DICM' marker
    file_size: int
    pixel_tag: int | None = None  # None: the file has no pixel data element
    pixel_length: int | None = None  # declared length; UNDEFINED_LENGTH for encapsulated (compressed) data
    pixel_offset: int | None = None  # file offset of the pixel data value; None when unknown (deflated files)

    # ---- cheap accessors (never raise)
    @property
    def series_uid(self) -> str:
        uid = safe_str(self.ds, "SeriesInstanceUID").rstrip("\x00 ")
        if uid and not _UID_RE.match(uid):
            return "(invalid SeriesInstanceUID)"
        return uid

    @property
    def study_uid(self) -> str:
        uid = safe_str(self.ds, "StudyInstanceUID").rstrip("\x00 ")
        return uid if not uid or _UID_RE.match(uid) else "(invalid StudyInstanceUID)"

    @property
    def sop_instance_uid(self) -> str:
        return safe_str(self.ds, "SOPInstanceUID")

    @property
    def sop_class_uid(self) -> str:
        return safe_str(self.ds, "SOPClassUID") or safe_str(getattr(self.ds, "file_meta", Dataset()),
                                                             "MediaStorageSOPClassUID")

    @property
    def sop_class_name(self) -> str:
        uid = self.sop_class_uid.rstrip("\x00 ")
        if not uid:
            return "unknown SOP class"
        if not _UID_RE.match(uid):
            return "invalid SOP class UID"
        name = UID(uid).name
        return name if name != uid else f"SOP class {uid}"

    @property
    def modality(self) -> str:
        value = safe_str(self.ds, "Modality").upper()
        if not value:
            return "OT"
        return value if _CODE_RE.match(value) else "unreadable modality"

    @property
    def description(self) -> str:
        """SeriesDescription, or '' when absent or unreadable garbage (see :func:`clean_text`)."""
        return clean_text(safe_str(self.ds, "SeriesDescription"), 64) or ""

    @property
    def rows(self) -> int | None:
        return safe_int(self.ds, "Rows")

    @property
    def columns(self) -> int | None:
        return safe_int(self.ds, "Columns")

    @property
    def number_of_frames(self) -> int:
        n = safe_int(self.ds, "NumberOfFrames", 1)
        return 1 if n is None else n

    @property
    def transfer_syntax(self) -> str:
        meta = getattr(self.ds, "file_meta", None)
        ts = safe_str(meta, "TransferSyntaxUID") if meta is not None else ""
        if not ts and self.forced:
            # No file meta: pydicom guessed the encoding while reading.
            implicit = getattr(self.ds, "is_implicit_VR", True)
            little = getattr(self.ds, "is_little_endian", True)
            if implicit:
                ts = pydicom.uid.ImplicitVRLittleEndian
            else:
                ts = pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        return ts or str(pydicom.uid.ImplicitVRLittleEndian)

    @property
    def is_enhanced(self) -> bool:
        try:
            return "PerFrameFunctionalGroupsSequence" in self.ds
        except Exception:  # noqa: BLE001
            return False

    def non_image_reason(self) -> str | None:
        """Why this object is not part of an image series (None when it is an image)."""
        modality = self.modality.upper()
        sop_name = self.sop_class_name
        if modality in NON_IMAGE_MODALITIES:
            return f"{modality} object ({sop_name})"
        if any(word.lower() in sop_name.lower() for word in NON_IMAGE_SOP_CLASS_WORDS):
            return f"{modality} object ({sop_name})"
        if "Image Storage" in sop_name:
            return None  # an image, even if damaged: the reader reports what is wrong with it
        if not self.rows or not self.columns or self.pixel_tag is None:
            return f"{modality} object without an image ({sop_name})"
        if safe_int(self.ds, "BitsAllocated") == 1:
            return f"{modality} binary (1-bit) object ({sop_name})"
        return None

    @property
    def is_image(self) -> bool:
        return self.non_image_reason() is None


def _plausible_headerless_dicom(head: bytes) -> bool:
    """Could these first bytes start a DICOM data set written without preamble? (group 0002 or 0008 tag)."""
    if len(head) < 8:
        return False
    return head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def read_dicom_header(path: str | Path, label: str | None = None) -> DicomHeader:
    """Read the header of one file up to its pixel data. Raises ``NotDicomError`` (with a reason) for non-DICOM.

    Files without the 128-byte preamble and 'DICM' marker are read with ``force=True`` only when their first
    bytes look like a DICOM tag, and kept only when the result has the identifying tags of a DICOM instance.
    """
    path = Path(path)
    label = label or str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise NotDicomError(f"cannot be opened ({exc.strerror or exc})") from exc
    if size == 0:
        raise NotDicomError("is empty (0 bytes)")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        raise NotDicomError("is a ZIP archive inside the folder (not opened; pass the archive itself)")
    has_marker = len(head) >= 132 and head[128:132] == b"DICM"
    forced = not has_marker
    if forced and not _plausible_headerless_dicom(head):
        raise NotDicomError("is not a DICOM file (no 'DICM' marker and no DICOM header)")

    found: dict[str, int] = {}
    try:
        with open(path, "rb") as fh, quiet_pydicom():

            def stop_at_pixels(tag: Any, vr: Any, length: int) -> bool:
                if int(tag) in PIXEL_TAGS:
                    found["tag"] = int(tag)
                    found["length"] = int(length)
                    found["offset"] = fh.tell()
                    return True
                return False

            ds = read_partial(fh, stop_when=stop_at_pixels, force=forced)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged input; all mean "unreadable"
        if forced:
            raise NotDicomError("is not a DICOM file (no 'DICM' marker and the content is not a DICOM header)") from exc
        raise NotDicomError(f"is a damaged DICOM file that cannot be read ({type(exc).__name__}: {exc})") from exc

    if forced:
        # force=True will "read" almost anything; keep it only if it is recognisably a DICOM instance.
        if not (safe_str(ds, "SOPInstanceUID") or safe_str(ds, "SeriesInstanceUID")) or not (
            safe_str(ds, "SOPClassUID") or safe_str(ds, "Modality")
        ):
            raise NotDicomError("is not a DICOM file (no 'DICM' marker and no SOP/series identifiers)")

    header = DicomHeader(path=path, label=label, ds=ds, forced=forced, file_size=size)
    if found:
        header.pixel_tag = found["tag"]
        header.pixel_length = found["length"]
        deflated = header.transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian
        header.pixel_offset = None if deflated else found["offset"]
    return header


@dataclass
class SeriesSummary:
    """What ``meddet info`` shows for one series found in a folder (no patient data)."""

    series_uid: str
    description: str
    modality: str
    instance_count: int  # files
    frame_count: int  # images (slices): equals instance_count for classic series, more for multi-frame files
    rows: int | None
    columns: int | None
    is_image: bool
    sop_class: str
    study_uid: str = ""
    non_image_reason: str | None = None

    @property
    def size_text(self) -> str:
        return f"{self.rows}×{self.columns}" if self.rows and self.columns else "-"

    def describe(self) -> str:
        desc = f"'{self.description}'" if self.description else "(no description)"
        what = f"{self.frame_count} slice{'s' if self.frame_count != 1 else ''}"
        if self.frame_count != self.instance_count:
            what += f" in {self.instance_count} file{'s' if self.instance_count != 1 else ''}"
        kind = "" if self.is_image else f"  [not an image series: {self.non_image_reason}]"
        return f"{self.series_uid}  {desc}  {self.modality}  {what}  {self.size_text}{kind}"


@dataclass
class ScanResult:
    """All DICOM headers found under a path, plus what was skipped and why."""

    root: Path
    headers: list[DicomHeader] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file label, reason)

    def by_series(self) -> dict[str, list[DicomHeader]]:
        groups: dict[str, list[DicomHeader]] = {}
        for header in self.headers:
            groups.setdefault(header.series_uid, []).append(header)
        return groups

    def summaries(self) -> list[SeriesSummary]:
        out = []
        for uid, headers in self.by_series().items():
            images = [h for h in headers if h.is_image]
            first = (images or headers)[0]
            out.append(
                SeriesSummary(
                    series_uid=uid or "(no SeriesInstanceUID)",
                    description=first.description,
                    modality=first.modality,
                    instance_count=len(headers),
                    frame_count=sum(h.number_of_frames for h in headers),
                    rows=first.rows,
                    columns=first.columns,
                    is_image=bool(images),
                    sop_class=first.sop_class_name,
                    study_uid=first.study_uid,
                    non_image_reason=None if images else first.non_image_reason(),
                )
            )
        out.sort(key=lambda s: (not s.is_image, s.series_uid))
        return out

    def skip_warnings(self) -> list[str]:
        """One warning per skipped file (summarised past ``MAX_NAMED_SKIPS``)."""
        msgs = [f"Skipped file {label}: it {reason}." for label, reason in self.skipped[:MAX_NAMED_SKIPS]]
        extra = len(self.skipped) - MAX_NAMED_SKIPS
        if extra > 0:
            msgs.append(f"Skipped {extra} more files that are not readable DICOM files.")
        return msgs


def _raise(exc: OSError) -> None:
    raise exc


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def scan_path(path: str | Path, label_base: str | None = None,
              label_for: Callable[[Path], str] | None = None) -> ScanResult:
    """Scan a folder recursively (or a single file) for DICOM headers.

    Non-DICOM files (empty, text, images, archives) are skipped and listed in ``ScanResult.skipped``; hidden files
    (``.DS_Store``, ``__MACOSX``) are skipped silently. ``label_base`` renames files in messages, e.g. for files
    extracted from an archive: ``label_base::relative/path``.
    """
    root = Path(path)
    result = ScanResult(root=root)
    if root.is_file():
        candidates = [root]
        base = root.parent
    else:
        base = root
        try:
            candidates = []
            for dirpath, _dirnames, filenames in os.walk(root, onerror=_raise, followlinks=False):
                candidates.extend(Path(dirpath) / name for name in filenames)
            candidates = sorted(p for p in candidates if p.is_file())
        except OSError as exc:
            raise MeddetInputError(
                f"The folder cannot be read ({exc.strerror or exc}).", path=root,
                hint="Check that the folder exists and that you have permission to read it.",
            ) from exc
    for file_path in candidates:
        rel = file_path.relative_to(base)
        if root.is_dir() and _is_hidden(rel):
            logger.debug("skipping hidden file %s", file_path)
            continue
        if label_for is not None:
            label = label_for(file_path)
        elif label_base is not None:
            label = f"{label_base}::{rel.as_posix()}"
        else:
            label = str(file_path)
        try:
            result.headers.append(read_dicom_header(file_path, label))
        except NotDicomError as exc:
            result.skipped.append((label, str(exc)))
    return result


def list_dicom_series(path: str | Path) -> list[SeriesSummary]:
    """Summaries of every series under ``path`` (a folder, a DICOM file or a ``.zip``), image series first.

    Skipped files are logged as warnings on the ``meddet.io`` logger. Raises ``MeddetInputError`` when the path
    does not exist or (for a zip) is unsafe or not a zip.
    """
    from meddet.io.archive import extracted_zip, looks_like_zip  # local: avoid import cycles at package import

    src = Path(path)
    if not src.exists():
        raise MeddetInputError("This path does not exist.", path=src, hint="Check the spelling of the path.")
    with quiet_pydicom():
        if src.is_file() and (src.suffix.lower() == ".zip" or looks_like_zip(src)):
            with extracted_zip(src) as folder:
                scan = scan_path(folder, label_base=str(src))
                summaries = scan.summaries()
        else:
            scan = scan_path(src)
            summaries = scan.summaries()
    for msg in scan.skip_warnings():
        logger.warning(msg)
    return summaries
