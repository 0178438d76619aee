"""Are masses larger than the training data's found? A round soft-tissue mass pasted into phantoms, then predicted.

Usage:  python benchmarks/mass_probe.py DATASET OUT [--cases phantom_0000,phantom_0002] [--diameters 25,30,40,50]
                                        [--model lung-nodule|PATH]

Why: the phantom spec's lesions stop at 35 mm, and so does the bundled model's training data, but lung cancers in
real chest CT are often larger, and a hand-drawn tumour is what a clinic's test set holds. For each case the mass is
centred at the deepest point of the lung (`meddet.preprocess.crop.lung_mask`, largest distance to anything that is not lung, at least 25 mm from the
scan's first and last slice), given 35 ± 15 HU, limited to the lung it occupies (dilated by two voxels: it fills the
lung up to the pleura, as a large tumour does), and softened by the scanner's blur; everything else is the scan as
generated. Each image goes through `meddet predict`'s path; a mass is found if a reported lesion's centre lies within
its radius (the LUNA16 rule of `meddet evaluate`), and found whole if one is centred within 7 mm of it and at least
0.7 times its diameter. Prints, per case and diameter: the mass's equivalent-sphere diameter, whether it was found
(whole), and the lesions near it (distance, diameter, final / first-stage / classifier score).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from meddet.inference.models import resolve_model
from meddet.inference.pipeline import predict_path
from meddet.inference.predictor import load_model
from meddet.io import read_volume, write_volume
from meddet.preprocess.crop import lung_mask
from meddet.volume import Volume

MASS_HU, MASS_SD_HU = 35.0, 15.0
WHOLE_WITHIN_MM, WHOLE_SHARE = 7.0, 0.7  # found whole: a lesion centred within 7 mm, at least 0.7 x the mass's diameter
END_MARGIN_MM = 25.0


def deepest_lung_point(lung: np.ndarray, spacing_zyx: tuple[float, ...]) -> tuple[int, int, int]:
    """The lung voxel farthest from non-lung, the scan's ends counting as non-lung, away from the ends."""
    depth = ndimage.distance_transform_edt(np.pad(lung, ((1, 1), (0, 0), (0, 0))), sampling=spacing_zyx)[1:-1]
    margin = int(np.ceil(END_MARGIN_MM / spacing_zyx[0]))
    depth[:margin], depth[-margin:] = 0, 0
    return tuple(int(i) for i in np.unravel_index(np.argmax(depth), depth.shape))


def with_mass(scan: Volume, lung: np.ndarray, centre: tuple[int, int, int], diameter_mm: float,
              rng: np.random.Generator) -> tuple[Volume, float]:
    """The scan with the mass pasted in, and the mass's equivalent-sphere diameter (mm)."""
    array = np.asarray(scan.array).astype(np.float32)
    sz = scan.spacing_zyx
    zz, yy, xx = np.ogrid[: array.shape[0], : array.shape[1], : array.shape[2]]
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre, sz)))
    radius = diameter_mm / 2
    inside = (distance <= radius) & ndimage.binary_dilation(lung, iterations=2)
    pasted = np.where(inside, MASS_HU + rng.normal(0.0, MASS_SD_HU, array.shape), array).astype(np.float32)
    blurred = ndimage.gaussian_filter(pasted, (0.5 / sz[0], 0.7 / sz[1], 0.7 / sz[2]))
    out = np.where(distance < radius + 4, blurred, array)
    equivalent = float((inside.sum() * np.prod(sz) * 6 / np.pi) ** (1 / 3))
    return scan.with_array(np.round(out).astype(np.int16)), equivalent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a phantom dataset (imagesTr/)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", default="phantom_0000,phantom_0002,phantom_0005,phantom_0007,phantom_0010,phantom_0013")
    parser.add_argument("--diameters", default="25,30,40,50")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    model = load_model(resolve_model(args.model))
    rng = np.random.default_rng(0)
    masses = {}
    for case in args.cases.split(","):
        scan = read_volume(args.dataset / "imagesTr" / f"{case}_0000.nii.gz")
        lung = lung_mask(scan)
        centre = deepest_lung_point(lung, scan.spacing_zyx)
        for diameter in (float(d) for d in args.diameters.split(",")):
            name = f"{case}_{diameter:g}mm"
            image, equivalent = with_mass(scan, lung, centre, diameter, rng)
            write_volume(image, args.out / "images" / f"{name}.nii.gz")
            masses[name] = (scan.index_zyx_to_lps(np.array([centre], float))[0], diameter / 2, equivalent)
    predict_path(model, args.out / "images", args.out / "pred")
    print(f"{model.name} {model.version}")
    print(f"{'case':<24} {'mass mm':>7} {'found':>6} {'whole':>6}  lesions within radius + 10 mm: distance, diameter, score (first / classifier)")
    found_by_size: dict[str, list[bool]] = {}
    whole_by_size: dict[str, list[bool]] = {}
    for name, (centre_lps, radius, equivalent) in masses.items():
        report = args.out / "pred" / name / "lesions.json"
        lesions = json.loads(report.read_text())["lesions"] if report.is_file() else []
        near = [(float(np.linalg.norm(np.array(l["center_mm"]) - centre_lps)), l) for l in lesions]
        near = [(d, l) for d, l in near if d < radius + 10]
        found = any(d <= radius for d, _ in near)
        whole = any(d <= WHOLE_WITHIN_MM and l["diameter_mm"] >= WHOLE_SHARE * equivalent for d, l in near)
        found_by_size.setdefault(name.rsplit("_", 1)[1], []).append(found)
        whole_by_size.setdefault(name.rsplit("_", 1)[1], []).append(whole)
        shown = ", ".join(f"{d:.1f} mm: {l['diameter_mm']:.1f} mm, {l['score']:.2f} ({l.get('candidate_score', l['score']):.2f}"
                          f" / {l.get('classifier_score', float('nan')):.2f})" for d, l in near)
        print(f"{name:<24} {equivalent:>7.1f} {str(found):>6} {str(whole):>6}  {shown}")
    print("found: " + ", ".join(f"{size} {sum(v)}/{len(v)}" for size, v in found_by_size.items()))
    print("found whole: " + ", ".join(f"{size} {sum(v)}/{len(v)}" for size, v in whole_by_size.items()))


if __name__ == "__main__":
    main()
