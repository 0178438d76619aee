"""Experiment: fine-tune a model's first stage on a dataset, optionally with the lesions it misses shown more often
(hard-lesion mining) and/or with correlated ("textured") CT noise on a share of the patches.

Usage:
    meddet phantom --out DATA --n 60 --seed 9100                # training phantoms (not dev or held-out seeds)
    meddet phantom --out DATA --n 40 --seed 9300 --append --small-nodules 4   # or: rich in small nodules
    python benchmarks/finetune_first_stage.py DATA OUT [--model lung-nodule] [--iterations 2500]
        [--hard-weight 4] [--texture-noise 0.5] [--precision fp32] [--learning-rate 0.001] [--grid-zoom 0.75]
        [--from-scratch] [--loss dice_focal] [--loss-options JSON] [--widen 24,48,96,192,192]
    meddet predict DEV/dicom -o PRED --model OUT/model.pt && meddet evaluate --pred PRED --truth DEV

Why hard lesions: the bundled model misses two kinds of nodules (docs/models/lung-nodule.md, "Which nodules are
missed"): faint ground glass under 6 mm and small juxtavascular nodules. ``--patch-centre lesion`` already shows
every lesion equally often; ``--hard-weight W`` shows the ones the current weights do not find W times as often.
Mining: for every training lesion, the model's highest lesion probability over its voxels in a window centred on it
(its own plan, no mirroring); a lesion under 0.5 is hard. Without ``--hard-weight`` (1) nothing is mined.
Why textured noise: blotchy noise of a small nodule's size, which the phantoms' own noise lacks, makes the first
stage propose noise blotches that rank high (docs/models/lung-nodule.md, "Noise the model was not trained on");
``--texture-noise P`` is the plan's ``texture_noise_probability`` (``meddet.training.augment.textured_noise``).
Why a finer grid: the nodules the first stage misses are 3-6 mm, 2-4 voxels on its 1.29 x 1.29 x 2.42 mm working
grid; the same weights run on a grid 0.6-0.75 x as fine see some of them but propose vessel branchings too
(docs/models/lung-nodule.md, "Limits"). ``--grid-zoom Z`` fine-tunes on the plan's spacing times Z (its own
preprocessed cache), so the network learns vessels at that scale as well; the written model carries that plan.
Then ``meddet train`` resumes from the model's weights with a fresh optimiser at iteration ``START`` of a run
``START + iterations`` long (the poly schedule starts at 0.17 of the base rate for 2500 of 17500), with each forced
patch's lesion drawn by those weights; ``--from-scratch`` instead trains a freshly initialised network for
``iterations`` (the plan's full schedule), the fair test of a new grid, where fine-tuning carries the old grid's habits.
Why widen: the first stage does not fit many small nodules of its own training cases, even fine-tuned on a dozen cases
with them drawn eight times as often, although alone in a patch it learns one within 20 steps (``fit_one_lesion.py``);
``--widen W`` tests whether capacity is what it lacks, without losing what it knows: each level gets W channels, the
old channels keep their weights and get zero weights from the new ones (so the widened network computes exactly
what the old one did), the new channels start from a fresh network's random weights and learn in the fine-tune.
The written model is the input model file with the first stage's weights replaced: same second stage, thresholds and
outline level.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

import meddet.training.trainer as trainer
from meddet.inference.models import resolve_model
from meddet.inference.predictor import lesion_probability, load_model, with_grid_scaled
from meddet.planning.dataset import load_dataset
from meddet.planning.planner import save_plan
from meddet.training.augment import LesionVoxels
from meddet.training.cache import build_cache, cache_dir_for, load_cached
from meddet.training.losses import available_losses
from meddet.training.trainer import CHECKPOINT_LAST, split_cases, train

START = 15_000  # the iteration the bundled first stage stopped at (its model card)
HARD_BELOW = 0.5  # a lesion whose best probability is under this is one the model does not find


@dataclasses.dataclass(frozen=True)
class WeightedLesions(LesionVoxels):
    """Lesions drawn in proportion to ``weights`` (whatever rule the plan names)."""

    weights: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def pick(self, rng: np.random.Generator, centre: str = "lesion") -> np.ndarray:
        index = int(rng.choice(len(self.points), p=self.weights / self.weights.sum()))
        lesion = self.points[index]
        return lesion[rng.integers(len(lesion))]


def widen(state: dict, widths: list[int]) -> dict:
    """The first stage's weights widened to ``widths`` channels per level, computing the same function (Net2Net-style).

    Each new tensor starts from a freshly built network's (random) weights; the old block is copied in and the
    weights from new input channels to old output channels are zeroed, so old channels see only old channels and
    the output heads read only old channels. DynUNet's up blocks convolve ``cat(upsampled, skip)``, so there the old
    input channels sit in two runs. Transposed convolutions store (in, out, ...) rather than (out, in, ...).
    """
    plan = json.loads(json.dumps(state["plan"]))
    plan["model"]["channels"] = list(widths)
    fresh = trainer.build_model_from_plan(plan).state_dict()
    widened = {}
    for key, new in fresh.items():
        old = state["model"][key]
        if old.shape == new.shape:
            widened[key] = old.clone()
            continue
        transposed = "transp_conv" in key
        out_old, in_old = (old.shape[1], old.shape[0]) if transposed else old.shape[:2]
        out_new = new.shape[1] if transposed else new.shape[0]
        inputs = list(range(in_old))
        if "conv_block.conv1" in key:  # cat(upsampled: out channels, skip)
            inputs = list(range(out_old)) + list(range(out_new, out_new + in_old - out_old))
        weight = new.clone()
        if transposed:
            weight[:, :out_old] = 0
            weight[inputs, :out_old] = old
        else:
            weight[:out_old] = 0
            weight[:out_old, inputs] = old
        widened[key] = weight
    return {"model": widened, "plan": plan}


def best_probability(model, image: np.ndarray, points: np.ndarray) -> float:
    """The model's highest lesion probability over ``points`` (voxels [z, y, x]) in a window centred on them."""
    patch = np.array(model.plan["patch_size"])
    centre = points.mean(axis=0).round().astype(int)
    low = np.clip(centre - patch // 2, 0, None)
    high = np.minimum(low + patch, image.shape[1:])
    crop = np.ascontiguousarray(image[:, low[0]:high[0], low[1]:high[1], low[2]:high[2]])
    probability = lesion_probability(model, crop)
    inside = np.all((points >= low) & (points < high), axis=1)
    local = points[inside] - low
    return float(probability[tuple(local.T)].max()) if len(local) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--hard-weight", type=float, default=1.0, help="1: no mining")
    parser.add_argument("--texture-noise", type=float, default=0.0, help="share of patches with textured noise")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: the model's plan")
    parser.add_argument("--grid-zoom", type=float, default=1.0,
                        help="train on a working grid this many times the plan's spacing (0.75: finer, small nodules "
                             "look 1.33 times larger)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train a fresh network for --iterations instead of continuing the model's weights")
    parser.add_argument("--loss", choices=available_losses(), default=None,
                        help="default: the plan's (dice_ce); dice_focal weights the voxels the network gets wrong, "
                             "such as a small nodule's few voxels, far above the easy background")
    parser.add_argument("--widen", default=None, help="channels per level, e.g. 24,48,96,192,192: widen the "
                        "model's first stage (same function) before fine-tuning it")
    parser.add_argument("--loss-options", type=json.loads, default={},
                        help='options of --loss, e.g. \'{"lambda_lesion": 0.05}\'')
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="base rate of the poly schedule (default: the plan's; a fine-tune starts at ~0.17 of it)")
    args = parser.parse_args()
    model_path = resolve_model(args.model)
    model = load_model(model_path)
    state = torch.load(model_path, weights_only=False)  # the file the fine-tuned weights are written back into
    plan = json.loads(json.dumps(with_grid_scaled(model, args.grid_zoom).plan))
    if args.widen:
        state.update(widen(state, [int(w) for w in args.widen.split(",")]))
        plan["model"]["channels"] = state["plan"]["model"]["channels"]
    plan["dataset"] = str(args.dataset.resolve())
    plan["training"].update(validate_every=args.iterations, patch_centre="lesion",
                            texture_noise_probability=args.texture_noise)
    if args.precision:
        plan["training"]["precision"] = args.precision
    if args.learning_rate:
        plan["training"]["learning_rate"] = args.learning_rate
    if args.loss:
        plan["loss"] = {"name": args.loss, "options": args.loss_options}
    args.out.mkdir(parents=True, exist_ok=True)
    plan_path = save_plan(plan, args.out / "plan.json")

    dataset = load_dataset(args.dataset)
    train_cases, val_cases = split_cases(dataset, plan["training"]["validation_fraction"], plan["training"]["seed"])
    cache = build_cache(train_cases + val_cases, plan, cache_dir_for(plan, dataset.root))
    hard, mined = 0, []
    if args.hard_weight != 1.0:
        weights: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for case in load_cached(cache, [c.name for c in train_cases]):
                best = np.array([best_probability(model, np.asarray(case.image), p) for p in case.lesions.points])
                weights[case.name] = np.where(best < HARD_BELOW, args.hard_weight, 1.0)
                mined += [{"case": case.name, "voxels": int(s), "best": round(float(b), 4)}
                          for s, b in zip(case.lesions.sizes, best)]
        hard = sum(m["best"] < HARD_BELOW for m in mined)
        print(f"{len(train_cases)} training cases, {len(mined)} lesions, {hard} hard (best probability < {HARD_BELOW})")
        (args.out / "mined.json").write_text(json.dumps(mined, indent=0))

        def weighted(folder: Path, names: list[str]):
            cases = load_cached(folder, names)
            return [dataclasses.replace(c, lesions=WeightedLesions(c.lesions.points, c.lesions.sizes, weights[c.name]))
                    if c.name in weights and len(c.lesions) else c for c in cases]

        trainer.load_cached = weighted  # the training batches draw lesions by the mined weights
    start = 0 if args.from_scratch else START
    if not args.from_scratch and not (args.out / CHECKPOINT_LAST).exists():
        network = trainer.build_model_from_plan(plan)
        network.load_state_dict(state["model"])
        optimiser = torch.optim.AdamW(network.parameters(), lr=plan["training"]["learning_rate"],
                                      weight_decay=plan["training"]["weight_decay"])
        trainer.save_checkpoint(args.out / CHECKPOINT_LAST, network, optimiser, START, -1.0, plan)
    summary = train(plan_path, args.out, iterations=start + args.iterations, max_validation_cases=4)
    print(json.dumps(summary))

    state["model"] = torch.load(args.out / CHECKPOINT_LAST, weights_only=False)["model"]
    state["version"] = f"{state['version']}+{'scratch' if args.from_scratch else 'finetune'}"
    state["provenance"]["first_stage_finetune"] = {
        "dataset": str(args.dataset), "iterations": args.iterations, "hard_weight": args.hard_weight,
        "hard_lesions": hard, "lesions": len(mined), "start": start, "texture_noise": args.texture_noise,
        "precision": plan["training"]["precision"], "learning_rate": plan["training"]["learning_rate"],
        "grid_zoom": args.grid_zoom, "loss": plan["loss"]["name"], "widen": args.widen,
    }
    state["plan"] = plan  # the working grid it was fine-tuned on
    torch.save(state, args.out / "model.pt")
    print(f"Wrote {args.out / 'model.pt'}")


if __name__ == "__main__":
    main()
