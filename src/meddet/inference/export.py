"""``meddet export-model``: turn a training run into a deployable model file with calibrated post-processing.

Why a separate step: the probability threshold and the smallest lesion kept decide the clinic-facing trade-off
between sensitivity and false positives, so they are chosen on the run's *validation* cases (never the training
cases), by the detection metric that matters (CPM, LUNA16 rule), and stored in the model with the evidence.
The test-time mirroring is part of that calibration (averaging mirrored passes lowers and smooths probabilities), so
the model file records the mirroring its threshold was chosen with and `meddet predict` uses it by default.
The optimizer state is dropped: it is two thirds of a checkpoint and useless for prediction.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from meddet.detection.lesions import extract_lesions, lesions_from_label_map
from meddet.evaluation.froc import froc
from meddet.inference.predictor import DEFAULT_POSTPROCESSING, check_mirroring, load_model, predict_probability
from meddet.io import read_volume
from meddet.planning.dataset import load_dataset
from meddet.training.trainer import split_cases

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_VOLUMES_MM3 = (0.0, 10.0, 30.0)
# CPM differences below this are noise on a few dozen validation nodules; among settings that close to the best,
# take the highest threshold (tighter masks and diameters, fewer false positives), then the smallest minimum volume.
CPM_TOLERANCE = 0.01


def case_truth(case_name: str, label_path: Path | None, root: Path) -> list[dict]:
    """A dataset case's nodules: the phantom's ``lesions/<case>.json`` where it exists, else the label map's components."""
    json_path = root / "lesions" / f"{case_name}.json"
    if json_path.is_file():
        return json.loads(json_path.read_text())["lesions"]
    return lesions_from_label_map(read_volume(label_path), binary=True)  # labelsTr holds semantic labels


def choose_setting(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Among settings within ``CPM_TOLERANCE`` of the best CPM: the highest threshold, then the smallest minimum volume."""
    top = max(g["cpm"] for g in grid)
    return max((g for g in grid if g["cpm"] >= top - CPM_TOLERANCE), key=lambda g: (g["threshold"], -g["min_volume_mm3"]))


def calibrate(checkpoint: Path, max_cases: int | None = None, mirroring: str = "none") -> dict[str, Any]:
    """Grid-search threshold × minimum volume on the run's validation split (predicted with ``mirroring``);
    returns the best and the grid."""
    model = load_model(checkpoint)
    plan = model.plan
    dataset = load_dataset(plan["dataset"])
    _, val_cases = split_cases(dataset, plan["training"]["validation_fraction"], int(plan["training"]["seed"]))
    val_cases = val_cases[:max_cases] if max_cases else val_cases
    probabilities, truths = [], []
    for case in val_cases:
        probability, _ = predict_probability(model, [read_volume(p) for p in case.images], mirroring)
        probabilities.append(probability)
        truths.append(case_truth(case.name, case.label, dataset.root))
    grid = []
    for threshold in THRESHOLDS:
        for min_volume in MIN_VOLUMES_MM3:
            pairs = [(extract_lesions(p, threshold, min_volume)[0], t) for p, t in zip(probabilities, truths)]
            scores = froc(pairs, bootstrap=0)
            grid.append({"threshold": threshold, "min_volume_mm3": min_volume, "cpm": scores["cpm"],
                         "sensitivity_at_1fp": scores["sensitivity"][3]})
    best = choose_setting(grid)
    return {"best": best, "grid": grid, "validation_cases": [c.name for c in val_cases], "mirroring": mirroring}


def export_model(
    checkpoint: str | Path, out: str | Path, name: str, version: str | None = None, max_cases: int | None = None,
    mirroring: str = "none",
) -> dict[str, Any]:
    """Write ``out``: weights + plan + test-time mirroring + post-processing calibrated with it + provenance."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_mirroring(mirroring)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    calibration = calibrate(checkpoint, max_cases, mirroring)
    best = calibration["best"]
    exported = {
        "meddet_checkpoint": 1,
        "name": name,
        "version": version or _dt.date.today().isoformat(),
        "model": state["model"],
        "plan": state["plan"],
        "inference": {"mirroring": mirroring},
        "postprocessing": {**DEFAULT_POSTPROCESSING, "threshold": best["threshold"], "min_volume_mm3": best["min_volume_mm3"]},
        "provenance": {"source_checkpoint": checkpoint.name, "iteration": state["iteration"],
                       "best_val_dice": state["best_metric"], "calibration": calibration},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(exported, out)
    return exported
