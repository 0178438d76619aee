"""`make demo`: generate synthetic chest CTs as DICOM and show what meddet reads back.

This is the first half of the product's path (DICOM in, geometry checked). Detection and evaluation join it when
`meddet predict` and `meddet evaluate` land.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path("demo-output")


def run(*args: str) -> None:
    print("$ meddet " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "meddet", *args], check=True)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    run("phantom", "--out", str(OUT / "phantoms"), "--n", "2", "--seed", "2026")
    for case in sorted((OUT / "phantoms" / "dicom").iterdir()):
        run("info", str(case))
    print(f"\nPhantom DICOM series, NIfTI images, labels and lesion lists are in {OUT / 'phantoms'}")


if __name__ == "__main__":
    main()
