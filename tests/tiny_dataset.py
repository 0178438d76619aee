"""A tiny MSD-layout dataset (spheres in a box) for training tests: seconds, not minutes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meddet.io import write_volume
from meddet.volume import Volume


def make_tiny_dataset(root: Path, n: int = 4, channels: int = 1, shape=(24, 40, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for k in range(n):
        image = rng.normal(-850, 25, shape)
        label = np.zeros(shape, np.uint8)
        for _ in range(2):
            c = rng.uniform([6, 10, 10], [shape[0] - 6, shape[1] - 10, shape[2] - 10])
            r = rng.uniform(2.5, 4.5)
            ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r**2
            image[ball] = rng.normal(30, 25, int(ball.sum()))
            label[ball] = 1
        geometry = dict(spacing=(1.5, 1.5, 2.0), origin=(0.0, 0.0, 0.0))
        write_volume(Volume(image.astype(np.int16), **geometry), root / "imagesTr" / f"case{k}_0000.nii.gz")
        if channels == 2:
            pet = np.where(label > 0, 5.0, 1.0) + rng.normal(0, 0.3, shape)
            write_volume(Volume(pet.astype(np.float32), **geometry), root / "imagesTr" / f"case{k}_0001.nii.gz")
        write_volume(Volume(label, **geometry), root / "labelsTr" / f"case{k}.nii.gz")
    names = {"0": "CT"} if channels == 1 else {"0": "CT", "1": "PET"}
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny", "channel_names": names, "labels": {"background": 0, "nodule": 1}, "file_ending": ".nii.gz",
        "numTraining": n,
    }))
    return root
