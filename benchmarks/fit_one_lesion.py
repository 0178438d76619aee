"""Experiment: can a model's first stage learn one nodule it misses when trained on that nodule's patch alone?

Usage:
    python benchmarks/fit_one_lesion.py DATA CASE LESION_ID [--model lung-nodule] [--steps 60]
        [--learning-rate 3e-4] [--shift 8,15,-20] [--with-background] [--loss dice_ce_lesion_ce [--loss-options JSON]]

Why: fine-tuned on data rich in small nodules, with the missed ones drawn eight times as often, the first stage still
gives many of its own training nodules ~0 (docs/models/lung-nodule.md, "Limits"). Either the network cannot
represent such a nodule (capacity, grid) or the rest of the training data outvotes it (look-alike vessel shapes
labelled background everywhere else). Trained on one patch centred on the nodule (DATA/imagesTr, labelsTr and
lesions/CASE.json as ``meddet phantom`` writes; LESION_ID from that list), with the model's plan, loss and training
precision, and nothing else, a network that can represent it learns it within tens of steps; the probe also reports
a second patch shifted by ``--shift`` working-grid voxels (z, y, x) that still holds the nodule, so a fit that is only
a memory of pixel positions shows, and the voxels at >= 0.5 in the patch, so a fit that marks everything shows.
``--with-background`` pairs the nodule's patch in every step with a patch drawn uniformly from the rest of the same
case (a batch of two, as in training), so the lung it is trained to call background is in the same step.
``--loss`` replaces the plan's loss (the per-lesion cross-entropy: ``dice_ce_lesion_ce``).
Before and after, the whole case (sliding window, overlap 0.25, Gaussian blend, no mirroring) is counted: components
at >= 0.5 that touch no labelled lesion. If learning the one nodule makes the network mark many other places of
the same scan, the nodule looks, on this grid and to this network, like structures the data labels background.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from first_stage_at_nodules import nodule_points
from monai.inferers import sliding_window_inference
from scipy import ndimage

from meddet.inference.models import resolve_model
from meddet.io import read_volume
from meddet.networks.registry import build_model_from_plan
from meddet.precision import autocast, resolve_precision
from meddet.preprocess.prepare import prepare_case
from meddet.training.losses import available_losses, build_training_loss


def window(shape: tuple[int, ...], patch: np.ndarray, centre: np.ndarray) -> tuple[slice, ...]:
    """A patch-sized window around ``centre``, moved inside the scan."""
    low = np.clip(centre - patch // 2, 0, np.maximum(np.asarray(shape) - patch, 0))
    return tuple(slice(int(a), int(a) + int(p)) for a, p in zip(low, patch))


def false_components(network: torch.nn.Module, image: np.ndarray, label: np.ndarray, patch: np.ndarray,
                     precision: str) -> int:
    """Connected components at probability >= 0.5 over the whole (prepared) case that touch no lesion voxel."""
    network.eval()
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        logits = sliding_window_inference(torch.as_tensor(image)[None], tuple(int(p) for p in patch), 1, network,
                                          overlap=0.25, mode="gaussian")
    network.train()
    found = torch.softmax(logits.float(), dim=1)[0, 1].numpy() >= 0.5
    components, count = ndimage.label(found)
    touching = set(np.unique(components[(label > 0) & found]).tolist()) - {0}
    return count - len(touching)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("case")
    parser.add_argument("lesion_id", type=int)
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--shift", default="8,15,-20", help="z,y,x voxels of the second patch")
    parser.add_argument("--loss", choices=available_losses(), default=None, help="default: the plan's")
    parser.add_argument("--loss-options", type=json.loads, default={}, help='e.g. \'{"lambda_lesion": 0.05}\'')
    parser.add_argument("--with-background", action="store_true",
                        help="add a uniformly drawn patch of the same case to every step")
    args = parser.parse_args()
    torch.manual_seed(0)
    state = torch.load(resolve_model(args.model), weights_only=False)
    plan = state["plan"]
    if args.loss:
        plan["loss"] = {"name": args.loss, "options": args.loss_options}
    network = build_model_from_plan(plan)
    network.load_state_dict(state["model"])
    device = torch.device("cpu")
    precision = resolve_precision(plan["training"].get("precision", "fp32"), device)

    truth = json.loads((args.dataset / "lesions" / f"{args.case}.json").read_text())
    nodule = next(n for n in truth["lesions"] if n["id"] == args.lesion_id)
    image = read_volume(args.dataset / "imagesTr" / f"{args.case}_0000.nii.gz")
    label = read_volume(args.dataset / "labelsTr" / f"{args.case}.nii.gz")
    case = prepare_case([image], plan, label)
    points = nodule_points(case.grid, nodule["center_mm"], nodule["diameter_mm"] / 2)
    centre = points.mean(axis=0).round().astype(int)
    patch = np.asarray(plan["patch_size"])
    shift = np.asarray([int(v) for v in args.shift.split(",")])
    windows = [window(case.image.shape[1:], patch, centre), window(case.image.shape[1:], patch, centre + shift)]
    images = [torch.as_tensor(np.ascontiguousarray(case.image[(slice(None), *w)]))[None] for w in windows]
    target = torch.as_tensor(np.ascontiguousarray(case.label[windows[0]]).astype(np.int64))[None, None]
    inside = np.zeros(case.image.shape[1:], bool)
    inside[tuple(points.T)] = True
    masks = [torch.as_tensor(inside[w])[None, None] for w in windows]
    print(f"{args.case} lesion {args.lesion_id}: {nodule['diameter_mm']:.1f} mm {nodule['type']} {nodule['location']}, "
          f"{int(masks[0].sum())} working-grid voxels within its radius, {int(target.sum())} lesion voxels in the "
          f"patch; {precision}, learning rate {args.learning_rate:g}")

    def probe() -> str:
        network.eval()
        with torch.no_grad(), autocast(device, precision):
            probabilities = [torch.softmax(network(x).float(), dim=1)[:, 1:2] for x in images]
        network.train()
        best = [float(p[m].max()) for p, m in zip(probabilities, masks)]
        marked = int((probabilities[0] >= 0.5).sum())
        return f"nodule {best[0]:.4f} (shifted patch {best[1]:.4f}), voxels >= 0.5 in the patch {marked}"

    print(f"step 0: {probe()}; whole case: "
          f"{false_components(network, case.image, case.label, patch, precision)} components >= 0.5 off the lesions")
    loss_fn = build_training_loss(plan)
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.learning_rate,
                                  weight_decay=plan["training"]["weight_decay"])
    network.train()
    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        batch, labels = images[0], target
        if args.with_background:
            other = window(case.image.shape[1:], patch, rng.integers(0, case.image.shape[1:]))
            batch = torch.cat([batch, torch.as_tensor(np.ascontiguousarray(case.image[(slice(None), *other)]))[None]])
            other_label = np.ascontiguousarray(case.label[other]).astype(np.int64)
            labels = torch.cat([labels, torch.as_tensor(other_label)[None, None]])
        with autocast(device, precision):
            logits = network(batch)
        loss = loss_fn(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 10 == 0 or step == args.steps:
            print(f"step {step}: loss {float(loss.detach()):.4f}, {probe()}", flush=True)
    print(f"after {args.steps} steps, whole case: "
          f"{false_components(network, case.image, case.label, patch, precision)} components >= 0.5 off the lesions")


if __name__ == "__main__":
    main()
