"""Segmentation losses by name, for logits (B, C, D, H, W) against integer label maps (B, 1, D, H, W).

All losses apply softmax to the logits and one-hot encode the labels themselves, so the model returns raw logits
and the data loader returns the label map as stored; ``C`` must be at least 2 (background + lesion).

Defaults, and why (lung nodules are tiny: a 5 mm nodule is ~0.01 % of a 96**3 patch):

- Dice without the background class (``include_background=False``). Background Dice is ~1 on every patch; kept, it
  halves the weight of the lesion term and adds only easy-voxel gradient. nnU-Net does the same.
- Batch Dice (``batch=True``): intersection and sums are pooled over the whole batch before the ratio. About two
  patches in three hold no lesion (foreground oversampling forces only one in three); per-sample Dice on such a
  patch is ~0 if the model predicts nothing and ~1 after a single false-positive voxel, a noisy all-or-nothing
  signal. Pooled, the denominator is the batch's lesion volume and false positives are penalised in proportion.
- A voxel-wise term (cross-entropy or focal) over *all* classes, background included: it keeps the background
  probabilities calibrated and gives gradient on lesion-free batches, where Dice without background is flat.
- Focal ``gamma=2`` (Lin et al.): down-weights the millions of easy background voxels by (1 - p_t)**2.
- ``dice_ce_blob`` adds a per-lesion Dice term (blob loss, Kofler et al., IPMI 2023): the batch Dice and the
  cross-entropy let a network drop a 3-6 mm nodule of a few voxels at almost no cost when a larger lesion shares the
  batch (docs/models/lung-nodule.md, "Limits"); averaged over lesions, a missed small nodule costs as much as a
  missed large one.
- ``dice_ce_lesion_ce`` adds a per-lesion cross-entropy instead: a nodule the network is sure is background gets no
  gradient from any Dice term (the softmax is flat there), so neither the batch Dice nor the blob term can revive it;
  each lesion's mean ``-log P(lesion)`` can (:class:`LesionCELoss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cc3d
import numpy as np
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, FocalLoss
from torch import nn

from meddet.errors import MeddetInputError

DICE_DEFAULTS: dict[str, Any] = {
    "include_background": False,
    "to_onehot_y": True,
    "softmax": True,
    "batch": True,
    "smooth_nr": 1e-5,
    "smooth_dr": 1e-5,
}
FOCAL_KEYS = ("gamma", "alpha", "weight")


class VoxelFocalLoss(nn.Module):
    """Softmax focal loss per voxel (summed over classes), averaged over voxels: equals cross-entropy at gamma=0.

    Why not MONAI ``FocalLoss(reduction="mean")`` directly: that mean also runs over the class axis, dividing the
    loss by C, so its scale would not match the cross-entropy it replaces in dice+focal. Background is always
    included: with ``include_background=False`` MONAI drops the background logit *before* the softmax, and with
    two classes the softmax of the single remaining logit is 1 everywhere, so the loss would be identically 0.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, weight: Any = None) -> None:
        super().__init__()
        self.focal = FocalLoss(
            include_background=True,
            to_onehot_y=True,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            reduction="none",
            use_softmax=True,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, target).sum(dim=1).mean()


class DiceFocalLoss(nn.Module):
    """``lambda_dice * Dice + lambda_focal * VoxelFocalLoss``.

    Why not MONAI ``DiceFocalLoss``: in MONAI 1.6 its focal term is built without ``use_softmax``, so it applies a
    per-channel sigmoid to the logits even when ``softmax=True`` (inconsistent with the Dice term), and it drops
    the background channel from the focal term too whenever Dice excludes it.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0, **kw: Any) -> None:
        super().__init__()
        focal_kw = {k: kw.pop(k) for k in FOCAL_KEYS if k in kw}
        self.dice = DiceLoss(**{**DICE_DEFAULTS, **kw})
        self.focal = VoxelFocalLoss(**focal_kw)
        self.lambda_dice = lambda_dice
        self.lambda_focal = lambda_focal

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_focal * self.focal(logits, target)


def lesion_components(target: torch.Tensor) -> list[tuple[int, torch.Tensor, int]]:
    """Per batch sample with a lesion: (sample, component id of every voxel (D, H, W), count); 26-connected
    components of the label, found on the CPU with cc3d (~1 ms per patch)."""
    labels = target[:, 0].detach().cpu().numpy() > 0
    found = []
    for b in range(labels.shape[0]):
        components, count = cc3d.connected_components(np.ascontiguousarray(labels[b]), connectivity=26, return_N=True)
        if count:
            found.append((b, torch.from_numpy(components.astype(np.int64)).to(target.device), int(count)))
    return found


class BlobDiceLoss(nn.Module):
    """Mean over the batch's lesions of each lesion's soft Dice loss, the other lesions' voxels masked out (blob
    loss, Kofler et al., IPMI 2023).

    Lesion ``k``'s term sees its own voxels and the background: a false positive anywhere in the patch lowers every
    lesion's Dice, but another true lesion predicted correctly does not count against it. A batch without lesions
    gives 0 (the global terms still act there).
    """

    def __init__(self, smooth: float = 1e-5) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lesion = torch.softmax(logits.float(), dim=1)[:, 1:].sum(dim=1)  # P(any lesion class), (B, D, H, W)
        terms = []
        for b, components, count in lesion_components(target):
            p_background = (lesion[b] * (components == 0)).sum()
            for k in range(1, count + 1):
                own = components == k
                p_own = (lesion[b] * own).sum()
                dice = (2 * p_own + self.smooth) / (p_own + p_background + own.sum() + self.smooth)
                terms.append(1 - dice)
        return torch.stack(terms).mean() if terms else lesion.sum() * 0.0


class LesionCELoss(nn.Module):
    """Mean over the batch's lesions of each lesion's mean cross-entropy, ``-log P(lesion)`` over its own voxels.

    Why, beside the Dice terms: a nodule the network is sure is background (P ~ 1e-7, a small juxtavascular nodule
    taken for a vessel) gets no gradient from any Dice term, pooled or per lesion, because Dice acts on
    probabilities and the softmax is flat there; the plain cross-entropy does act, but averaged over every voxel of
    the batch its few voxels weigh ~1e-5. Here each lesion's term has a gradient of ~1 in all on its logits however
    sure the network is, and every lesion counts alike. It only pulls lesion voxels up; the global Dice + CE keep
    the background down (at weight 1 they do not: docs/models/lung-nodule.md, "Limits"). A batch without lesions
    gives 0.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits.float(), dim=1)
        log_lesion = torch.logsumexp(log_p[:, 1:], dim=1)  # log P(any lesion class), (B, D, H, W)
        terms = []
        for b, components, count in lesion_components(target):
            ids = components.flatten()
            inside = ids > 0
            losses = -log_lesion[b].flatten()[inside]
            sums = torch.zeros(count + 1, device=logits.device).index_add(0, ids[inside], losses)
            terms.append(sums[1:] / torch.bincount(ids[inside], minlength=count + 1)[1:].to(sums.dtype))
        return torch.cat(terms).mean() if terms else log_lesion.sum() * 0.0


class DiceCEWithLesionTerm(nn.Module):
    """``dice_ce`` plus ``weight`` times a per-lesion term: the global terms keep the outlines and the background
    calibrated, the per-lesion term makes every nodule count alike."""

    def __init__(self, lesion_term: nn.Module, weight: float, **kw: Any) -> None:
        super().__init__()
        self.global_loss = _dice_ce(**kw)
        self.lesion_term = lesion_term
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.global_loss(logits, target) + self.weight * self.lesion_term(logits, target)


def _dice_ce_blob(lambda_blob: float = 1.0, **kw: Any) -> nn.Module:
    return DiceCEWithLesionTerm(BlobDiceLoss(), lambda_blob, **kw)


def _dice_ce_lesion_ce(lambda_lesion: float = 1.0, **kw: Any) -> nn.Module:
    return DiceCEWithLesionTerm(LesionCELoss(), lambda_lesion, **kw)


def _dice(**kw: Any) -> nn.Module:
    return DiceLoss(**{**DICE_DEFAULTS, **kw})


def _focal(**kw: Any) -> nn.Module:
    if kw.pop("include_background", True) is False:
        raise ValueError("focal: the background class must stay in (see VoxelFocalLoss)")
    return VoxelFocalLoss(**kw)


def _dice_ce(**kw: Any) -> nn.Module:
    # MONAI's CE term always uses every class; include_background only affects its Dice term, as we want.
    return DiceCELoss(**{**DICE_DEFAULTS, **kw})


_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": _dice,
    "focal": _focal,
    "dice_ce": _dice_ce,
    "dice_focal": DiceFocalLoss,
    "dice_ce_blob": _dice_ce_blob,
    "dice_ce_lesion_ce": _dice_ce_lesion_ce,
}


def available_losses() -> list[str]:
    """Names accepted by ``build_loss``, sorted."""
    return sorted(_LOSSES)


def build_loss(name: str, **kw: Any) -> nn.Module:
    """Loss ``name`` (dice, focal, dice_ce, dice_focal, dice_ce_blob, dice_ce_lesion_ce); ``kw`` override the defaults
    in the module docstring.

    Every loss is called as ``loss(logits, labels)`` with logits (B, C, D, H, W), C >= 2, and integer labels
    (B, 1, D, H, W) holding class indices, and returns a scalar.
    """
    try:
        factory = _LOSSES[name]
    except KeyError:
        raise MeddetInputError(
            f"Unknown loss '{name}'.", hint=f"Choose one of: {', '.join(available_losses())}."
        ) from None
    return factory(**kw)


class DeepSupervisedLoss(nn.Module):
    """``loss`` on a deep-supervised network's stacked outputs (B, 1 + heads, C, D, H, W), or on plain logits.

    Head ``i`` (0 = full resolution) is weighted 1/2**i and the weights sum to 1, as in nnU-Net, so the loss
    keeps the scale of the plain one and the full-resolution output dominates. The unet family upsamples its
    heads to full size, so every head is compared with the label as stored. Plain (B, C, D, H, W) logits, e.g.
    from a model in eval mode or without heads, get ``loss`` unchanged.
    """

    def __init__(self, loss: nn.Module, heads: int) -> None:
        super().__init__()
        weights = [0.5**i for i in range(heads + 1)]
        self.loss = loss
        self.supervised = DeepSupervisionLoss(loss, weights=[w / sum(weights) for w in weights])

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if outputs.dim() == target.dim():
            return self.loss(outputs, target)
        return self.supervised(list(torch.unbind(outputs, dim=1)), target)


def build_training_loss(plan: dict[str, Any]) -> nn.Module:
    """The plan's loss (``{"name": ..., "options": {...}}``, options e.g. ``lambda_lesion``), wrapped for the model's
    deep-supervision heads when it has any."""
    loss = build_loss(plan["loss"]["name"], **plan["loss"].get("options", {}))
    heads = int(plan["model"].get("deep_supervision", 0))
    return DeepSupervisedLoss(loss, heads) if heads > 0 else loss
