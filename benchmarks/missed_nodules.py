"""Which nodules a model misses, by how visible they are: size, contrast against the lung around them, location.

Usage:
    python benchmarks/missed_nodules.py PRED TRUTH [PRED TRUTH ...]   # meddet predict outputs and phantom folders

Why: the FROC curve says how many nodules are found, not which. A nodule's visibility is mostly its size and its
contrast: a 5 mm ground-glass nodule 150 HU above the lung is a faint smudge in 30 HU of noise and ±30 HU of lung
texture, a 5 mm solid one 800 HU above it is not; a small nodule touching a vessel looks like the vessel's branch
point. This script measures, per truth nodule of a phantom set (``lesions/<case>.json``, ``instances/<case>.nii.gz``
and ``imagesTr/<case>_0000.nii.gz`` as ``meddet phantom`` writes them):

- contrast: the nodule's mean HU (its instance voxels in the stored image, blur and noise included) minus the
  median HU of the aerated lung (under -500 HU) 2–6 mm outside it (other nodules, vessels and chest wall left out);
- found: whether any reported lesion hits it under the evaluation's LUNA16 rule (``meddet.evaluation.froc``), at
  any score — the ceiling of the FROC curve, what no re-ranking can add to.

Prints every missed nodule, then found / total by size × contrast and by location for nodules under 6 mm.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

from meddet.evaluation.froc import SMALL_NODULE_MM, match_case
from meddet.io import read_volume

AERATED_BELOW_HU = -500.0  # lung voxels of the ring: vessels, fissures and the chest wall beside a nodule are above it
SHELL_MM = (2.0, 6.0)  # the lung ring a nodule is compared with: past the blur of its edge, before the next structure
CONTRAST_BINS = ((-np.inf, 300.0, "< 300 HU"), (300.0, 600.0, "300-600 HU"), (600.0, np.inf, ">= 600 HU"))


def nodule_contrast(image: np.ndarray, instances: np.ndarray, nodule_id: int, spacing_zyx) -> float:
    """Mean HU inside the nodule minus the median HU of the aerated lung 2–6 mm outside it (NaN when its label is
    empty; the whole ring when none of it is aerated)."""
    inside = instances == nodule_id
    if not inside.any():
        return float("nan")
    margin = [int(np.ceil(SHELL_MM[1] / s)) + 1 for s in spacing_zyx]
    box = tuple(slice(max(int(i.min()) - m, 0), int(i.max()) + m + 1) for i, m in zip(np.nonzero(inside), margin))
    distance = ndimage.distance_transform_edt(~inside[box], sampling=spacing_zyx)
    ring = (distance > SHELL_MM[0]) & (distance < SHELL_MM[1]) & (instances[box] == 0)
    lung = ring & (image[box] < AERATED_BELOW_HU)  # the chest wall of a juxtapleural nodule is not its background
    return float(image[box][inside[box]].mean() - np.median(image[box][lung if lung.any() else ring]))


def case_rows(pred_dir: Path, truth_dir: Path, case: str) -> list[dict]:
    """One row per truth nodule of ``case``: its size, type, location, contrast and whether it was found."""
    truth = json.loads((truth_dir / "lesions" / f"{case}.json").read_text())
    predictions = json.loads((pred_dir / case / "lesions.json").read_text())["lesions"]
    matched = match_case(predictions, truth["lesions"])
    found = set(int(h) for h in matched.hit_index if h >= 0)
    image = read_volume(truth_dir / "imagesTr" / f"{case}_0000.nii.gz")
    instances = np.asarray(read_volume(truth_dir / "instances" / f"{case}.nii.gz").array)
    pixels = np.asarray(image.array, dtype=np.float32)
    rows = []
    for index, nodule in enumerate(truth["lesions"]):
        rows.append({
            "case": f"{truth_dir.name}/{case}", "diameter_mm": float(nodule["diameter_mm"]), "type": nodule.get("type", "?"),
            "location": nodule.get("location", "?"), "slice_mm": float(image.spacing_zyx[0]),
            "contrast_hu": nodule_contrast(pixels, instances, int(nodule["id"]), image.spacing_zyx),
            "found": index in found,
        })
    return rows


def _tally(rows: list[dict], key) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        counts[key(row)][0] += row["found"]
        counts[key(row)][1] += 1
    return counts


def _contrast_bin(contrast: float) -> str:
    return next(name for low, high, name in CONTRAST_BINS if low <= contrast < high)


def report(rows: list[dict]) -> None:
    """Print the misses, then found / total by size × contrast and by location under 6 mm."""
    missed = [r for r in rows if not r["found"]]
    print(f"{len(rows) - len(missed)} of {len(rows)} nodules found at any score; missed:")
    width = max(len(r["case"]) for r in missed) if missed else 4
    print(f"{'case':<{width}}  diameter  type          location       slices  contrast")
    for r in sorted(missed, key=lambda r: r["contrast_hu"]):
        print(f"{r['case']:<{width}} {r['diameter_mm']:6.1f} mm  {r['type']:<13} {r['location']:<14} "
              f"{r['slice_mm']:4.2f} mm {r['contrast_hu']:6.0f} HU")
    size = lambda r: "< 6 mm" if r["diameter_mm"] < SMALL_NODULE_MM else ">= 6 mm"  # noqa: E731
    by_cell = _tally(rows, lambda r: (size(r), _contrast_bin(r["contrast_hu"])))
    print("\nfound / total by size and contrast (mean HU inside minus the lung 2-6 mm around)")
    print(f"{'':10}" + "".join(f"{name:>14}" for _, _, name in CONTRAST_BINS))
    for size_name in ("< 6 mm", ">= 6 mm"):
        cells = [by_cell.get((size_name, name), [0, 0]) for _, _, name in CONTRAST_BINS]
        print(f"{size_name:10}" + "".join(f"{f'{f}/{t}':>14}" for f, t in cells))
    print("\nnodules under 6 mm, found / total by location")
    for location, (f, t) in sorted(_tally([r for r in rows if size(r) == "< 6 mm"], lambda r: r["location"]).items()):
        print(f"  {location:<14} {f}/{t}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", type=Path, help="PRED TRUTH, repeated")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give PRED and TRUTH folders in pairs")
    rows: list[dict] = []
    for pred_dir, truth_dir in zip(args.pairs[::2], args.pairs[1::2]):
        for path in sorted((truth_dir / "lesions").glob("*.json")):
            rows += case_rows(pred_dir, truth_dir, path.stem)
    report(rows)


if __name__ == "__main__":
    main()
