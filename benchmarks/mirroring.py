"""Detection quality of each test-time mirroring, on phantoms the model never saw: which mirrored copies are worth their time.

Usage:
    meddet phantom --out /tmp/mirror-dev --n 40 --seed 555000      # fresh full-size phantoms (not the held-out seeds)
    python benchmarks/mirroring.py /tmp/mirror-dev [--model lung-nodule] [--threshold 0.3]

Per case the network runs once on each of the 8 mirror images of the prepared scan (mirrored with numpy, predicted
with one pass, mirrored back: the same arithmetic as ``lesion_probability`` with that flip). Every mirroring in
``MIRRORINGS`` is then the average of its copies, put back on the scan's grid and turned into lesions exactly as
``meddet predict`` does, so all mirrorings are compared on the same passes. Prints per mirroring: passes (the
latency is proportional), CPM and its FROC points, CPM and sensitivity at 1 FP/scan for nodules >= 6 mm, and the
false positives per scan of all reported lesions. The bundled model's default mirroring was chosen with this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from meddet.detection.lesions import extract_lesions
from meddet.evaluation.froc import froc
from meddet.inference.models import resolve_model
from meddet.inference.predictor import MIRRORINGS, lesion_probability, load_model, mirror_flips, probability_on_scan
from meddet.io import read_volume
from meddet.preprocess.prepare import prepare_case
from meddet.runtime import keep_freed_memory


def single_pass(model, image: np.ndarray, flip: tuple[int, ...]) -> np.ndarray:
    """One pass on the mirror image ``flip`` (dimensions of (batch, channel, z, y, x)), mirrored back."""
    axes = tuple(d - 1 for d in flip)  # image is (channel, z, y, x); its probability is (z, y, x)
    mirrored = np.ascontiguousarray(np.flip(image, axes)) if axes else image
    probability = lesion_probability(model, mirrored, "none")
    return np.flip(probability, tuple(a - 1 for a in axes)) if axes else probability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="phantom folder with imagesTr/ and lesions/")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's")
    args = parser.parse_args()
    keep_freed_memory()
    model = load_model(resolve_model(args.model))
    threshold = args.threshold if args.threshold is not None else model.postprocessing["threshold"]
    min_volume = model.postprocessing["min_volume_mm3"]
    pairs: dict[str, list] = {m: [] for m in MIRRORINGS}
    seconds = []
    images = sorted((args.data / "imagesTr").glob("*_0000.nii.gz"))
    for path in images:
        case = path.name[: -len("_0000.nii.gz")]
        truth = json.loads((args.data / "lesions" / f"{case}.json").read_text())["lesions"]
        volume = read_volume(path)
        prepared = prepare_case([volume], model.plan)
        start = time.perf_counter()
        passes = {flip: single_pass(model, prepared.image, flip) for flip in mirror_flips("xyz")}
        seconds.append((time.perf_counter() - start) / len(passes))
        for mirroring in MIRRORINGS:
            flips = mirror_flips(mirroring)
            average = sum(passes[f] for f in flips) / len(flips)
            lesions, _ = extract_lesions(probability_on_scan(average, prepared, volume), threshold, min_volume)
            pairs[mirroring].append((lesions, truth))
        print(f"{case}: {len(truth)} nodule(s), {seconds[-1]:.1f} s per pass", flush=True)
    nodules = sum(len(t) for _, t in pairs["none"])
    print(f"\n{len(images)} scans, {nodules} nodules; model threshold {threshold}; median {np.median(seconds):.1f} s per pass")
    print(f"{'mirroring':<10} passes   CPM   FROC at 1/8 ... 8 FP/scan                    >=6 mm CPM  sens@1FP   FP/scan")
    for mirroring in MIRRORINGS:
        every = froc(pairs[mirroring], bootstrap=0)
        large = froc(pairs[mirroring], bootstrap=0, min_diameter_mm=6.0)
        fp_per_scan = every["curve"]["fps_per_scan"][-1] if every["curve"]["fps_per_scan"] else 0.0
        points = " ".join(f"{s:.2f}" for s in every["sensitivity"])
        print(f"{mirroring:<10} {len(mirror_flips(mirroring)):>6} {every['cpm']:.3f}  {points}   {large['cpm']:.3f}      "
              f"{large['sensitivity'][3]:.3f}     {fp_per_scan:.2f}")


if __name__ == "__main__":
    main()
