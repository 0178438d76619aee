"""``meddet evaluate``: pair predictions with ground truth, compute every number a clinic asks for, write a report.

Predictions are ``meddet predict`` output: ``PRED/<case>/lesions.json`` (+ the mask it names), or ``PRED/lesions.json``
for a single scan. Truth may be lesion lists (``lesions/<case>.json`` as the phantom writes) and/or label maps
(``instances/<case>.nii.gz`` with one id per nodule, binary ``labelsTr/<case>.nii.gz``, or ``<case>.nii.gz`` in the
truth folder itself). Lesion lists give the detection scores (with size, type and location); label maps give
Dice/HD95, and the lesion list too (connected components) when there is no JSON.

Why a case whose prediction failed (``error.txt``, no ``lesions.json``) is still scored, with no predictions: a scan
the software could not read is a scan whose nodules nobody was shown; leaving it out would flatter the sensitivity.
Truth cases with no prediction folder at all are listed, not scored (evaluating a subset is legitimate).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddet.detection.lesions import lesions_from_label_map
from meddet.errors import MeddetInputError
from meddet.evaluation.froc import SMALL_NODULE_MM, case_counts, froc, operating_point
from meddet.evaluation.segmentation import dice, hd95, summarize
from meddet.io import read_volume

log = logging.getLogger(__name__)

# (folder under the truth root, is it a binary mask?) in order of preference: an instance map keeps touching
# nodules apart, a binary one does not; None = guess from the values.
LABEL_FOLDERS: tuple[tuple[str, bool | None], ...] = (("instances", False), ("labelsTr", True), (".", None))
LABEL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net/MSD image names: case_0000.nii.gz is channel 0 of "case"
STAGES = ("load", "preprocess", "inference", "postprocess", "write", "total")


@dataclass
class Truth:
    """What the truth folder holds for one case."""

    lesions_json: Path | None = None
    label_map: Path | None = None
    binary: bool | None = None


@dataclass
class Prediction:
    """One prediction folder: the names it may go by (folder name, input file name) and its result, if any."""

    folder: Path
    names: list[str] = field(default_factory=list)
    error: str | None = None


def _strip_suffix(name: str) -> str:
    for ending in LABEL_ENDINGS + (".nhdr", ".mhd", ".zip"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def _candidate_names(name: str) -> list[str]:
    """The case a prediction folder or input file may stand for: its own name first, then without ``_0000``.

    Both, in that order, because a phantom case is itself called ``phantom_0000`` (its image ``phantom_0000_0000``).
    """
    name = _strip_suffix(name)
    return list(dict.fromkeys([name, CHANNEL_SUFFIX.sub("", name)]))


def find_predictions(pred_dir: Path) -> list[Prediction]:
    """Prediction folders under ``pred_dir`` (or ``pred_dir`` itself for a single-scan prediction)."""
    if (pred_dir / "lesions.json").is_file():
        names = _candidate_names(pred_dir.name)
        try:  # a single-scan OUT folder is named by the user; the scan's own file name is the better key
            source = json.loads((pred_dir / "lesions.json").read_text()).get("input", {}).get("path")
            if source:
                names += _candidate_names(Path(source).name)
        except (json.JSONDecodeError, AttributeError):
            pass
        return [Prediction(pred_dir, list(dict.fromkeys(names)))]
    found = []
    for folder in sorted(p for p in pred_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / "lesions.json").is_file():
            found.append(Prediction(folder, _candidate_names(folder.name)))
        elif (folder / "error.txt").is_file():
            found.append(Prediction(folder, _candidate_names(folder.name), error=(folder / "error.txt").read_text().strip()))
    return found


def find_truth(truth_dir: Path) -> dict[str, Truth]:
    """Every case the truth folder has a lesion list or a label map for."""
    cases: dict[str, Truth] = {}
    lesions_dir = truth_dir / "lesions"
    if lesions_dir.is_dir():
        for path in sorted(lesions_dir.glob("*.json")):
            cases.setdefault(path.stem, Truth()).lesions_json = path
    for folder, binary in LABEL_FOLDERS:
        directory = truth_dir / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.name.lower().endswith(LABEL_ENDINGS):
                truth = cases.setdefault(_strip_suffix(path.name), Truth())
                if truth.label_map is None:
                    truth.label_map, truth.binary = path, binary
    return cases


PREDICTION_KEYS = ("center_mm", "score")  # what scoring reads of each predicted lesion
TRUTH_KEYS = ("center_mm", "diameter_mm")  # and of each truth nodule


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_lesions_json(path: Path, keys: tuple[str, ...], hint: str) -> dict[str, Any]:
    """A lesions JSON (prediction or truth) whose ``lesions`` entries each have ``keys`` in usable form.

    Why check every entry here: a truth file from another generator or a hand-edited prediction with a missing or
    misspelt key would otherwise fail deep in the FROC code as a bare KeyError; the user needs the file, the
    lesion and the key. ``center_mm`` must be three finite numbers, any other key one finite number.
    """
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeddetInputError(f"This lesions JSON is not valid JSON ({exc}).", path, hint) from exc
    if not isinstance(data, dict) or not isinstance(data.get("lesions"), list):
        raise MeddetInputError("This lesions JSON has no 'lesions' list.", path, hint)
    for index, lesion in enumerate(data["lesions"]):
        for key in keys:
            value = lesion.get(key) if isinstance(lesion, dict) else None
            usable = (isinstance(value, list) and len(value) == 3 and all(_number(v) for v in value)
                      if key == "center_mm" else _number(value))
            if not usable:
                raise MeddetInputError(
                    f"Lesion {index} of this lesions JSON has no usable '{key}' (got {value!r}); each lesion needs "
                    f"{' and '.join(keys)}.", path, hint)
    return data


def _read_result(prediction: Prediction) -> dict[str, Any]:
    if prediction.error is not None:
        return {"lesions": [], "timing_s": {}}
    return read_lesions_json(prediction.folder / "lesions.json", PREDICTION_KEYS,
                             "Is it a `meddet predict` output? Run `meddet predict` again for this case.")


def _read_truth_lesions(truth: Truth) -> list[dict] | None:
    if truth.lesions_json is None:
        return None
    return read_lesions_json(
        truth.lesions_json, TRUTH_KEYS,
        "A truth lesion list needs center_mm [x, y, z] (LPS, mm) and diameter_mm per nodule, as `meddet phantom` "
        "writes; or leave the JSON out and give a label map (TRUTH/instances/<case>.nii.gz).")["lesions"]


def _segmentation(prediction: Prediction, result: dict[str, Any], truth_map) -> tuple[float, float] | None:
    """Dice and HD95 of the prediction's mask against the truth map, on the truth's grid; None without a mask."""
    if prediction.error is not None:
        empty = np.zeros(truth_map.shape, dtype=bool)
        return dice(empty, truth_map.array), hd95(empty, truth_map.array, truth_map.spacing_zyx)
    mask_path = prediction.folder / result.get("outputs", {}).get("mask", "mask.nii.gz")
    if not mask_path.is_file():
        return None
    mask = read_volume(mask_path)
    if not mask.same_geometry(truth_map, atol=1e-2):
        from meddet.preprocess.resample import resample_like

        mask = resample_like(mask, truth_map, is_label=True)
    return dice(mask.array, truth_map.array), hd95(mask.array, truth_map.array, truth_map.spacing_zyx)


def _nothing_paired(predictions: list[Prediction], truth: dict[str, Truth], pred_dir: Path, truth_dir: Path) -> MeddetInputError:
    def listing(names: list[str]) -> str:
        return (", ".join(names[:8]) + (f" … ({len(names)} in all)" if len(names) > 8 else "")) or "none"

    pred_names = [p.names[0] for p in predictions]
    return MeddetInputError(
        f"No prediction matched any ground truth. Predictions found in {pred_dir}: {listing(pred_names)}. "
        f"Ground-truth cases found in {truth_dir}: {listing(sorted(truth))}.",
        truth_dir,
        "Case names must match: PRED/<case>/lesions.json ↔ TRUTH/lesions/<case>.json or a label map <case>.nii.gz "
        "in TRUTH/instances/, TRUTH/labelsTr/ or TRUTH itself.",
    )


def evaluate(
    pred_dir: str | Path, truth_dir: str | Path, out_dir: str | Path | None = None, operating_threshold: float = 0.0,
    bootstrap: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Score every prediction that has ground truth; with ``out_dir``, write metrics.json, froc.png and report.html.

    ``operating_threshold`` is a score cut on top of the model's own threshold for the sensitivity / FPs-per-scan
    operating point and the per-case counts (0 keeps every reported lesion); the FROC sweeps all scores anyway.
    Returns the metrics dict (what metrics.json holds).
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    if not pred_dir.is_dir():
        raise MeddetInputError("The prediction folder does not exist.", pred_dir, "Run `meddet predict` first.")
    if not truth_dir.is_dir():
        raise MeddetInputError("The ground-truth folder does not exist.", truth_dir)
    predictions = find_predictions(pred_dir)
    truth_cases = find_truth(truth_dir)
    per_case: list[dict[str, Any]] = []
    pairs, timings, dices, distances = [], [], [], []
    both_empty = 0
    paired: set[str] = set()
    overlays: list[tuple[str, Path]] = []
    models: set[str] = set()  # the model settings behind the predictions (lesions.json "model")
    for prediction in predictions:
        case = next((name for name in prediction.names if name in truth_cases), None)
        if case is None or case in paired:
            continue
        paired.add(case)
        truth = truth_cases[case]
        result = _read_result(prediction)
        truth_lesions = _read_truth_lesions(truth)
        row: dict[str, Any] = {"case": case}
        if truth.label_map is not None:
            truth_map = read_volume(truth.label_map)
            scores = _segmentation(prediction, result, truth_map)
            if scores is not None:
                d, h = scores
                dices.append(d)
                distances.append(h)
                both_empty += int(d == 1.0 and h == 0.0 and not np.any(truth_map.array))
                row["dice"] = round(d, 4)
                row["hd95_mm"] = None if math.isnan(h) else round(h, 3)
            if truth_lesions is None:
                truth_lesions = lesions_from_label_map(truth_map, binary=truth.binary)
        lesions = result["lesions"]
        row.update({"nodules": len(truth_lesions), "predicted": len(lesions),
                    **case_counts(lesions, truth_lesions, operating_threshold)})
        if prediction.error is not None:
            row["error"] = prediction.error.splitlines()[0][:200]
        pairs.append((lesions, truth_lesions))
        overlay = prediction.folder / result.get("outputs", {}).get("overlay", "overlay.png")
        if overlay.is_file():
            overlays.append((case, overlay))
        if result.get("timing_s"):
            timings.append(result["timing_s"])
        if isinstance(result.get("model"), dict):
            models.add(json.dumps(result["model"], sort_keys=True))
        per_case.append(row)
    if not pairs:
        raise _nothing_paired(predictions, truth_cases, pred_dir, truth_dir)
    unpaired = sorted(set(truth_cases) - paired)
    if unpaired:
        log.warning("%d ground-truth case(s) have no prediction and were not scored: %s", len(unpaired), ", ".join(unpaired[:10]))
    metrics: dict[str, Any] = {
        "cases": len(per_case),
        "failed_cases": sum(1 for r in per_case if "error" in r),
        "unpaired_truth_cases": unpaired,
        "froc": froc(pairs, bootstrap=bootstrap, seed=seed),
        "froc_6mm": froc(pairs, bootstrap=bootstrap, seed=seed, min_diameter_mm=SMALL_NODULE_MM),
        "operating_point": operating_point(pairs, operating_threshold),
        "segmentation": {**summarize(dices, distances), "both_empty_cases": both_empty},
        "latency_s": latency(timings),
        "models": [json.loads(m) for m in sorted(models)],
        "per_case": per_case,
        "conventions": {
            "hit_rule": "LUNA16: predicted centre within the nodule radius (3 mm for nodules under 6 mm); "
                        "duplicate hits on a nodule ignored, not false positives",
            "froc": "scores pooled over scans; sensitivity linearly interpolated at each FP rate; CPM = mean of the 7",
            "froc_6mm": "the same over nodules >= 6 mm only; hits on smaller nodules are ignored, not false positives",
            "bootstrap": "scans resampled with replacement; 2.5th-97.5th percentiles",
            "segmentation": "lesion voxels (any instance > 0); both empty: Dice 1, HD95 0; one empty: Dice 0, "
                            "HD95 undefined (left out of the mean, counted); HD95 = max of the two directed 95th "
                            "percentile surface distances (MONAI), in mm",
        },
    }
    if out_dir is not None:
        from meddet.evaluation.report import write_report

        write_report(metrics, Path(out_dir), overlays)
    return metrics


def latency(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and 90th percentile of each ``timing_s`` stage over the cases that report it."""
    stages = [s for s in STAGES if any(s in t for t in timings)] + sorted({k for t in timings for k in t} - set(STAGES))
    out = {}
    for stage in stages:
        values = [float(t[stage]) for t in timings if stage in t]
        out[stage] = {"median": round(float(np.median(values)), 3), "p90": round(float(np.percentile(values, 90)), 3),
                      "cases": len(values)}
    return out
