"""Training steps per second: the cached .npy loader against a naive loader that reads and resamples NIfTI files.

Usage:  python benchmarks/loader_speed.py DATASET PLAN [--steps 20]

Both loaders feed the same model and the same optimiser step in this process; the naive loader runs the whole
plan preprocessing (read NIfTI, crop, resample, normalise) for every patch, as a first-attempt training script
would. Prints the median seconds per step of each and their ratio, and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from meddet.io import read_volume
from meddet.networks.registry import build_model_from_plan
from meddet.planning.dataset import load_dataset
from meddet.planning.planner import load_plan
from meddet.precision import resolve_precision
from meddet.preprocess.prepare import prepare_case
from meddet.training.augment import forced_foreground, sample_patch
from meddet.training.cache import build_cache, cache_dir_for, load_cached
from meddet.training.data import IterationBatches
from meddet.training.losses import build_training_loss
from meddet.training.trainer import training_step


def naive_batch(cases, plan, rng) -> dict[str, torch.Tensor]:
    images, labels = [], []
    for force in forced_foreground(plan["batch_size"], plan["training"]["oversample_foreground"], rng):
        case = cases[int(rng.integers(len(cases)))]
        prepared = prepare_case([read_volume(p) for p in case.images], plan, read_volume(case.label))
        image, label = sample_patch(prepared.image, prepared.label, tuple(plan["patch_size"]), rng, force_foreground=force)
        images.append(torch.as_tensor(np.asarray(image)))
        labels.append(torch.as_tensor(np.asarray(label, dtype=np.int64))[None])
    return {"image": torch.stack(images), "label": torch.stack(labels)}


def time_steps(model, optimizer, loss_fn, next_batch, steps: int, precision: str) -> list[float]:
    times = []
    for i in range(steps):
        start = time.perf_counter()
        training_step(model, optimizer, loss_fn, next_batch(i), torch.device("cpu"), precision)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("plan")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    plan = load_plan(args.plan)
    index = load_dataset(args.dataset)
    cases = index.cases
    folder = build_cache(cases, plan, cache_dir_for(plan, index.root))
    model = build_model_from_plan(plan)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = build_training_loss(plan)
    cached = IterationBatches(load_cached(folder, [c.name for c in cases]), tuple(plan["patch_size"]), plan["batch_size"], 0,
                              augmentation_probability=0.0)
    rng = np.random.default_rng(0)
    precision = resolve_precision(plan["training"].get("precision", "fp32"))
    time_steps(model, optimizer, loss_fn, cached.__getitem__, 2, precision)  # warm-up
    fast = time_steps(model, optimizer, loss_fn, cached.__getitem__, args.steps, precision)
    slow = time_steps(model, optimizer, loss_fn, lambda i: naive_batch(cases, plan, rng), args.steps, precision)
    fast_m, slow_m = statistics.median(fast), statistics.median(slow)
    print(f"plan patch {plan['patch_size']} batch {plan['batch_size']}, compute precision {precision}")
    print(f"cached loader : median {fast_m:.3f} s/step ({1 / fast_m:.2f} steps/s) over {args.steps} steps")
    print(f"naive loader  : median {slow_m:.3f} s/step ({1 / slow_m:.2f} steps/s) over {args.steps} steps")
    print(f"speed-up (steps/s cached ÷ naive): {slow_m / fast_m:.2f}×")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
