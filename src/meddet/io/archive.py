"""Safe extraction of ``.zip`` archives of DICOM files.

Why: scans arrive as zip files exported from a PACS or downloaded from a portal, and a zip file is untrusted
input. Two classic attacks are refused before anything is written outside a private temporary folder:

- *zip slip*: an entry named ``../../etc/cron.d/x`` or ``/etc/passwd`` (or a symbolic link) that would land
  outside the extraction folder;
- *zip bomb*: a small archive that expands to terabytes. The declared sizes are checked first (total and
  compression ratio), and then every member is *streamed* out with a running byte count, so an archive whose
  headers lie about the sizes is stopped as soon as it writes more than it declared or more than the limit.

Every refusal is a :class:`~meddet.errors.MeddetInputError` that names the archive and the offending entry.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from meddet.errors import MeddetInputError

logger = logging.getLogger("meddet.io")

GiB = 1024**3
MiB = 1024**2

DEFAULT_MAX_TOTAL_BYTES = 4 * GiB  # uncompressed total an archive may expand to
DEFAULT_MAX_RATIO = 200.0  # uncompressed / compressed, checked for members larger than RATIO_MIN_BYTES
RATIO_MIN_BYTES = 1 * MiB  # small members (headers, reports) may legitimately compress extremely well
DEFAULT_MAX_MEMBERS = 200_000
_CHUNK = 1 * MiB

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # local file header, or end of central directory (empty archive)


def looks_like_zip(path: str | Path) -> bool:
    """True when ``path`` is a file whose first bytes are a zip signature (whatever its extension)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in ZIP_MAGIC
    except OSError:
        return False


def _unsafe_reason(name: str) -> str | None:
    """Why an entry name would escape the extraction folder, or None when it is safe."""
    if not name:
        return "has an empty name"
    if "\x00" in name:
        return "contains a NUL character"
    normalised = name.replace("\\", "/")
    if normalised.startswith("/"):
        return "is an absolute path"
    if len(normalised) >= 2 and normalised[1] == ":":
        return "is an absolute Windows path (drive letter)"
    if any(part == ".." for part in PurePosixPath(normalised).parts):
        return "contains '..' (it would be written outside the extraction folder)"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise MeddetInputError(
            f"This file is not a valid ZIP archive ({exc}).",
            path=zip_path,
            hint="Check that the download or export finished; re-export the study as a ZIP, "
            "or pass the folder of DICOM files instead.",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged central directory raises many types
        raise MeddetInputError(
            f"The ZIP archive cannot be opened ({type(exc).__name__}: {exc}).",
            path=zip_path,
            hint="Check that the file exists and is readable, or pass the folder of DICOM files instead.",
        ) from exc


def check_zip_members(
    zf: zipfile.ZipFile,
    zip_path: Path,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[zipfile.ZipInfo]:
    """Validate the archive's directory (names, links, declared sizes); return the file members to extract."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise MeddetInputError(
            f"The ZIP archive has {len(infos)} entries, more than the limit of {max_members}.",
            path=zip_path,
            hint="Unpack it yourself and pass the folder of DICOM files.",
        )
    members: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        reason = _unsafe_reason(info.filename)
        if reason:
            raise MeddetInputError(
                f"Refusing the ZIP archive: its entry {info.filename!r} {reason}. "
                "Archives like this can overwrite files elsewhere on the computer ('zip slip').",
                path=zip_path,
                hint="Do not use this archive; ask the sender for a clean export.",
            )
        if _is_symlink(info):
            raise MeddetInputError(
                f"Refusing the ZIP archive: its entry {info.filename!r} is a symbolic link, "
                "which could point outside the extraction folder ('zip slip').",
                path=zip_path,
                hint="Do not use this archive; ask the sender for an export without links.",
            )
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise MeddetInputError(
                f"The ZIP entry {info.filename!r} is encrypted (password-protected).",
                path=zip_path,
                hint="Unpack it with the password yourself and pass the folder of DICOM files.",
            )
        total += info.file_size
        if total > max_total_bytes:
            raise MeddetInputError(
                f"Refusing the ZIP archive: it declares {total / GiB:.2f} GiB of uncompressed data or more, "
                f"above the limit of {max_total_bytes / GiB:.2f} GiB (possible 'zip bomb').",
                path=zip_path,
                hint="Unpack it yourself if you trust it, and pass the folder of DICOM files.",
            )
        if info.file_size > RATIO_MIN_BYTES:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                raise MeddetInputError(
                    f"Refusing the ZIP archive: entry {info.filename!r} expands {ratio:.0f}:1 "
                    f"({info.compress_size} bytes to {info.file_size} bytes), above the {max_ratio:.0f}:1 limit "
                    "(possible 'zip bomb'; real DICOM images compress far less).",
                    path=zip_path,
                    hint="Do not use this archive unless you trust its source; then unpack it yourself.",
                )
        members.append(info)
    return members


def safe_extract_zip(
    zip_path: str | Path,
    dest_dir: str | Path,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` (which should be empty and private); return the extracted files.

    Refuses (``MeddetInputError``) archives that are not zips, entries that escape ``dest_dir`` (absolute paths,
    ``..``, symbolic links), encrypted entries, and archives whose declared or *actual* uncompressed size exceeds
    ``max_total_bytes`` or whose large members compress more than ``max_ratio``:1. Sizes are counted while
    streaming, so lying headers cannot fill the disk. On refusal, files already extracted are left in
    ``dest_dir`` for the caller to delete (:func:`extracted_zip` does that).
    """
    zip_path = Path(zip_path)
    dest = Path(dest_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with _open_zip(zip_path) as zf:
        members = check_zip_members(zf, zip_path, max_total_bytes, max_ratio, max_members)
        written_total = 0
        out_paths: list[Path] = []
        for info in members:
            target = (dest / info.filename.replace("\\", "/")).resolve()
            if not target.is_relative_to(dest):  # belt and braces after the name check
                raise MeddetInputError(
                    f"Refusing the ZIP archive: entry {info.filename!r} would be written outside the "
                    "extraction folder ('zip slip').",
                    path=zip_path,
                )
            written = 0
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        written_total += len(chunk)
                        if written > info.file_size:
                            raise MeddetInputError(
                                f"Refusing the ZIP archive: entry {info.filename!r} expands to more than the "
                                f"{info.file_size} bytes its header declares (the archive lies about its "
                                "sizes: possible 'zip bomb').",
                                path=zip_path,
                            )
                        if written_total > max_total_bytes:
                            raise MeddetInputError(
                                f"Refusing the ZIP archive: it expanded to more than {max_total_bytes / GiB:.2f} "
                                "GiB, the limit (possible 'zip bomb').",
                                path=zip_path,
                            )
                        if written > RATIO_MIN_BYTES and written / max(info.compress_size, 1) > max_ratio:
                            raise MeddetInputError(
                                f"Refusing the ZIP archive: entry {info.filename!r} expands more than "
                                f"{max_ratio:.0f}:1 (possible 'zip bomb').",
                                path=zip_path,
                            )
                        dst.write(chunk)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise MeddetInputError(
                    f"The ZIP archive holds the entry {info.filename!r} twice (or as both a file and a folder).",
                    path=zip_path,
                    hint="Ask the sender for a clean export.",
                ) from exc
            except MeddetInputError:
                raise
            except OSError as exc:
                raise MeddetInputError(
                    f"Could not extract the ZIP entry {info.filename!r} ({exc}).",
                    path=zip_path,
                    hint="Check the free disk space in the temporary folder.",
                ) from exc
            except Exception as exc:  # noqa: BLE001 - zipfile/zlib raise many types for damaged archives
                raise MeddetInputError(
                    f"The ZIP entry {info.filename!r} is damaged or uses an unsupported compression "
                    f"({type(exc).__name__}: {exc}).",
                    path=zip_path,
                    hint="Re-export or re-download the archive, or unpack it with another tool and pass the folder.",
                ) from exc
            out_paths.append(target)
    logger.debug("extracted %d files (%d bytes) from %s", len(out_paths), written_total, zip_path)
    return out_paths


@contextlib.contextmanager
def extracted_zip(
    zip_path: str | Path,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> Iterator[Path]:
    """Context manager: safely extract ``zip_path`` into a private temporary folder, yield it, delete it after."""
    tmp = Path(tempfile.mkdtemp(prefix="meddet-zip-"))
    try:
        safe_extract_zip(zip_path, tmp, max_total_bytes=max_total_bytes, max_ratio=max_ratio)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
