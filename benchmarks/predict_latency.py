"""Latency of `meddet predict` on a full-size phantom chest CT, against MONAI's plain sliding window.

Usage:  python benchmarks/predict_latency.py [--model PATH] [--repeats 3] [--seed 31337 | --series DICOM_DIR]
                                            [--precision bf16|fp32]

Generates one full-size (512×512) phantom as a DICOM series (a seed never used in training), or takes the DICOM
series ``--series`` (e.g. a ~250-slice held-out phantom), then, in this one process and with the same weights:
  * meddet: DICOM folder → all outputs (lesions.json, mask, SEG, overlay), `repeats` times: median and stage breakdown,
    with the model's own test-time mirroring (the bundled model: 2 passes) and, for comparison, one pass (--no-tta);
  * baseline: MONAI `sliding_window_inference` with its defaults (sw_batch_size 1, overlap 0.25, constant blending)
    over the whole resampled, normalised scan (no lung crop), the same patch size.
``--precision`` overrides meddet's (as `meddet predict --precision` does): whether bf16 autocast is faster than
float32 depends on the CPU, not only on its bf16 flag, so time both on a new machine. Prints medians, the ratio
baseline ÷ meddet for the network part, and the peak resident memory. The process keeps
freed memory (``meddet.runtime``) as the CLI does.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from meddet.inference.models import resolve_model
from meddet.inference.pipeline import predict_scan
from meddet.inference.predictor import load_model
from meddet.io import read_volume
from meddet.phantom import generate_dataset
from meddet.precision import PRECISIONS
from meddet.preprocess.prepare import prepare_case
from meddet.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument("--series", type=Path, default=None, help="time this DICOM series instead of a generated one")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the model's own, where native")
    args = parser.parse_args()
    keep_freed_memory()  # as the `meddet` CLI does; both the baseline and meddet run under it
    model = load_model(resolve_model(args.model), args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        if args.series is None:
            series = generate_dataset(Path(tmp) / "data", n=1, seed=args.seed, small=False) / "dicom" / "phantom_0000"
        else:
            series = args.series
        runs = [predict_scan(model, series, Path(tmp) / f"out{i}")["timing_s"] for i in range(args.repeats)]
        single = [predict_scan(model, series, Path(tmp) / f"one{i}", "none")["timing_s"] for i in range(args.repeats)]
        volume = read_volume(series)
        plan = dict(model.plan, crop="none")
        whole = torch.from_numpy(prepare_case([volume], plan).image)[None]
        baseline = []
        with torch.inference_mode():
            for _ in range(args.repeats):
                start = time.perf_counter()
                sliding_window_inference(whole, tuple(model.plan["patch_size"]), 1, model.network, overlap=0.25)
                baseline.append(time.perf_counter() - start)
    print(f"scan: {volume.shape[::-1]} voxels (x, y, z), spacing {tuple(round(s, 3) for s in volume.spacing)} mm; "
          f"{torch.get_num_threads()} threads; {args.repeats} repeats; meddet precision {model.precision}")
    print(f"meddet with the model's mirroring ({model.mirroring}):")
    for stage in runs[0]:
        print(f"  meddet {stage:<12} median {statistics.median(r[stage] for r in runs):7.2f} s")
    print(f"  one pass (--no-tta): inference median {statistics.median(r['inference'] for r in single):.2f} s, "
          f"total {statistics.median(r['total'] for r in single):.2f} s")
    base = statistics.median(baseline)
    print(f"  MONAI plain sliding window (whole scan, one pass, sw_batch 1, overlap 0.25): median {base:.2f} s")
    for label, timings in ((f"mirroring {model.mirroring}", runs), ("one pass", single)):
        print(f"ratio (MONAI plain ÷ meddet inference, {label}): {base / statistics.median(r['inference'] for r in timings):.2f}×")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
