"""Training batches, one per iteration number, from the cached cases.

Why index batches by iteration: batch ``i`` of rank ``r`` is drawn from a random generator seeded with
``(seed, r, i)``, so it is the same whether training ran straight through or was killed and resumed at ``i``,
and whatever the number of loader workers. That is what makes "resume gives the same weights" true.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from meddet.training.augment import DEFAULT_PATCH_CENTRE, build_augmentation, cutmix, forced_foreground, sample_patch
from meddet.training.cache import CachedCase


class IterationBatches(torch.utils.data.Dataset):
    """``dataset[i]`` is training batch ``i``: dict with ``image`` (B, C, z, y, x) and ``label`` (B, 1, z, y, x)."""

    def __init__(
        self,
        cases: list[CachedCase],
        patch_size: tuple[int, int, int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        oversample_foreground: float = 0.33,
        augmentation_probability: float = 0.2,
        cutmix_probability: float = 0.0,
        patch_centre: str = DEFAULT_PATCH_CENTRE,
        length: int = 10**9,
        texture_noise_probability: float = 0.0,
        hu_per_unit: Sequence[float | None] = (),
        spacing_zyx_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = cases
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.oversample = oversample_foreground
        self.cutmix_probability = cutmix_probability
        self.patch_centre = patch_centre
        self.augment: Callable[[dict[str, Any]], dict[str, Any]] | None = (
            build_augmentation(prob=augmentation_probability, seed=seed, texture_probability=texture_noise_probability,
                               hu_per_unit=hu_per_unit, spacing_zyx_mm=spacing_zyx_mm)
            if augmentation_probability > 0 else None
        )
        self.length = length

    def __len__(self) -> int:
        return self.length

    def _patch(self, rng: np.random.Generator, force_foreground: bool) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[int(rng.integers(len(self.cases)))]
        image, label = sample_patch(
            case.image, case.label, self.patch_size, rng,
            force_foreground=force_foreground, lesions=case.lesions, centre=self.patch_centre,
        )
        return np.asarray(image, dtype=np.float32), np.asarray(label, dtype=np.uint8)

    def __getitem__(self, iteration: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, int(iteration)])
        images, labels = [], []
        for force in forced_foreground(self.batch_size, self.oversample, rng):
            image, label = self._patch(rng, force_foreground=force)
            if self.cutmix_probability and rng.random() < self.cutmix_probability:
                other_image, other_label = self._patch(rng, force_foreground=True)
                image, label, _ = cutmix(image, label[None], other_image, other_label[None], rng)
                label = np.asarray(label)[0]
            if self.augment is not None:
                self.augment.set_random_state(seed=int(rng.integers(2**31)))
                out = self.augment({"image": torch.as_tensor(image), "label": torch.as_tensor(label[None])})
                image, label = np.asarray(out["image"]), np.asarray(out["label"])[0]
            images.append(torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32))
            labels.append(torch.as_tensor(np.ascontiguousarray(label), dtype=torch.long)[None])
        return {"image": torch.stack(images), "label": torch.stack(labels)}
