"""`make demo`: synthetic chest CTs as DICOM → `meddet predict` with the bundled model → `meddet evaluate`.

What a new user sees on a fresh machine, offline: three full-size (512×512) phantom CTs with known nodules are
written as DICOM series, the bundled lung-nodule model finds lesions in them (lesions.json, mask, DICOM SEG,
overlay per case), and the evaluation prints sensitivity, false positives, FROC/CPM and latency.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("demo-output")
SEED = 90210  # never used for training data (the bundled model's card lists its seeds)


def meddet(*args: str) -> None:
    print("$ meddet " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "meddet", *args], check=True)


def main() -> None:
    start = time.perf_counter()
    if OUT.exists():
        shutil.rmtree(OUT)
    meddet("phantom", "--out", str(OUT / "phantoms"), "--n", "3", "--seed", str(SEED))
    meddet("predict", str(OUT / "phantoms" / "dicom"), "-o", str(OUT / "predictions"))
    meddet("evaluate", "--pred", str(OUT / "predictions"), "--truth", str(OUT / "phantoms"), "--out", str(OUT / "report"))
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s.")
    print(f"  report:        {OUT / 'report' / 'report.html'}")
    for case in sorted((OUT / "predictions").iterdir()):
        if case.is_dir():
            files = [str(case / n) for n in ("lesions.json", "seg.dcm", "overlay.png") if (case / n).exists()]
            print(f"  {case.name}: {', '.join(files)}")


if __name__ == "__main__":
    main()
