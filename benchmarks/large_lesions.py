"""How are the large lesions of a prediction folder found? Per truth lesion at least --min-diameter wide.

Usage:  python benchmarks/large_lesions.py PRED TRUTH [--min-diameter 35]
        (PRED: `meddet predict` output for a folder of cases; TRUTH: a dataset with lesions/<case>.json)

Why: the phantom spec stops at 35 mm, so the held-out sets hold no mass; `meddet phantom --large-masses 1` cases do
(35-70 mm, mostly against the chest wall), and real chest CTs do. For each such lesion prints its diameter, type and
location, whether a reported lesion hits it (centre within its radius: the rule of `meddet evaluate`), whether one
finds it whole (centred within 7 mm of it and at least 0.7 times its diameter, as `benchmarks/mass_probe.py` counts),
and the best hit's diameter, score and whether the coarse mass pass reported it; then the totals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

WHOLE_WITHIN_MM, WHOLE_SHARE = 7.0, 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--min-diameter", type=float, default=35.0)
    args = parser.parse_args()
    found = whole = total = 0
    print(f"{'case':<14} {'truth mm':>8} {'type':<11} {'location':<13} {'found':>5} {'whole':>5}  best hit: distance, diameter, score, mass pass")
    for truth_file in sorted((args.truth / "lesions").glob("*.json")):
        case = truth_file.stem
        report = args.pred / case / "lesions.json"
        predicted = json.loads(report.read_text())["lesions"] if report.is_file() else []
        for lesion in json.loads(truth_file.read_text())["lesions"]:
            diameter = float(lesion["diameter_mm"])
            if diameter < args.min_diameter:
                continue
            centre = np.array(lesion["center_mm"], dtype=float)
            hits = [(float(np.linalg.norm(np.array(p["center_mm"]) - centre)), p) for p in predicted]
            hits = sorted([(d, p) for d, p in hits if d <= diameter / 2], key=lambda h: -h[1]["score"])
            is_whole = any(d <= WHOLE_WITHIN_MM and p["diameter_mm"] >= WHOLE_SHARE * diameter for d, p in hits)
            total += 1
            found += bool(hits)
            whole += is_whole
            best = (f"{hits[0][0]:.1f} mm, {hits[0][1]['diameter_mm']:.1f} mm, {hits[0][1]['score']:.2f}, "
                    f"{bool(hits[0][1].get('mass_pass'))}") if hits else "-"
            print(f"{case:<14} {diameter:>8.1f} {lesion.get('type', '?'):<11} {lesion.get('location', '?'):<13} "
                  f"{str(bool(hits)):>5} {str(is_whole):>5}  {best}")
    print(f"lesions >= {args.min_diameter:g} mm: {total}; found {found}, found whole {whole}")


if __name__ == "__main__":
    main()
