"""``meddet evaluate``: pair predictions with ground truth, compute every number a clinic asks for, write a report.

Truth may be lesion lists (``lesions/<case>.json`` as the phantom writes) and/or label maps (``instances/``,
``labelsTr/`` or ``<case>.nii.gz`` in the folder itself). Lesion lists give the detection scores; label maps give
Dice/HD95 (and lesion lists too, by connected components, when there is no JSON).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from meddet.detection.lesions import lesions_from_label_map
from meddet.errors import MeddetInputError
from meddet.evaluation.froc import froc, operating_point
from meddet.evaluation.segmentation import dice, hd95
from meddet.io import read_volume
from meddet.preprocess.resample import resample_like

LABEL_FOLDERS = ("instances", "labelsTr", ".")
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


def _prediction_cases(pred_dir: Path) -> dict[str, Path]:
    if (pred_dir / "lesions.json").is_file():
        return {pred_dir.name: pred_dir}
    found = {}
    for folder in sorted(p for p in pred_dir.iterdir() if p.is_dir() and (p / "lesions.json").is_file()):
        found[CHANNEL_SUFFIX.sub("", folder.name)] = folder
    return found


def _truth_for(case: str, truth_dir: Path) -> tuple[list[dict] | None, Path | None]:
    lesions = None
    json_path = truth_dir / "lesions" / f"{case}.json"
    if json_path.is_file():
        lesions = json.loads(json_path.read_text())["lesions"]
    for folder in LABEL_FOLDERS:
        for ending in (".nii.gz", ".nii", ".nrrd", ".mha"):
            path = truth_dir / folder / f"{case}{ending}"
            if path.is_file():
                return lesions, path
    return lesions, None


def evaluate(pred_dir: str | Path, truth_dir: str | Path, out_dir: str | Path | None = None, operating_threshold: float = 0.0) -> dict[str, Any]:
    """Evaluate every prediction that has ground truth; writes metrics.json, froc.png and report.html to ``out_dir``.

    ``operating_threshold`` is a score cut on top of the model's own threshold for the sensitivity/FP-per-scan
    operating point (0 keeps every reported lesion); the FROC sweeps all scores anyway.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    if not pred_dir.is_dir():
        raise MeddetInputError("The prediction folder does not exist.", pred_dir, "Run `meddet predict` first.")
    if not truth_dir.is_dir():
        raise MeddetInputError("The ground-truth folder does not exist.", truth_dir)
    predictions = _prediction_cases(pred_dir)
    per_case, pairs, timings = [], [], []
    for case, folder in predictions.items():
        truth_lesions, label_path = _truth_for(case, truth_dir)
        if truth_lesions is None and label_path is None:
            continue
        result = json.loads((folder / "lesions.json").read_text())
        row: dict[str, Any] = {"case": case, "predicted": len(result["lesions"])}
        if label_path is not None:
            truth_map = read_volume(label_path)
            mask_path = folder / result.get("outputs", {}).get("mask", "mask.nii.gz")
            mask = read_volume(mask_path)
            if not mask.same_geometry(truth_map, atol=1e-2):
                mask = resample_like(mask, truth_map, is_label=True)
            row["dice"] = round(dice(mask.array, truth_map.array), 4)
            distance = hd95(mask.array, truth_map.array, truth_map.spacing_zyx)
            row["hd95_mm"] = None if distance is None else round(distance, 3)
            if truth_lesions is None:
                truth_lesions = lesions_from_label_map(truth_map)
        row["nodules"] = len(truth_lesions)
        pairs.append((result["lesions"], truth_lesions))
        timings.append(result.get("timing_s", {}))
        per_case.append(row)
    if not pairs:
        raise MeddetInputError(
            f"No prediction matched any ground truth: {len(predictions)} prediction(s) "
            f"({', '.join(list(predictions)[:5]) or 'none'}) in {pred_dir}.",
            truth_dir,
            "The truth folder needs lesions/<case>.json or a label map <case>.nii.gz (in instances/, labelsTr/ or itself).",
        )
    dices = [r["dice"] for r in per_case if "dice" in r]
    hds = [r["hd95_mm"] for r in per_case if r.get("hd95_mm") is not None]
    metrics: dict[str, Any] = {
        "cases": len(per_case),
        "froc": froc(pairs),
        "operating_point": operating_point(pairs, operating_threshold),
        "segmentation": {
            "dice_mean": round(float(np.mean(dices)), 4) if dices else None,
            "hd95_mm_mean": round(float(np.mean(hds)), 3) if hds else None,
            "hd95_undefined_cases": sum(1 for r in per_case if "dice" in r and r.get("hd95_mm") is None),
        },
        "latency_s": _latency(timings),
        "per_case": per_case,
    }
    if out_dir is not None:
        from meddet.evaluation.report import write_report

        write_report(metrics, Path(out_dir), pred_dir)
    return metrics


def _latency(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    stages = sorted({k for t in timings for k in t})
    out = {}
    for stage in stages:
        values = [t[stage] for t in timings if stage in t]
        out[stage] = {"median": round(float(np.median(values)), 3), "p90": round(float(np.percentile(values, 90)), 3)}
    return out
