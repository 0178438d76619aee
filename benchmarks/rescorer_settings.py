"""Every second-stage setting of a two-stage model, scored on a phantom set's cached candidates.

Usage:  python benchmarks/rescorer_settings.py MODEL DATASET CACHE [--candidate-thresholds 0.01,0.02,0.05]

Runs the model's first stage once per case of DATASET (its own mirroring; cases already in CACHE are kept), then,
for each candidate threshold × score combination × final threshold, prints the CPM, the FROC points and the
≥ 6 mm CPM and sensitivity at 1 FP/scan, and the model's own calibrated setting last. This is how a second stage
is judged on development phantoms (never its training or validation cases) before the full `meddet predict` path
is run: one sliding window per scan instead of one per setting. ``--candidate-thresholds`` tries others than the
ones `meddet train-rescorer` calibrates over (use a fresh CACHE for them); each line also says how many nodules have
a candidate at all, the ceiling no re-scoring can pass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meddet.detection.rescorer import COMBINATIONS
from meddet.inference.predictor import load_model
from meddet.planning.dataset import load_dataset
from meddet.training.candidates import CANDIDATE_THRESHOLDS, collect_dataset
from meddet.training.rescorer import scored_candidates, setting_froc

FINAL_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("cache", type=Path)
    parser.add_argument("--candidate-thresholds", default=",".join(f"{t:g}" for t in CANDIDATE_THRESHOLDS))
    args = parser.parse_args()
    candidate_thresholds = tuple(float(t) for t in args.candidate_thresholds.split(","))
    model = load_model(args.model)
    if model.rescorer is None:
        parser.error("the model has no second stage (make one with `meddet train-rescorer`)")
    dataset = load_dataset(args.dataset)
    paths = collect_dataset(model, dataset.cases, dataset.root, args.cache, thresholds=candidate_thresholds)
    cases = [scored_candidates(path, model.rescorer.network, candidate_thresholds) for path in paths]

    def line(candidate_threshold: float, how: str, threshold: float) -> str:
        every, large = setting_froc(cases, candidate_threshold, how, threshold), setting_froc(cases, candidate_threshold, how, threshold, 6.0)
        points = ", ".join(f"{v:.3f}" for v in every["sensitivity"])
        return (f"candidates {candidate_threshold:<4g} {how:<9} threshold {threshold:<4g} CPM {every['cpm']:.3f} "
                f"[{points}]  >= 6 mm: CPM {large['cpm']:.3f}, at 1 FP/scan {large['sensitivity'][3]:.3f}")

    print(f"{len(cases)} scans, {sum(len(c['truth']) for c in cases)} nodules")
    for candidate_threshold in candidate_thresholds:
        covered = setting_froc(cases, candidate_threshold, "first", 0.0)
        found = round(max(covered["curve"]["sensitivity"]) * covered["num_nodules"])
        print(f"candidates {candidate_threshold:g}: {covered['num_predictions'] / len(cases):.1f} per scan; "
              f"nodules with a candidate: {found} of {covered['num_nodules']}")
    for candidate_threshold in candidate_thresholds:
        for how in COMBINATIONS:
            for threshold in FINAL_THRESHOLDS:
                print(line(candidate_threshold, how, threshold))
    rescorer = model.rescorer
    if rescorer.candidate_threshold not in candidate_thresholds:
        return
    print("model's setting:", line(rescorer.candidate_threshold, rescorer.combination, model.postprocessing["threshold"]))


if __name__ == "__main__":
    main()
