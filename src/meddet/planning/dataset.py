"""Finding the cases of a dataset: the nnU-Net / Medical Segmentation Decathlon layout, or a CSV of pairs.

Why both: the MSD layout (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``) is what
public datasets and the phantom generator use; a CSV of (image, label) pairs is what a hospital team has after an
export, with DICOM folders instead of NIfTI files. Cases without a label are kept (semi-supervised training uses them).

An optional ``splits.json`` beside ``dataset.json`` (``{"validation": [case, ...]}``, nnU-Net's splits_final.json)
fixes which cases are held out for validation. Why: a dataset that grows (new cases appended to fine-tune a model)
must keep its validation cases out of training, or the threshold calibrated on them is calibrated on training data.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from meddet.errors import MeddetInputError

CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Case:
    """One case: one image per channel (in channel order) and an optional label map."""

    name: str
    images: list[Path]
    label: Path | None = None


@dataclass
class DatasetIndex:
    """What ``meddet plan`` and ``meddet train`` work from."""

    root: Path
    name: str
    channel_names: list[str]
    labels: dict[str, int]
    cases: list[Case]
    unlabelled: list[Case] = field(default_factory=list)
    validation: list[str] | None = None  # from splits.json; None: a seeded random split

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) else None


def _scan_images(folder: Path, ending: str, num_channels: int) -> dict[str, list[Path]]:
    grouped: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        stem = _strip_ending(path.name, ending)
        match = CHANNEL_PATTERN.match(stem) if stem else None
        if match:
            grouped.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = {}
    for case, channels in grouped.items():
        missing = [c for c in range(num_channels) if c not in channels]
        if missing:
            raise MeddetInputError(
                f"Case '{case}' lacks channel(s) {', '.join(f'_{c:04d}' for c in missing)}.",
                folder,
                f"Every case needs one file per channel ({num_channels} channel(s) in dataset.json).",
            )
        cases[case] = [channels[c] for c in range(num_channels)]
    return cases


def load_msd_dataset(root: str | Path) -> DatasetIndex:
    """Read ``dataset.json``, ``imagesTr``, ``labelsTr`` and optional ``imagesTs`` (unlabelled)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise MeddetInputError(
            "This folder has no dataset.json, so it is not a dataset meddet can train on.",
            root,
            "Use the nnU-Net layout (dataset.json, imagesTr/, labelsTr/) — `meddet phantom` writes one — or a CSV.",
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise MeddetInputError(f"dataset.json is not valid JSON ({exc.msg}, line {exc.lineno}).", meta_path) from exc
    channel_map = meta.get("channel_names") or meta.get("modality") or {"0": "CT"}
    channel_names = [channel_map[k] for k in sorted(channel_map, key=int)]
    labels = meta.get("labels") or {"background": 0, "foreground": 1}
    if all(str(k).isdigit() for k in labels):  # the older MSD form {"0": "background", ...}
        labels = {v: int(k) for k, v in labels.items()}
    ending = meta.get("file_ending", ".nii.gz")
    images = _scan_images(root / "imagesTr", ending, len(channel_names))
    if not images:
        raise MeddetInputError(
            f"No training images named <case>_0000{ending} in imagesTr/.", root / "imagesTr",
            "Check the file names and the file_ending in dataset.json.",
        )
    cases, unlabelled = [], []
    for name, paths in sorted(images.items()):
        label = root / "labelsTr" / f"{name}{ending}"
        (cases if label.is_file() else unlabelled).append(Case(name, paths, label if label.is_file() else None))
    for name, paths in sorted(_scan_images(root / "imagesTs", ending, len(channel_names)).items()):
        unlabelled.append(Case(name, paths, None))
    return DatasetIndex(root, str(meta.get("name", root.name)), channel_names, {str(k): int(v) for k, v in labels.items()},
                        cases, unlabelled, _read_splits(root, [c.name for c in cases]))


def _read_splits(root: Path, case_names: list[str]) -> list[str] | None:
    """The validation cases named in ``root/splits.json``, checked against the labelled cases; None without the file."""
    path = root / "splits.json"
    if not path.is_file():
        return None
    try:
        validation = json.loads(path.read_text()).get("validation")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise MeddetInputError("splits.json is not a JSON object.", path, 'Write {"validation": ["case", ...]}.') from exc
    if not isinstance(validation, list) or not validation or not all(isinstance(v, str) for v in validation):
        raise MeddetInputError("splits.json needs a non-empty list of case names under \"validation\".", path,
                               'Write {"validation": ["case", ...]}.')
    unknown = sorted(set(validation) - set(case_names))
    if unknown:
        raise MeddetInputError(f"splits.json names cases the dataset has no labelled images for: {', '.join(unknown[:5])}.",
                               path, "Use the case names of imagesTr/ (without _0000 and the file ending).")
    if len(set(validation)) >= len(case_names):
        raise MeddetInputError("splits.json holds out every case: nothing is left to train on.", path)
    return sorted(set(validation))


def load_csv_dataset(csv_path: str | Path) -> DatasetIndex:
    """A CSV with columns ``image`` (or ``image_0000``, ``image_0001``… for several channels) and ``label``.

    Paths may be DICOM folders, zips or image files, relative to the CSV's folder; an empty label is unlabelled.
    """
    csv_path = Path(csv_path)
    with csv_path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        raise MeddetInputError("The CSV has no rows.", csv_path, "Write a header line (image,label) and one row per case.")
    columns = list(rows[0].keys())
    image_columns = ["image"] if "image" in columns else sorted(c for c in columns if c.startswith("image_"))
    if not image_columns or "label" not in columns:
        raise MeddetInputError(
            f"The CSV columns are {columns}; meddet needs 'image' (or image_0000, image_0001…) and 'label'.", csv_path
        )
    base = csv_path.parent
    cases, unlabelled = [], []
    for i, row in enumerate(rows):
        images = [(base / row[c]).resolve() for c in image_columns]
        for path in images:
            if not path.exists():
                raise MeddetInputError(f"Row {i + 2} names an image that does not exist: {path}", csv_path)
        label = (base / row["label"]).resolve() if row.get("label") else None
        if label is not None and not label.exists():
            raise MeddetInputError(f"Row {i + 2} names a label that does not exist: {label}", csv_path)
        case = Case(row.get("case") or f"case_{i:04d}", images, label)
        (cases if label else unlabelled).append(case)
    return DatasetIndex(base, csv_path.stem, [f"channel{i}" for i in range(len(image_columns))], {"background": 0, "foreground": 1}, cases, unlabelled)


def load_dataset(path: str | Path) -> DatasetIndex:
    """A dataset folder (MSD layout) or a CSV file of pairs."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_csv_dataset(path)
    if not path.exists():
        raise MeddetInputError("This dataset path does not exist.", path)
    return load_msd_dataset(path)
