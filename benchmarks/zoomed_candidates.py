"""Would the first stage, run once more on a finer grid, give the second stage the nodules it now misses?

Usage:
    meddet phantom --out /tmp/dev --n 40 --seed 555000                    # fresh full-size phantoms (not held-out seeds)
    python benchmarks/zoomed_candidates.py collect /tmp/dev CACHE [--zooms 0.6]
    python benchmarks/zoomed_candidates.py score /tmp/dev CACHE [--model lung-nodule|PATH]
    # a classifier fine-tuned on zoomed candidates too (phantoms never used for the dev decision), then scored:
    python benchmarks/zoomed_candidates.py collect /tmp/train CACHE_TRAIN --zooms 0.6 --every 2
    python benchmarks/zoomed_candidates.py finetune CACHE_TRAIN --out /tmp/zoomed.pt [--iterations 1500]

Why this experiment: the bundled model's misses are faint and small juxtavascular nodules that get no candidate from
its segmentation network on the 1.29 x 1.29 x 2.42 mm working grid (2-4 voxels for a 4 mm nodule in 2.42 mm slices;
partial volume halves a ground-glass nodule's contrast). Run on a grid `zoom` times as fine (the scan resampled to
spacing x zoom), the same weights see every structure 1/zoom times larger and less blurred: a 4 mm nodule looks like
the 6 mm ones the network finds. It also sees vessels as larger blobs, so it proposes more false candidates; the
second-stage classifier (1 mm cubes, scale-true) has to rank those below the nodules.

`collect` caches per case and zoom (CACHE/<case>_<zoom>.npz; zoom 1 = the model's own pass with its mirroring) the
candidates at the model's candidate threshold: centres, first-stage peaks and their 1 mm HU cubes, plus the case's
truth cubes and dense-tissue cubes (`meddet.training.candidates`). `score` merges the model's candidates with each
zoom's (a zoomed candidate within DEDUPE_MM of an earlier one is dropped), scores every candidate as the model does
(its classifier, combination and final threshold; the zoomed ones' scores times each of --zoomed-weights) and prints,
per set of zooms and weight, nodules with a candidate, the CPM with its FROC points, the >= 6 mm CPM and the zoomed
findings per scan, and the scores of the nodules only a zoomed candidate hits. `finetune` continues training the model's
classifier on cached cases (their candidates of every zoom, labelled by the evaluation's hit rule, their truth and
tissue cubes) and writes a model file with that classifier.
"""

from __future__ import annotations

import argparse
import copy
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from meddet.detection.crops import crops_around
from meddet.detection.lesions import extract_lesions
from meddet.detection.rescorer import MAX_CANDIDATES, classify, combine
from meddet.evaluation.froc import froc, hit_radius
from meddet.inference.export import case_truth
from meddet.inference.models import resolve_model
from meddet.inference.predictor import LoadedModel, load_model, predict_probability, with_grid_scaled
from meddet.io import read_volume
from meddet.planning.dataset import load_dataset
from meddet.training.candidates import hit_diameters, negative_arrays
from meddet.training.rescorer import train_classifier

DEDUPE_MM = 8.0


def case_candidates(model: LoadedModel, volume, zoom: float) -> dict[str, np.ndarray]:
    """Centres, first-stage peaks and HU cubes of one scan's candidates at ``zoom`` (1: the model's own pass)."""
    start = time.perf_counter()
    if zoom == 1.0:
        probability, _ = predict_probability(model, [volume])
    else:
        probability, _ = predict_probability(with_grid_scaled(model, zoom), [volume], "none")
    seconds = time.perf_counter() - start
    lesions = extract_lesions(probability, model.rescorer.candidate_threshold, 0.0)[0][:MAX_CANDIDATES]
    centres = np.array([lesion["center_mm"] for lesion in lesions], dtype=float).reshape(-1, 3)
    return {"centres": centres, "first": np.array([lesion["score"] for lesion in lesions], dtype=float),
            "crops": np.round(crops_around(volume, centres)).astype(np.int16), "seconds": np.array(seconds)}


def dataset_cases(dataset: Path, every: int = 1) -> list[tuple[str, Path, list[dict]]]:
    """Name, CT image and truth nodules of every ``every``-th case of a dataset folder."""
    return [(case.name, case.images[0], case_truth(case.name, case.label, dataset))
            for case in load_dataset(dataset).cases[::every]]


def collect(model: LoadedModel, dataset: Path, cache: Path, zooms: list[float], every: int) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for name, image, truth in dataset_cases(dataset, every):
        paths = {zoom: cache / f"{name}_{zoom:g}.npz" for zoom in [1.0] + zooms}
        truth_path = cache / f"{name}_truth.npz"
        if truth_path.is_file() and all(p.is_file() for p in paths.values()):
            continue
        volume, done = read_volume(image), []
        for zoom, path in paths.items():
            if not path.is_file():
                arrays = case_candidates(model, volume, zoom)
                np.savez(path, **arrays)
                done.append(f"x{zoom:g}: {len(arrays['centres'])} in {float(arrays['seconds']):.1f} s")
        centres = np.array([t["center_mm"] for t in truth], dtype=float).reshape(-1, 3)
        np.savez(truth_path, centres=centres, diameters=np.array([t["diameter_mm"] for t in truth], dtype=float),
                 crops=np.round(crops_around(volume, centres)).astype(np.int16), **negative_arrays(volume, truth, name))
        print(name, ", ".join(done), flush=True)


def load_case(cache: Path, name: str, zooms: list[float]) -> tuple[dict[float, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    per_zoom = {}
    for zoom in [1.0] + zooms:
        with np.load(cache / f"{name}_{zoom:g}.npz") as data:
            per_zoom[zoom] = dict(data)
    with np.load(cache / f"{name}_truth.npz") as data:
        return per_zoom, dict(data)


def merged(per_zoom: list[dict[str, np.ndarray]], how: str, threshold: float, weight: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of several zooms (the model's own first), later ones dropped near earlier ones, those whose final
    score is under ``threshold`` dropped; the zoomed ones' scores times ``weight`` (< 1 ranks them below the model's
    own findings of the same score). Returns centres, scores and a mark of the zoomed ones."""
    centres, scores, extra = np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool)
    for k, arrays in enumerate(per_zoom):
        keep = np.ones(len(arrays["centres"]), bool)
        if len(centres) and len(arrays["centres"]):
            keep = np.linalg.norm(arrays["centres"][:, None] - centres[None], axis=2).min(axis=1) > DEDUPE_MM
        final = combine(arrays["first"], arrays["second"], how)
        keep &= final >= threshold
        centres = np.concatenate([centres, arrays["centres"][keep]])
        scores = np.concatenate([scores, final[keep] * (weight if k else 1.0)])
        extra = np.concatenate([extra, np.full(int(keep.sum()), k > 0)])
    return centres, scores, extra


def score(model: LoadedModel, dataset: Path, cache: Path, zooms: list[float], weights: list[float]) -> None:
    how, threshold = model.rescorer.combination, model.postprocessing["threshold"]
    cases = []
    for name, _, truth in dataset_cases(dataset):
        per_zoom, _ = load_case(cache, name, zooms)
        for arrays in per_zoom.values():
            arrays["second"] = classify(model.rescorer.network, arrays["crops"])
        cases.append((per_zoom, truth))
    print(f"{model.name} {model.version}: {len(cases)} scans, {sum(len(t) for _, t in cases)} nodules; "
          f"scores: {how}, threshold {threshold:g}")
    settings = [((), 1.0)] + [(c, w) for r in range(1, len(zooms) + 1) for c in combinations(zooms, r) for w in weights]
    for chosen, weight in settings:
        pairs, covered, extra_reported, new_found, zoomed_false = [], 0, 0, [], []
        for per_zoom, truth in cases:
            centres, scores, extra = merged([per_zoom[1.0]] + [per_zoom[z] for z in chosen], how, threshold, weight)
            extra_reported += int(extra.sum())
            hit_any = np.zeros(len(centres), bool)
            for n in truth:
                hit = np.linalg.norm(centres - n["center_mm"], axis=1) <= hit_radius(n["diameter_mm"])
                covered += bool(hit.any())
                if hit.any() and extra[hit].all():
                    new_found.append(float(scores[hit].max()))
                hit_any |= hit
            zoomed_false.append(scores[extra & ~hit_any])
            pairs.append(([{"center_mm": c.tolist(), "score": float(s)} for c, s in zip(centres, scores)], truth))
        every, large = froc(pairs, bootstrap=0), froc(pairs, bootstrap=0, min_diameter_mm=6.0)
        label = ("+".join(f"x{z:g}" for z in chosen) + f" weight {weight:g}") if chosen else "model alone"
        print(f"{label:<18}: {covered}/{every['num_nodules']} with a candidate, CPM {every['cpm']:.3f} "
              f"[{', '.join(f'{v:.3f}' for v in every['sensitivity'])}], >= 6 mm CPM {large['cpm']:.3f} "
              f"(at 1 FP/scan {large['sensitivity'][3]:.3f}), zoomed findings {extra_reported / len(cases):.1f} per scan")
        if chosen and weight == 1.0 and new_found:
            false = np.concatenate(zoomed_false)
            print(f"  nodules only a zoomed candidate hits, their score (zoomed false positives per scan scoring at "
                  f"least as high, of {len(false) / len(cases):.1f}): "
                  + ", ".join(f"{s:.2f} ({(false >= s).sum() / len(cases):.2f})" for s in sorted(new_found, reverse=True)))


def cached_cubes(cache: Path, zooms: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Classifier training data from every case of a cache: the candidates of the model's own pass and of each zoom
    (labelled by the evaluation's hit rule), the truth cubes and the tissue cubes; HU cubes, labels (1 = nodule), a
    mark of the candidates that are false positives, and the case names."""
    cubes, labels, candidate_fp = [], [], []
    names = sorted(p.name[: -len("_truth.npz")] for p in cache.glob("*_truth.npz"))
    for name in names:
        per_zoom, truth = load_case(cache, name, zooms)
        nodules = [{"center_mm": c.tolist(), "diameter_mm": float(d)} for c, d in zip(truth["centres"], truth["diameters"])]
        for arrays in per_zoom.values():
            hit = hit_diameters(arrays["centres"], nodules) > 0
            cubes.append(arrays["crops"]); labels.append(hit.astype(np.float32)); candidate_fp.append(~hit)
        cubes += [truth["crops"], truth["negative_crops"]]
        labels += [np.ones(len(truth["crops"]), np.float32), np.zeros(len(truth["negative_crops"]), np.float32)]
        candidate_fp += [np.zeros(len(truth["crops"]), bool), np.zeros(len(truth["negative_crops"]), bool)]
    return np.concatenate(cubes), np.concatenate(labels), np.concatenate(candidate_fp), names


def describe(labels: np.ndarray, candidate_fp: np.ndarray, cases: int) -> str:
    return (f"{len(labels)} cubes from {cases} cases: {int(labels.sum())} nodule, {int(candidate_fp.sum())} "
            f"false-candidate, {int((~candidate_fp & (labels == 0)).sum())} tissue")


def write_with_classifier(model_path: Path, network: torch.nn.Module, out: Path, tag: str, record: dict) -> None:
    """``model_path``'s model file with ``network`` as its classifier, version ``+tag``, ``record`` in provenance."""
    state = torch.load(model_path, map_location="cpu", weights_only=False)
    state["rescorer"]["model"] = network.state_dict()
    state["version"] = f"{state['version']}+{tag}"
    state.setdefault("provenance", {})[tag.replace("-", "_")] = record
    torch.save(state, out)
    print("wrote", out)


def finetune(model: LoadedModel, model_path: Path, cache: Path, zooms: list[float], out: Path, iterations: int,
             learning_rate: float) -> None:
    cubes, labels, candidate_fp, names = cached_cubes(cache, zooms)
    print(f"fine-tuning on {describe(labels, candidate_fp, len(names))}", flush=True)
    network = train_classifier(cubes, labels, candidate_fp, iterations, learning_rate=learning_rate,
                               network=copy.deepcopy(model.rescorer.network))
    write_with_classifier(model_path, network, out, "zoomed-classifier", {
        "cache": str(cache), "cases": names, "zooms": zooms, "iterations": iterations, "learning_rate": learning_rate,
        "cubes": int(len(labels)), "nodule_cubes": int(labels.sum()), "candidate_false_positives": int(candidate_fp.sum())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("collect", "score", "finetune"))
    parser.add_argument("paths", type=Path, nargs="+", help="collect/score: DATASET CACHE; finetune: CACHE")
    parser.add_argument("--model", default="lung-nodule")
    parser.add_argument("--zooms", default="0.6")
    parser.add_argument("--every", type=int, default=1, help="collect: every k-th case only")
    parser.add_argument("--zoomed-weights", default="1,0.5,0.3", help="score: factors on the zoomed candidates' scores")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    args = parser.parse_args()
    zooms = [float(z) for z in args.zooms.split(",")]
    path = resolve_model(args.model)
    model = load_model(path)
    if model.rescorer is None:
        parser.error("the model has no second stage")
    if args.command == "collect":
        collect(model, args.paths[0], args.paths[1], zooms, args.every)
    elif args.command == "score":
        score(model, args.paths[0], args.paths[1], zooms, [float(w) for w in args.zoomed_weights.split(",")])
    else:
        if args.out is None:
            parser.error("finetune needs --out")
        finetune(model, path, args.paths[0], zooms, args.out, args.iterations, args.learning_rate)


if __name__ == "__main__":
    main()
