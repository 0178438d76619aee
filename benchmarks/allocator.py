"""Training-step time with glibc's default allocator settings against mmap off and a high trim threshold.

Usage:  python benchmarks/allocator.py PLAN [--steps 15] [--rounds 3]

Why: a 3D U-Net step frees and re-allocates the same large activation buffers every step. With glibc's defaults,
blocks above the (dynamic) mmap threshold are returned to the kernel with munmap and faulted in again, page by
page, on the next step; ``meddet.runtime.keep_freed_memory`` turns that off. The setting must be in place before
the process allocates, so each variant runs in a child process: the baseline child runs with glibc's own defaults (no
MALLOC_* variables), the other calls ``keep_freed_memory()`` as ``meddet``'s CLI does. Children alternate
(A, B, A, B, …) so drifting machine load hits both alike. Synthetic batches of the plan's shape with a lesion in
each: only compute and memory traffic are timed. Prints median seconds per step, the ratio, and each child's peak
resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from meddet.planning.planner import load_plan
from meddet.networks.registry import build_model_from_plan
from meddet.precision import resolve_precision
from meddet.runtime import keep_freed_memory
from meddet.training.losses import build_training_loss
from meddet.training.trainer import training_step
plan_path, steps, tuned = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if tuned:
    keep_freed_memory()
plan = load_plan(plan_path)
torch.manual_seed(0)
model = build_model_from_plan(plan).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
loss_fn = build_training_loss(plan)
precision = resolve_precision(plan["training"].get("precision", "fp32"))
shape = (plan["batch_size"], len(plan["channel_names"]), *plan["patch_size"])
image = torch.randn(shape)
label = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
label[:, :, 10:16, 20:26, 20:26] = 1
batch = {"image": image, "label": label}
times = []
for i in range(steps + 3):
    start = time.perf_counter()
    training_step(model, optimizer, loss_fn, batch, torch.device("cpu"), precision)
    if i >= 3:
        times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

GLIBC_KNOBS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def run_child(plan: str, steps: int, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_KNOBS}  # glibc's own (dynamic) defaults
    out = subprocess.run([sys.executable, "-c", CHILD, plan, str(steps), "1" if tuned else "0"], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for tuned in (False, True):
            results[tuned].append(run_child(args.plan, args.steps, tuned))
    medians = {k: statistics.median(t for r in v for t in r["times"]) for k, v in results.items()}
    peaks = {k: max(r["peak_rss_mib"] for r in v) for k, v in results.items()}
    print(f"glibc defaults     : median {medians[False]:.3f} s/step, peak RSS {peaks[False]:.0f} MiB")
    print(f"keep_freed_memory(): median {medians[True]:.3f} s/step, peak RSS {peaks[True]:.0f} MiB")
    print(f"speed-up (default ÷ tuned): {medians[False] / medians[True]:.2f}×  ({args.rounds} rounds × {args.steps} steps each)")


if __name__ == "__main__":
    main()
