"""``meddet train``: iteration-based training with validation, checkpoints, resume, and DDP under torchrun.

Why iteration-based (not epochs): patches are sampled, so an "epoch" means nothing; a fixed number of iterations
with validation every N makes runs comparable across dataset sizes (nnU-Net does the same with its 250-iteration
epochs). Checkpoints hold the plan, so a checkpoint alone is enough to predict.

Distributed: under ``torchrun`` every process trains on its own shard of the training cases (it caches and
memory-maps only those — no full dataset copy per process), gradients are averaged by DistributedDataParallel
(gloo on CPU, NCCL on GPUs), and rank 0 alone validates and writes files.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.inferers import sliding_window_inference

from meddet.detection.lesions import extract_lesions, lesions_from_label_map
from meddet.evaluation.froc import case_counts
from meddet.networks.registry import build_model_from_plan
from meddet.planning.dataset import Case, DatasetIndex, load_dataset
from meddet.planning.planner import load_plan
from meddet.precision import autocast, resolve_precision
from meddet.preprocess.prepare import hu_per_unit
from meddet.training.augment import DEFAULT_PATCH_CENTRE
from meddet.training.cache import build_cache, cache_dir_for, load_cached
from meddet.training.curves import plot_training_curve
from meddet.training.data import IterationBatches
from meddet.training.losses import build_training_loss
from meddet.volume import Volume

CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
PLAIN_EVERY = 100  # without a terminal (a background run writing to a log file), a progress line every this many steps


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed() -> DistributedContext:
    """Join the process group torchrun describes in the environment; a plain single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")
    if world <= 1:
        return DistributedContext(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def split_cases(dataset: DatasetIndex, fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """The dataset's fixed split (splits.json) if it has one, else a seeded random split with at least one validation
    case when there are two or more cases."""
    cases = dataset.cases
    if dataset.validation is not None:
        held_out = set(dataset.validation)
        return [c for c in cases if c.name not in held_out], [c for c in cases if c.name in held_out]
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(max(1, int(round(len(cases) * fraction))), len(cases) - 1) if len(cases) > 1 else 0
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.name)
    train = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.name)
    return train, val


def poly_lr(base: float, iteration: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial decay."""
    return base * (1 - iteration / max(total, 1)) ** exponent


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: torch.nn.Module,
                  batch: dict[str, torch.Tensor], device: torch.device, precision: str) -> torch.Tensor:
    """One optimiser step: forward under autocast (bf16 where resolved), loss and backward in float32."""
    with autocast(device, precision):
        logits = model(batch["image"].to(device))
    loss = loss_fn(logits.float(), batch["label"].to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def validate(model: torch.nn.Module, cases, plan: dict[str, Any], device, precision: str = "fp32",
             sw_batch_size: int = 2) -> dict[str, float]:
    """Voxel and lesion metrics of the lesion probability (1 − p(background)) ≥ 0.5 on the validation cases.

    ``val_dice``: Dice over all validation voxels pooled (global); ``val_dice_mean_case``: mean over cases with
    lesions. ``val_sensitivity`` / ``val_fp_per_scan``: lesions as the predictor reports them (connected
    components, LUNA16 hit rule against the label map's components), so the curve shows what a clinic will see,
    not only voxel overlap, which a few false-positive blobs on vessels can dominate.
    """
    model.eval()
    inter = pred_sum = true_sum = 0.0
    per_case = []
    found = nodules = false_positives = 0
    spacing = tuple(float(s) for s in plan["target_spacing"])
    with torch.no_grad(), autocast(device, precision):
        for case in cases:
            image = torch.from_numpy(np.array(case.image, dtype=np.float32))[None].to(device)
            logits = sliding_window_inference(image, tuple(plan["patch_size"]), sw_batch_size, model, overlap=0.25, mode="gaussian")
            probability = (1.0 - torch.softmax(logits.float(), dim=1)[0, 0]).cpu().numpy()
            predicted, instances = extract_lesions(Volume(probability, spacing), threshold=0.5)
            pred = instances.array > 0  # every component is kept (no minimum volume): exactly probability ≥ 0.5
            truth = np.asarray(case.label) > 0
            i, p, t = float((pred & truth).sum()), float(pred.sum()), float(truth.sum())
            inter, pred_sum, true_sum = inter + i, pred_sum + p, true_sum + t
            if t > 0:
                per_case.append(2 * i / (p + t))
            reference = lesions_from_label_map(Volume(truth.astype(np.uint8), spacing), binary=True)
            counts = case_counts(predicted, reference)
            found, nodules = found + counts["detected"], nodules + len(reference)
            false_positives += counts["false_positives"]
    model.train()
    return {
        "val_dice": 2 * inter / (pred_sum + true_sum) if pred_sum + true_sum > 0 else 1.0,
        "val_dice_mean_case": float(np.mean(per_case)) if per_case else float("nan"),
        "val_sensitivity": found / nodules if nodules else float("nan"),
        "val_fp_per_scan": false_positives / max(len(cases), 1),
    }


def _weights_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of all parameters and buffers: equal digests mean bit-identical models (the DDP check)."""
    digest = hashlib.sha1()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, model, optimizer, iteration: int, best: float, plan: dict[str, Any]) -> None:
    """Atomic write (temp file + rename) so a kill during saving cannot leave a broken checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": _weights_of(model).state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
        "best_metric": best, "plan": plan, "meddet_checkpoint": 1,
    }, tmp)
    os.replace(tmp, path)


def train(
    plan_path: str | Path,
    output: str | Path,
    iterations: int | None = None,
    validate_every: int | None = None,
    resume: bool = True,
    num_workers: int = 1,
    max_validation_cases: int | None = 8,
    show_progress: bool = True,
    until: int | None = None,
) -> dict[str, Any]:
    """Train the plan's model; returns the final summary (also in ``output/summary.json``).

    ``until`` stops after that iteration with a checkpoint, as an interruption would, so a long run can be done
    in time-boxed chunks; the learning-rate schedule still follows the plan's total.
    """
    plan = load_plan(plan_path)
    ctx = _setup_distributed()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = plan["training"]
    total = int(iterations or cfg["iterations"])
    every = int(validate_every or cfg["validate_every"])
    seed = int(cfg["seed"])
    torch.manual_seed(seed)

    dataset = load_dataset(plan["dataset"])
    train_cases, val_cases = split_cases(dataset, cfg["validation_fraction"], seed)
    if max_validation_cases is not None:
        val_cases = val_cases[:max_validation_cases]
    shard = train_cases[ctx.rank :: ctx.world_size]  # each process reads only its own shard
    if not shard:
        raise ValueError(f"rank {ctx.rank} has no training cases: {len(train_cases)} cases for {ctx.world_size} processes")
    cache = cache_dir_for(plan, dataset.root)
    build_cache(shard + (val_cases if ctx.is_main else []), plan, cache)
    if ctx.world_size > 1:
        dist.barrier()
    batches = IterationBatches(
        load_cached(cache, [c.name for c in shard]), tuple(plan["patch_size"]), int(plan["batch_size"]), seed, ctx.rank,
        cfg["oversample_foreground"], cfg["augmentation_probability"], cfg.get("cutmix_probability", 0.0),
        cfg.get("patch_centre", DEFAULT_PATCH_CENTRE),
        texture_noise_probability=float(cfg.get("texture_noise_probability", 0.0)),
        hu_per_unit=hu_per_unit(plan), spacing_zyx_mm=tuple(float(s) for s in reversed(plan["target_spacing"])),
    )
    validation = load_cached(cache, [c.name for c in val_cases]) if ctx.is_main else []

    model = build_model_from_plan(plan).to(ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    loss_fn = build_training_loss(plan)
    precision = resolve_precision(cfg.get("precision", "fp32"), ctx.device)
    start, best = 0, -1.0
    last = out / CHECKPOINT_LAST
    if resume and last.exists():
        state = torch.load(last, map_location=ctx.device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["iteration"]), float(state["best_metric"])
    if ctx.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(batches, range(start, min(total, until or total))), batch_size=None, num_workers=num_workers,
        persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )
    log_path = out / "log.jsonl"
    interrupted = False

    def _stop(*_: Any) -> None:
        nonlocal interrupted
        interrupted = True

    previous_handler = signal.signal(signal.SIGTERM, _stop) if ctx.is_main else None
    progress = None
    plain_lines = ctx.is_main and show_progress and not sys.stdout.isatty()  # a log file: a line per PLAIN_EVERY steps
    if ctx.is_main and show_progress and not plain_lines:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        task = progress.add_task("train", total=total, completed=start, info="")
        progress.start()
    iteration = start
    window: list[float] = []
    tick = time.perf_counter()
    model.train()
    try:
        for batch in loader:
            lr = poly_lr(cfg["learning_rate"], iteration, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = training_step(model, optimizer, loss_fn, batch, ctx.device, precision)
            iteration += 1
            window.append(float(loss))
            if progress is not None or (plain_lines and iteration % PLAIN_EVERY == 0):
                speed = len(window) / max(time.perf_counter() - tick, 1e-9)
                info = f"loss {np.mean(window[-20:]):.4f}  {speed:.2f} it/s"
                if progress is not None:
                    progress.update(task, completed=iteration, info=info)
                else:
                    print(f"train {iteration}/{total}  {info}", flush=True)
            if iteration % every == 0 or iteration == total:
                record: dict[str, Any] = {"iteration": iteration, "loss": float(np.mean(window)), "lr": lr,
                                          "seconds": round(time.perf_counter() - tick, 2)}
                if ctx.is_main:
                    if validation:
                        record.update(validate(_weights_of(model), validation, plan, ctx.device, precision))
                        if record["val_dice"] > best:
                            best = record["val_dice"]
                            save_checkpoint(out / CHECKPOINT_BEST, model, optimizer, iteration, best, plan)
                    save_checkpoint(last, model, optimizer, iteration, best, plan)
                    with log_path.open("a") as stream:
                        stream.write(json.dumps(record) + "\n")
                    line = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
                    (progress.console.print if progress is not None else print)(line)
                    plot_training_curve(log_path, out / "training_curve.png")
                window, tick = [], time.perf_counter()
            if interrupted:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.stop()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if (interrupted or iteration < total) and ctx.is_main:
        save_checkpoint(last, model, optimizer, iteration, best, plan)  # batches are iteration-indexed: exact resume
    if ctx.is_main and not (out / CHECKPOINT_BEST).exists():
        save_checkpoint(out / CHECKPOINT_BEST, model, optimizer, iteration, best, plan)
    summary = {"iterations": iteration, "best_val_dice": best, "interrupted": interrupted, "rank": ctx.rank,
               "world_size": ctx.world_size, "precision": precision, "train_cases": len(train_cases), "validation_cases": len(val_cases),
               "weights_sha1": weights_digest(_weights_of(model))}
    name = "summary.json" if ctx.is_main else f"summary_rank{ctx.rank}.json"
    (out / name).write_text(json.dumps(summary, indent=1))
    if ctx.world_size > 1:
        dist.barrier()
    return summary
