"""How well a model's lesion outlines agree with the truth at each probability level: per found nodule, Dice and
diameter error of its region redrawn at ``min(level, peak / 2)``.

Usage:
    meddet phantom --out /tmp/outline-dev --n 40 --seed 555000    # fresh full-size phantoms (not the held-out seeds)
    python benchmarks/outline_levels.py /tmp/outline-dev [--model lung-nodule] [--levels 0.05,0.1,0.2,0.3,0.4,0.5]

Why: a two-stage model takes its candidates as components at a low probability (0.05 for the bundled model) so
that faint nodules get one; those regions are wider than the nodules. ``meddet predict`` redraws each lesion's
outline at the model's ``outline_threshold`` (meddet.detection.lesions.refine_outlines); this script is how that
level is chosen, on development phantoms. Per case the model's probability map is computed once (its own
mirroring); every truth nodule that a candidate hits (LUNA16 rule; the highest-scoring such candidate) is compared
with the candidate's region redrawn at each level, exactly as ``refine_outlines`` redraws it. Prints per level the
mean and median Dice (all, < 6 mm, >= 6 mm), the median diameter error and how many redrawn centres still hit.
Segmentation only: which candidates are reported does not change with the level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from meddet.detection.lesions import extract_lesions, refine_outlines
from meddet.evaluation.froc import hit_radius
from meddet.inference.models import resolve_model
from meddet.inference.predictor import load_model, predict_probability
from meddet.io import read_volume


def case_rows(model, image: Path, instances_path: Path, truth: list[dict], levels: list[float]) -> list[dict]:
    """One row per found nodule: its diameter and, per level, (Dice, diameter, redrawn centre still hits)."""
    volume = read_volume(image)
    probability, _ = predict_probability(model, [volume])
    threshold = model.rescorer.candidate_threshold if model.rescorer else model.postprocessing["threshold"]
    lesions, regions = extract_lesions(probability, threshold, model.postprocessing["min_volume_mm3"])
    nodules = np.asarray(read_volume(instances_path).array)
    rows = []
    for nodule in truth:
        centre, radius = np.asarray(nodule["center_mm"]), hit_radius(nodule["diameter_mm"])
        hits = [l for l in lesions if np.linalg.norm(np.asarray(l["center_mm"]) - centre) <= radius]
        if not hits:
            continue
        hit = max(hits, key=lambda l: l["score"])
        truth_mask = nodules == nodule["id"]
        alone = regions.with_array(np.where(np.asarray(regions.array) == hit["id"], hit["id"], 0).astype(np.uint16))
        row = {"diameter_mm": float(nodule["diameter_mm"])}
        for level in levels:
            (redrawn,), mask = refine_outlines([dict(hit)], alone, probability, level)
            mask = np.asarray(mask.array) > 0
            dice = 2.0 * (mask & truth_mask).sum() / (mask.sum() + truth_mask.sum())
            row[level] = (float(dice), redrawn["diameter_mm"],
                          bool(np.linalg.norm(np.asarray(redrawn["center_mm"]) - centre) <= radius))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", default="lung-nodule")
    parser.add_argument("--levels", default="0.05,0.1,0.2,0.3,0.4,0.5")
    args = parser.parse_args()
    levels = [float(v) for v in args.levels.split(",")]
    model = load_model(resolve_model(args.model))
    rows = []
    for image in sorted((args.dataset / "imagesTr").glob("*_0000.nii.gz")):
        name = image.name[: -len("_0000.nii.gz")]
        truth = json.loads((args.dataset / "lesions" / f"{name}.json").read_text())["lesions"]
        rows += case_rows(model, image, args.dataset / "instances" / f"{name}.nii.gz", truth, levels)
        print(f"{name}: {len(rows)} found nodules so far", flush=True)
    true_mm = np.array([row["diameter_mm"] for row in rows])
    small = true_mm < 6.0
    print(f"{len(rows)} found nodules ({small.sum()} under 6 mm)")
    for level in levels:
        dice = np.array([row[level][0] for row in rows])
        error = np.array([row[level][1] for row in rows]) - true_mm
        print(f"level {level:<4g}: Dice mean {dice.mean():.3f} median {np.median(dice):.3f} "
              f"(< 6 mm {dice[small].mean():.3f}, >= 6 mm {dice[~small].mean():.3f}); diameter error median "
              f"{np.median(error):+.2f} mm, |error| median {np.median(np.abs(error)):.2f} mm; "
              f"centre still hits {sum(row[level][2] for row in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
