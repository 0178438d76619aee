"""Would a classic blob detector, as a second source of candidates for the second stage, raise the FROC?

Usage:
    meddet phantom --out /tmp/blob-dev --n 40 --seed 555000       # fresh full-size phantoms (not the held-out seeds)
    python benchmarks/blob_candidates.py /tmp/blob-dev CACHE [--model lung-nodule] [--blob-candidates 50,100,150,300]

Why this experiment: the bundled two-stage model's FROC is flat from about 1 FP/scan at the share of nodules its
segmentation network gives a candidate at all (3-6 mm and faint ground-glass nodules get next to no probability on
its 1.3 x 1.3 x 2.4 mm grid), and the classifier only re-ranks candidates. Classic lung CAD proposes such spots with
a blob filter at full resolution and leaves the decision to a classifier. Here: scale-normalised Laplacian of
Gaussian (SimpleITK, recursive) at 1 mm isotropic over the lung box, sigma 1, 1.5, 2, 3 mm, HU clipped to
[-1000, 100]; local maxima (5 mm window) inside the lungs (grown 3 mm) with a response over 30; ranked by Hessian
blobness (smallest over largest eigenvalue magnitude, 0 unless all three are negative), because ranking by filter
strength puts a faint ground-glass nodule behind thousands of vessel cross-sections. The K most blob-shaped that are
not inside or within 8 mm of a first-stage candidate join the candidates with the first-stage probability at their
centre as first score; every candidate is scored as `meddet predict` scores the model's (its classifier, its
combination, its final threshold).

Per case the sliding window, the blob filter and the classifier run once (cached in CACHE/<case>.npz); then per K
it prints nodules with a candidate, CPM with its FROC points, the >= 6 mm CPM, blob findings reported per scan,
and the blob filter's median time. The bundled model's card quotes a run (section Limits: it did not pay).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from meddet.detection.crops import crops_around
from meddet.detection.lesions import extract_lesions
from meddet.detection.rescorer import MAX_CANDIDATES, classify, combine
from meddet.evaluation.froc import froc, hit_radius
from meddet.inference.models import resolve_model
from meddet.inference.predictor import load_model, predict_probability
from meddet.io import read_volume
from meddet.preprocess.crop import crop, lung_bounding_box, lung_mask
from meddet.volume import Volume

SIGMAS_MM = (1.0, 1.5, 2.0, 3.0)
HU_RANGE = (-1000.0, 100.0)
MIN_RESPONSE = 30.0
MAX_PEAKS = 5000
DEDUPE_MM = 8.0


def isotropic_lungs(volume: Volume) -> Volume | None:
    """The lung box of ``volume`` at 1 mm isotropic (linear interpolation, the scan's own axes)."""
    box = lung_bounding_box(volume, margin_mm=5.0)
    if box is None:
        return None
    image = sitk.Cast(crop(volume, box).to_sitk(), sitk.sitkFloat32)
    size = [max(1, int(round(n * s))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [1.0] * 3,
                          image.GetDirection(), HU_RANGE[0], sitk.sitkFloat32)
    return Volume.from_sitk(image)


def blobness(smoothed: np.ndarray, points: np.ndarray, step: int) -> np.ndarray:
    """Smallest over largest Hessian eigenvalue magnitude at ``points`` (central differences), 0 unless all < 0."""
    p = np.clip(points, step, np.array(smoothed.shape) - 1 - step)
    hessian = np.zeros((len(p), 3, 3))
    centre = smoothed[tuple(p.T)]
    unit = np.eye(3, dtype=int) * step
    for a in range(3):
        hessian[:, a, a] = (smoothed[tuple((p + unit[a]).T)] - 2 * centre + smoothed[tuple((p - unit[a]).T)]) / step**2
        for b in range(a + 1, 3):
            cross = (smoothed[tuple((p + unit[a] + unit[b]).T)] - smoothed[tuple((p + unit[a] - unit[b]).T)]
                     - smoothed[tuple((p - unit[a] + unit[b]).T)] + smoothed[tuple((p - unit[a] - unit[b]).T)])
            hessian[:, a, b] = hessian[:, b, a] = cross / (4.0 * step * step)
    eigen = np.linalg.eigvalsh(hessian)
    return np.where(eigen[:, 2] < 0, eigen[:, 2] / np.minimum(eigen[:, 0], -1e-6), 0.0)


def find_blobs(volume: Volume, limit: int) -> np.ndarray:
    """LPS centres of up to ``limit`` blob candidates in the lungs, the most blob-shaped first."""
    iso = isotropic_lungs(volume)
    if iso is None:
        return np.zeros((0, 3))
    inside = ndimage.binary_dilation(lung_mask(iso), iterations=3)
    image = sitk.Clamp(iso.to_sitk(), sitk.sitkFloat32, *HU_RANGE)
    best = np.full(iso.shape, -np.inf, dtype=np.float32)
    scale = np.zeros(iso.shape, dtype=np.int8)
    smoothed = []
    for k, sigma in enumerate(SIGMAS_MM):
        response = -sitk.GetArrayFromImage(sitk.LaplacianRecursiveGaussian(image, sigma, True))
        stronger = response > best
        best[stronger], scale[stronger] = response[stronger], k
        smoothed.append(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma)))
    peaks = (best == ndimage.maximum_filter(best, size=5)) & inside & (best > MIN_RESPONSE)
    index = np.argwhere(peaks)
    index = index[np.argsort(-best[peaks], kind="stable")[:MAX_PEAKS]]
    which = scale[tuple(index.T)]
    shape = np.zeros(len(index))
    for k, sigma in enumerate(SIGMAS_MM):
        chosen = np.flatnonzero(which == k)
        if len(chosen):
            shape[chosen] = blobness(smoothed[k], index[chosen], max(1, int(round(sigma))))
    order = np.argsort(-shape, kind="stable")[:limit]
    return iso.index_zyx_to_lps(index[order[shape[order] > 0]].astype(float))


def collect(model, image: Path, limit: int, cache: Path) -> dict[str, np.ndarray]:
    """First-stage candidates, blob candidates and both stages' scores of one scan (cached)."""
    if cache.is_file():
        with np.load(cache) as data:
            return dict(data)
    volume = read_volume(image)
    probability, _ = predict_probability(model, [volume])
    lesions = extract_lesions(probability, model.rescorer.candidate_threshold, 0.0)[0][:MAX_CANDIDATES]
    centres = np.array([lesion["center_mm"] for lesion in lesions], dtype=float).reshape(-1, 3)
    start = time.perf_counter()
    blobs = find_blobs(volume, limit)
    seconds = time.perf_counter() - start
    index = np.round(probability.lps_to_index_zyx(blobs)).astype(int).reshape(-1, 3)
    index = np.clip(index, 0, np.array(probability.shape) - 1)
    arrays = {"centres": centres, "first": np.array([lesion["score"] for lesion in lesions], dtype=float),
              "second": classify(model.rescorer.network, crops_around(volume, centres)),
              "blob_centres": blobs, "blob_first": np.asarray(probability.array)[tuple(index.T)].astype(float),
              "blob_second": classify(model.rescorer.network, crops_around(volume, blobs)),
              "blob_seconds": np.array(seconds)}
    np.savez(cache, **arrays)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("cache", type=Path)
    parser.add_argument("--model", default="lung-nodule")
    parser.add_argument("--blob-candidates", default="50,100,150,300")
    args = parser.parse_args()
    counts = [0] + [int(k) for k in args.blob_candidates.split(",")]
    model = load_model(resolve_model(args.model))
    if model.rescorer is None:
        parser.error("the model has no second stage")
    args.cache.mkdir(parents=True, exist_ok=True)
    cases = []
    for image in sorted((args.dataset / "imagesTr").glob("*_0000.nii.gz")):
        name = image.name[: -len("_0000.nii.gz")]
        truth = json.loads((args.dataset / "lesions" / f"{name}.json").read_text())["lesions"]
        cases.append((collect(model, image, max(counts), args.cache / f"{name}.npz"), truth))
        print(f"{name}: {len(cases[-1][0]['centres'])} first-stage, {len(cases[-1][0]['blob_centres'])} blob candidates", flush=True)
    how, threshold = model.rescorer.combination, model.postprocessing["threshold"]
    print(f"{len(cases)} scans, {sum(len(t) for _, t in cases)} nodules; blob filter median "
          f"{np.median([float(c['blob_seconds']) for c, _ in cases]):.1f} s per scan; scores: {how}, threshold {threshold:g}")
    for k in counts:
        pairs, covered, blob_reported = [], 0, 0
        for arrays, truth in cases:
            blobs, blob_first, blob_second = (arrays[key][:k] for key in ("blob_centres", "blob_first", "blob_second"))
            new = blob_first < model.rescorer.candidate_threshold
            if len(arrays["centres"]) and len(blobs):
                new &= np.linalg.norm(blobs[:, None] - arrays["centres"][None], axis=2).min(axis=1) > DEDUPE_MM
            centres = np.concatenate([arrays["centres"], blobs[new].reshape(-1, 3)])
            final = combine(np.concatenate([arrays["first"], blob_first[new]]),
                            np.concatenate([arrays["second"], blob_second[new]]), how)
            blob_reported += int((final[len(arrays["centres"]):] >= threshold).sum())
            for nodule in truth:
                if len(centres) and np.linalg.norm(centres - nodule["center_mm"], axis=1).min() <= hit_radius(nodule["diameter_mm"]):
                    covered += 1
            pairs.append(([{"center_mm": c.tolist(), "score": float(s)} for c, s in zip(centres, final) if s >= threshold],
                          truth))
        every, large = froc(pairs, bootstrap=0), froc(pairs, bootstrap=0, min_diameter_mm=6.0)
        print(f"{k:>4} blob candidates: {covered}/{every['num_nodules']} nodules with a candidate, CPM {every['cpm']:.3f} "
              f"[{', '.join(f'{v:.3f}' for v in every['sensitivity'])}], >= 6 mm CPM {large['cpm']:.3f}, "
              f"blob findings reported {blob_reported / len(cases):.1f} per scan")


if __name__ == "__main__":
    main()
