"""Experiment: each model's first-stage lesion probability at every small truth nodule of a phantom set.

Usage:
    python benchmarks/first_stage_at_nodules.py DATA [DATA ...] --model lung-nodule --model OTHER.pt [--below-mm 6]

Why: a nodule the first stage gives no candidate (probability under the model's candidate threshold, 0.05) cannot be
found by any re-ranking; ``benchmarks/missed_nodules.py`` says which nodules end up missed, this says how far each
first stage is from seeing them (its candidate threshold: the second stage's, else the model's threshold). A training change that lifts the missed nodules from 0.001 to 0.03 is on a road that
more of it may finish; one that leaves them at 0.001 is not. Per nodule (``lesions/<case>.json``): the highest
probability over the working-grid voxels within its radius (at least the nearest voxel), in one patch-sized window
centred on it, no mirroring (``finetune_first_stage.best_probability``); the scan is prepared once per distinct plan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from finetune_first_stage import best_probability
from meddet.inference.models import resolve_model
from meddet.inference.predictor import load_model
from meddet.io import read_volume
from meddet.preprocess.prepare import prepare_case


def nodule_points(grid, centre_lps: list[float], radius_mm: float) -> np.ndarray:
    """Working-grid voxels [z, y, x] within ``radius_mm`` of the centre; the nearest one if none is."""
    centre = grid.lps_to_index_zyx(np.asarray([centre_lps], dtype=float))[0]
    spacing = np.asarray(grid.spacing_zyx)
    reach = np.ceil(radius_mm / spacing).astype(int) + 1
    low = np.floor(centre).astype(int) - reach
    axes = [np.arange(lo, lo + 2 * r + 2) for lo, r in zip(low, reach)]
    grid_points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = np.linalg.norm((grid_points - centre) * spacing, axis=1) <= radius_mm
    points = grid_points[inside] if inside.any() else np.round(centre)[None].astype(int)
    shape = np.asarray(grid.shape)
    return points[np.all((points >= 0) & (points < shape), axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", type=Path, nargs="+")
    parser.add_argument("--model", action="append", required=True, help="a model name or file; give two or more")
    parser.add_argument("--below-mm", type=float, default=6.0, help="only nodules smaller than this")
    args = parser.parse_args()
    models = [load_model(resolve_model(name)) for name in args.model]
    print(f"{'case':26}{'diam':>6}  {'type':13}{'location':14}" + "".join(f"{Path(n).stem[:14]:>16}" for n in args.model))
    thresholds = [m.rescorer.candidate_threshold if m.rescorer else float(m.postprocessing["threshold"]) for m in models]
    below = np.zeros(len(models), int)
    total = 0
    with torch.inference_mode():
        for dataset in args.datasets:
            for lesion_file in sorted((dataset / "lesions").glob("*.json")):
                truth = json.loads(lesion_file.read_text())
                nodules = [n for n in truth["lesions"] if n["diameter_mm"] < args.below_mm]
                if not nodules:
                    continue
                image = read_volume(dataset / "imagesTr" / f"{truth['case']}_0000.nii.gz")
                prepared: dict[str, object] = {}
                rows = [[] for _ in nodules]
                for k, model in enumerate(models):
                    key = json.dumps(model.plan, sort_keys=True)
                    if key not in prepared:
                        prepared[key] = prepare_case([image], model.plan)
                    case = prepared[key]
                    for row, nodule in zip(rows, nodules):
                        points = nodule_points(case.grid, nodule["center_mm"], nodule["diameter_mm"] / 2)
                        best = best_probability(model, case.image, points) if len(points) else 0.0
                        below[k] += best < thresholds[k]
                        row.append(best)
                for row, nodule in zip(rows, nodules):
                    total += 1
                    print(f"{dataset.name + '/' + truth['case']:26}{nodule['diameter_mm']:5.1f}  {nodule['type']:13}"
                          f"{nodule['location']:14}" + "".join(f"{p:16.4f}" for p in row), flush=True)
    print(f"\nnodules under {args.below_mm:g} mm under the model's candidate threshold (no candidate): "
          + ", ".join(f"{Path(n).stem} {b}/{total} (< {t:g})" for n, b, t in zip(args.model, below, thresholds)))


if __name__ == "__main__":
    main()
