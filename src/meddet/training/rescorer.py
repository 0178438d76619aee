"""``meddet train-rescorer``: train the second-stage classifier on a model's candidates and calibrate it.

Why this order of choices: the classifier is trained on the training cases' candidates (plus a cube at every truth
nodule), then the validation cases decide, by CPM, which candidate threshold and which way of combining the two
scores to use — including "first", the first stage alone, so a classifier that does not help is not used — and the
final score threshold (``choose_rescorer_setting``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from meddet.detection.crops import CROP_VOXELS
from meddet.detection.rescorer import (
    COMBINATIONS, HU_SCALE, INPUT_VOXELS, build_classifier, classify, combine, to_input,
)
from meddet.errors import MeddetInputError
from meddet.evaluation.froc import froc
from meddet.inference.export import CPM_TOLERANCE, THRESHOLDS
from meddet.inference.predictor import DEFAULT_POSTPROCESSING, load_model
from meddet.planning.dataset import load_dataset
from meddet.training.augment import textured_noise
from meddet.training.candidates import CANDIDATE_THRESHOLDS, collect_dataset
from meddet.training.trainer import poly_lr, split_cases

TRAINING_THRESHOLD = CANDIDATE_THRESHOLDS[0]  # the most candidates: every false positive the others have, and more
POSITIVE_FRACTION = 0.5
NOISE_SD = 0.05  # Gaussian noise on the scaled input (~20 HU)


def training_arrays(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU cubes, labels (1 = nodule) and a mark of the first stage's false positives, from the cases' candidates at
    ``TRAINING_THRESHOLD``, their truth cubes and their dense-tissue negatives."""
    cubes, labels, candidate_fp = [], [], []
    key = f"t{TRAINING_THRESHOLD:g}_"
    for path in paths:
        with np.load(path) as data:
            hit = data[key + "hit_mm"] > 0
            n_truth, n_negative = len(data["truth_mm"]), len(data["negative_crops"])
            cubes += [data[key + "crops"], data["truth_crops"], data["negative_crops"]]
            labels += [hit.astype(np.float32), np.ones(n_truth, np.float32), np.zeros(n_negative, np.float32)]
            candidate_fp += [~hit, np.zeros(n_truth, bool), np.zeros(n_negative, bool)]
    return np.concatenate(cubes), np.concatenate(labels), np.concatenate(candidate_fp)


def augmented_batch(cubes: np.ndarray, rng: np.random.Generator, texture_probability: float = 0.0) -> np.ndarray:
    """Network input for ``cubes`` with a random shift (±4 mm), mirrors on every axis, an in-plane transpose, a
    contrast scale of 0.9–1.1 and Gaussian noise: what differs between two views of the same kind of finding.
    With ``texture_probability`` > 0, that share of the cubes also gets correlated noise (``textured_noise``)."""
    span = CROP_VOXELS - INPUT_VOXELS
    out = np.empty((len(cubes), 1, INPUT_VOXELS, INPUT_VOXELS, INPUT_VOXELS), np.float32)
    for k, cube in enumerate(cubes):
        view = to_input(cube[None], tuple(int(v) for v in rng.integers(0, span + 1, 3)))[0, 0]
        for axis in range(3):
            if rng.random() < 0.5:
                view = view[::-1] if axis == 0 else np.flip(view, axis)
        if rng.random() < 0.5:
            view = view.transpose(0, 2, 1)
        out[k, 0] = view * rng.uniform(0.9, 1.1)
        if texture_probability > 0 and rng.random() < texture_probability:
            out[k, 0] += textured_noise(view.shape, rng, HU_SCALE)  # the cube is at 1 mm
    return out + rng.normal(0.0, NOISE_SD, out.shape).astype(np.float32)


def train_classifier(cubes: np.ndarray, labels: np.ndarray, candidate_fp: np.ndarray, iterations: int = 3000,
                     batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
                     log: Callable[[str], None] = print, network: torch.nn.Module | None = None,
                     texture_probability: float = 0.0) -> torch.nn.Module:
    """Train the classifier with AdamW, nnU-Net's poly schedule and balanced batches: half nodules, and of the rest
    half the first stage's false positives (the mistakes to undo, a few per scan) and half dense-tissue cubes.
    ``network``: a trained classifier to continue from (fine-tuning on new candidates), a fresh one by default.
    ``texture_probability``: share of cubes given correlated noise (``augmented_batch``); 0, the default, draws
    exactly the random numbers the bundled model's classifier was trained with."""
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise ValueError("The second stage needs both nodule and non-nodule cubes to train on.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = network if network is not None else build_classifier()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    positives = np.flatnonzero(labels > 0)
    hard, tissue = np.flatnonzero(candidate_fp), np.flatnonzero((labels == 0) & ~candidate_fp)
    n_pos = max(1, int(round(batch_size * POSITIVE_FRACTION)))
    n_hard = (batch_size - n_pos) // 2 if len(hard) and len(tissue) else (batch_size - n_pos if len(hard) else 0)
    start, running = time.perf_counter(), []
    network.train()
    for iteration in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(learning_rate, iteration, iterations)
        index = np.concatenate([rng.choice(positives, n_pos), rng.choice(hard, n_hard) if n_hard else [],
                                rng.choice(tissue, batch_size - n_pos - n_hard) if n_hard < batch_size - n_pos else []]
                               ).astype(int)
        x = torch.from_numpy(augmented_batch(cubes[index], rng, texture_probability))
        y = torch.from_numpy(labels[index])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(x)[:, 0], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(float(loss.detach()))
        if (iteration + 1) % 250 == 0 or iteration + 1 == iterations:
            log(f"iteration {iteration + 1}/{iterations}: loss {np.mean(running):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
            running = []
    network.eval()
    return network


def scored_candidates(path: Path, network: torch.nn.Module,
                      thresholds: tuple[float, ...] = CANDIDATE_THRESHOLDS) -> dict[str, Any]:
    """A cached case's truth and, per candidate threshold, its candidates' centres, first-stage scores and
    classifier probabilities: everything a setting's FROC needs, without the sliding window."""
    with np.load(path) as data:
        case = {"truth": [{"center_mm": c.tolist(), "diameter_mm": float(d)}
                          for c, d in zip(data["truth_centres"], data["truth_mm"])]}
        for threshold in thresholds:
            key = f"t{threshold:g}_"
            case[threshold] = (data[key + "centres"], data[key + "scores"], classify(network, data[key + "crops"]))
    return case


def setting_froc(cases: list[dict[str, Any]], candidate_threshold: float, how: str, threshold: float,
                 min_diameter_mm: float = 0.0) -> dict[str, Any]:
    """FROC of one second-stage setting over ``scored_candidates`` cases: candidates at ``candidate_threshold``,
    scores combined ``how``, those under ``threshold`` dropped."""
    pairs = []
    for case in cases:
        centres, first, second = case[candidate_threshold]
        final = combine(first, second, how)
        pairs.append(([{"center_mm": c.tolist(), "score": float(v)} for c, v in zip(centres, final) if v >= threshold],
                      case["truth"]))
    return froc(pairs, bootstrap=0, min_diameter_mm=min_diameter_mm)


def calibrate_rescorer(network: torch.nn.Module, paths: list[Path]) -> dict[str, Any]:
    """CPM of every candidate threshold × combination × final threshold on the validation cases; the choice."""
    cases = [scored_candidates(path, network) for path in paths]
    grid = []
    for candidate_threshold in CANDIDATE_THRESHOLDS:
        for how in COMBINATIONS:
            for threshold in sorted({*THRESHOLDS, 0.0}):
                if how == "first" and threshold < candidate_threshold:
                    continue  # the same as at the candidate threshold
                result = setting_froc(cases, candidate_threshold, how, threshold)
                grid.append({"candidate_threshold": candidate_threshold, "combination": how, "threshold": threshold,
                             "cpm": result["cpm"], "sensitivity_at_1fp": result["sensitivity"][3]})
    return {"best": choose_rescorer_setting(grid), "grid": grid, "validation_cases": [p.stem for p in paths]}


def choose_rescorer_setting(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate threshold and combination of the best CPM; of its final thresholds within ``CPM_TOLERANCE``
    of that CPM, the middle one (the lower of two middles).

    Why the middle and not the highest (``meddet export-model``'s rule): here the final threshold cannot tighten an
    outline (the candidate threshold draws those), it only drops candidates. A good classifier ranks every found
    nodule above every false positive on the validation cases, which then cannot tell a wide range of thresholds
    apart; its top end drops nodules the classifier doubts on new scans, its bottom end reports every faint
    candidate. The middle is the farthest from both."""
    best = max(grid, key=lambda g: g["cpm"])
    tied = sorted((g for g in grid if g["candidate_threshold"] == best["candidate_threshold"]
                   and g["combination"] == best["combination"] and g["cpm"] >= best["cpm"] - CPM_TOLERANCE),
                  key=lambda g: g["threshold"])
    return tied[(len(tied) - 1) // 2]


def rescored_model_state(first_stage: dict[str, Any], network: torch.nn.Module, calibration: dict[str, Any],
                         version: str, training: dict[str, Any]) -> dict[str, Any]:
    """A model file's content: the first stage's, plus the classifier and the calibrated post-processing."""
    best = calibration["best"]
    return {
        **first_stage,
        "version": version,
        "postprocessing": {**DEFAULT_POSTPROCESSING, "threshold": best["threshold"], "min_volume_mm3": 0.0},
        "rescorer": {"model": network.state_dict(), "combination": best["combination"],
                     "candidate_threshold": best["candidate_threshold"]},
        "provenance": {**first_stage.get("provenance", {}),
                       "rescorer": {"training": training, "calibration": calibration}},
    }


def train_rescorer(model_path: Path, out: Path, dataset_root: Path | None = None, candidates: Path | None = None,
                   iterations: int = 3000, version: str | None = None, seed: int = 0,
                   log: Callable[[str], None] = print, texture_probability: float = 0.0) -> dict[str, Any]:
    """Collect ``model_path``'s candidates on the dataset (default: the one its plan names; its fixed or seeded
    split), train the classifier on the training cases', calibrate on the validation cases', write ``out``.
    ``texture_probability``: share of training cubes given correlated noise (``textured_noise``)."""
    model = load_model(model_path)
    if model.rescorer is not None:
        raise MeddetInputError("This model already has a second stage; give the first-stage model file.", model_path)
    dataset = load_dataset(dataset_root or Path(model.plan["dataset"]))
    train_cases, val_cases = split_cases(dataset, model.plan["training"]["validation_fraction"],
                                         int(model.plan["training"]["seed"]))
    if not train_cases or not val_cases:
        raise MeddetInputError("The dataset needs training and validation cases for a second stage.", dataset.root)
    candidates = candidates or dataset.root / "candidates" / f"{model.name}-{model.version}"
    train_paths = collect_dataset(model, train_cases, dataset.root, candidates, log)
    val_paths = collect_dataset(model, val_cases, dataset.root, candidates, log)
    cubes, labels, candidate_fp = training_arrays(train_paths)
    log(f"training on {len(labels)} cubes ({int(labels.sum())} nodules, {int(candidate_fp.sum())} first-stage false "
        f"positives) from {len(train_paths)} cases")
    network = train_classifier(cubes, labels, candidate_fp, iterations, seed=seed, log=log,
                               texture_probability=texture_probability)
    calibration = calibrate_rescorer(network, val_paths)
    first_stage = torch.load(model_path, map_location="cpu", weights_only=False)
    training = {"iterations": iterations, "seed": seed, "texture_probability": texture_probability,
                "cubes": int(len(labels)), "nodule_cubes": int(labels.sum()),
                "candidate_false_positives": int(candidate_fp.sum()),
                "training_cases": [c.name for c in train_cases], "dataset": str(dataset.root)}
    state = rescored_model_state(first_stage, network, calibration, version or f"{model.version}+rescorer", training)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return state
