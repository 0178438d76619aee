"""False positives of the lung-nodule model on a real CT without nodules (the InVesalius head CT).

Usage:  python benchmarks/real_head_ct.py [--model PATH]

Fetches the real head CT with ../shared/real-data/get.sh (Debian's invesalius-examples), builds its Volume from
the raw int16 matrix and its plist (coronal acquisition: axis 0 runs front to back in 1.5 mm steps), writes it as a
DICOM series with that true coronal orientation, runs the full `meddet predict` path on it and prints what was found.
Real noise, real HU, real anatomy and a coronal geometry: a lung-nodule model should report (almost) nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from meddet.inference.models import resolve_model
from meddet.inference.pipeline import predict_scan
from meddet.inference.predictor import load_model
from meddet.io.dicom_writer import SeriesIdentity, write_dicom_series
from meddet.volume import Volume

GET = Path(__file__).resolve().parents[1].parent / "shared" / "real-data" / "get.sh"


def head_ct_volume(folder: Path) -> Volume:
    array = np.fromfile(folder / "matrix.dat", dtype="<i2").reshape(108, 256, 256)
    # coronal: columns to the patient's left, rows top→bottom (towards the feet), slices front→back
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    return Volume(array, spacing=(0.957, 0.957, 1.5), origin=(-122.5, -81.0, 122.5), direction=direction, modality="CT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    cache = Path(subprocess.run(["bash", str(GET)], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    volume = head_ct_volume(cache / "head_ct")
    model = load_model(resolve_model(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(volume, Path(tmp) / "dicom", SeriesIdentity(series_description="InVesalius head CT (coronal)"))
        result = predict_scan(model, Path(tmp) / "dicom", Path(tmp) / "out")
    print(f"real head CT: {volume.shape[::-1]} voxels, HU {int(volume.array.min())}…{int(volume.array.max())}, "
          f"orientation {volume.orientation_code()}")
    print(f"false positives (no nodules in this scan): {len(result['lesions'])}")
    for lesion in result["lesions"][:10]:
        print(f"  score {lesion['score']:.2f}  diameter {lesion['diameter_mm']:.1f} mm  at {lesion['center_mm']}")
    print(json.dumps(result["timing_s"]))


if __name__ == "__main__":
    main()
