"""Losses on inputs whose answer is known by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from meddet.errors import MeddetInputError
from meddet.training.losses import DeepSupervisedLoss, available_losses, build_loss, build_training_loss

ALL = ["dice", "dice_ce", "dice_ce_blob", "dice_ce_lesion_ce", "dice_focal", "focal"]


def _labels() -> torch.Tensor:
    """Two 8**3 patches, a 2**3 lesion in the first and none in the second (integer map, B1DHW)."""
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.uint8)
    labels[0, 0, 2:4, 2:4, 2:4] = 1
    return labels


def _logits_for(labels: torch.Tensor, confidence: float) -> torch.Tensor:
    """Two-class logits that put ``confidence`` (in logit units) on the given labels."""
    one_hot = torch.cat([labels == 0, labels == 1], dim=1).float()
    return confidence * (2 * one_hot - 1)


def test_registry() -> None:
    assert available_losses() == ALL
    with pytest.raises(MeddetInputError, match="Unknown loss"):
        build_loss("lovasz")


@pytest.mark.parametrize("name", ALL)
def test_perfect_prediction_is_near_zero(name: str) -> None:
    labels = _labels()
    assert build_loss(name)(_logits_for(labels, 20.0), labels).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_totally_wrong_is_near_one() -> None:
    labels = _labels()
    assert build_loss("dice")(_logits_for(labels, -20.0), labels).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", ["dice_ce", "dice_ce_blob", "dice_ce_lesion_ce", "dice_focal", "focal"])
def test_totally_wrong_is_much_worse_than_right(name: str) -> None:
    labels = _labels()
    loss = build_loss(name)
    assert loss(_logits_for(labels, -5.0), labels) > 10 * loss(_logits_for(labels, 5.0), labels)


def test_dice_hand_computed() -> None:
    """Four voxels, one lesion voxel; lesion probabilities 0.75, 0.75, 0.25, 0.5.

    Foreground Dice = 2 * 0.75 / (sum p + sum t) = 1.5 / (2.25 + 1) -> loss 1 - 1.5 / 3.25 = 0.538462.
    """
    p = torch.tensor([0.75, 0.75, 0.25, 0.5])
    lesion_logit = torch.log(p / (1 - p))  # softmax([0, l]) gives p for class 1
    logits = torch.stack([torch.zeros(4), lesion_logit]).reshape(1, 2, 1, 2, 2)
    labels = torch.tensor([1, 0, 0, 0]).reshape(1, 1, 1, 2, 2)
    assert build_loss("dice")(logits, labels).item() == pytest.approx(1 - 1.5 / 3.25, abs=1e-5)


def test_focal_is_below_cross_entropy_for_well_classified_voxels() -> None:
    labels = _labels()
    logits = _logits_for(labels, 1.5)  # p_t = sigmoid(3) ~ 0.95: well classified
    ce = F.cross_entropy(logits, labels[:, 0].long())
    focal = build_loss("focal")(logits, labels)
    p_t = 1 / (1 + math.exp(-3.0))
    assert focal.item() == pytest.approx((1 - p_t) ** 2 * ce.item(), rel=1e-4)  # (1 - p_t)^gamma * CE
    assert focal < 0.01 * ce


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    """The voxel-wise term has cross-entropy's scale, so dice+focal weighs like dice+CE."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    ce = F.cross_entropy(logits, labels[:, 0])
    assert build_loss("focal", gamma=0.0)(logits, labels).item() == pytest.approx(ce.item(), rel=1e-5)


def test_focal_refuses_to_drop_background() -> None:
    with pytest.raises(ValueError, match="background"):
        build_loss("focal", include_background=False)


def test_batch_dice_ignores_a_lesion_free_patch_that_is_predicted_empty() -> None:
    """With batch Dice the empty second patch neither helps nor hurts; per-sample Dice would average it in."""
    labels = _labels()
    logits = _logits_for(labels, 20.0)
    logits[0, :, 2, 2, 2] = torch.tensor([20.0, -20.0])  # miss one of the 8 lesion voxels
    expected = 1 - 2 * 7 / (7 + 8)
    assert build_loss("dice")(logits, labels).item() == pytest.approx(expected, abs=1e-4)
    per_sample = build_loss("dice", batch=False)(logits, labels).item()
    assert per_sample == pytest.approx(expected / 2, abs=1e-4)


def test_losses_give_gradients() -> None:
    labels = _labels()
    for name in ALL:
        logits = torch.zeros(2, 2, 8, 8, 8, requires_grad=True)
        build_loss(name)(logits, labels).backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_deep_supervised_loss_weights_heads_by_halves_and_passes_plain_logits_through() -> None:
    labels = _labels()
    right, wrong = _logits_for(labels, 20.0), _logits_for(labels, -20.0)
    loss = DeepSupervisedLoss(build_loss("dice"), heads=2)
    # heads: full resolution right (Dice loss 0), two coarser heads wrong (Dice loss 1): weights 4/7, 2/7, 1/7
    stacked = torch.stack([right, wrong, wrong], dim=1)
    assert loss(stacked, labels).item() == pytest.approx(3 / 7, abs=1e-4)
    assert loss(torch.stack([wrong, right, right], dim=1), labels).item() == pytest.approx(4 / 7, abs=1e-4)
    assert loss(right, labels).item() == pytest.approx(0.0, abs=1e-4)  # eval-mode output: the plain loss


def test_training_loss_follows_the_plans_heads() -> None:
    plan = {"loss": {"name": "dice_ce"}, "model": {"name": "unet", "deep_supervision": 3}}
    assert isinstance(build_training_loss(plan), DeepSupervisedLoss)
    plan["model"] = {"name": "swin_unetr"}
    assert not isinstance(build_training_loss(plan), DeepSupervisedLoss)


def _big_and_small() -> torch.Tensor:
    """One 16**3 patch: a 6**3 lesion (216 voxels) and, apart from it, a single-voxel lesion."""
    labels = torch.zeros(1, 1, 16, 16, 16, dtype=torch.uint8)
    labels[0, 0, 2:8, 2:8, 2:8] = 1
    labels[0, 0, 12, 12, 12] = 1
    return labels


def test_blob_loss_charges_a_missed_small_lesion_as_much_as_a_missed_large_one() -> None:
    labels = _big_and_small()
    miss_small = _logits_for(labels, 20.0)
    miss_small[0, :, 12, 12, 12] = torch.tensor([20.0, -20.0])  # confident background on the small lesion
    miss_big = _logits_for(labels, 20.0)
    miss_big[0, :, 2:8, 2:8, 2:8] = torch.tensor([20.0, -20.0])[:, None, None, None]
    blob, dice = build_loss("dice_ce_blob").lesion_term, build_loss("dice")
    assert blob(miss_small, labels).item() == pytest.approx(0.5, abs=1e-3)  # one of two lesions fully missed
    assert blob(miss_big, labels).item() == pytest.approx(0.5, abs=1e-3)
    assert dice(miss_small, labels).item() < 0.01  # 1 of 217 voxels: the batch Dice hardly notices
    assert build_loss("dice_ce_blob")(miss_small, labels) > 20 * build_loss("dice_ce")(miss_small, labels)


def test_blob_loss_masks_the_other_lesions_but_not_false_positives() -> None:
    labels = _big_and_small()
    assert build_loss("dice_ce_blob").lesion_term(_logits_for(labels, 20.0), labels).item() == pytest.approx(0.0, abs=1e-4)
    false_positive = _logits_for(labels, 20.0)
    false_positive[0, :, 14, 2:4, 2:4] = torch.tensor([-20.0, 20.0])[:, None, None]  # 4 voxels on background
    # big lesion: 1 - 2*216/(216+4+216); single voxel: 1 - 2/(1+4+1)
    expected = ((1 - 432 / 436) + (1 - 2 / 6)) / 2
    assert build_loss("dice_ce_blob").lesion_term(false_positive, labels).item() == pytest.approx(expected, abs=1e-3)


def test_blob_loss_is_zero_without_lesions_and_keeps_gradients() -> None:
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.uint8)
    logits = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    blob = build_loss("dice_ce_blob").lesion_term(logits, labels)
    assert blob.item() == 0.0
    blob.backward()
    assert logits.grad is not None
    labels = _big_and_small()
    logits = torch.zeros(1, 2, 16, 16, 16, requires_grad=True)
    build_loss("dice_ce_blob")(logits, labels).backward()
    assert logits.grad[0, 1, 12, 12, 12] < 0  # raising the small lesion's logit lowers the loss


def test_lesion_ce_is_each_lesions_mean_cross_entropy_averaged_over_lesions() -> None:
    labels = _big_and_small()
    logits = torch.zeros(1, 2, 16, 16, 16)  # P(lesion) 0.5 everywhere: -log 0.5 on every lesion voxel
    lesion_ce = build_loss("dice_ce_lesion_ce").lesion_term
    assert lesion_ce(logits, labels).item() == pytest.approx(math.log(2), abs=1e-5)
    logits[0, 1, 12, 12, 12] = -3.0  # the single voxel: -log sigmoid(-3); the big lesion stays at log 2
    expected = (math.log(2) - F.logsigmoid(torch.tensor(-3.0)).item()) / 2
    assert lesion_ce(logits, labels).item() == pytest.approx(expected, abs=1e-5)
    assert lesion_ce(logits, torch.zeros_like(labels)).item() == 0.0


def test_lesion_ce_pulls_a_saturated_miss_where_dice_terms_cannot() -> None:
    """A lesion the network is sure is background (P ~ 1e-9) gets almost no gradient from the pooled or the
    per-lesion Dice, which act through a flat softmax; the per-lesion CE gives its logits ~1 in all."""
    labels = _big_and_small()
    logits = _logits_for(labels, 10.0)
    logits[0, :, 12, 12, 12] = torch.tensor([10.0, -10.0])  # the single-voxel lesion: confidently missed
    grads = {}
    for name, loss in [("dice", build_loss("dice")), ("blob", build_loss("dice_ce_blob").lesion_term),
                       ("lesion_ce", build_loss("dice_ce_lesion_ce").lesion_term)]:
        x = logits.clone().requires_grad_(True)
        loss(x, labels).backward()
        grads[name] = -x.grad[0, 1, 12, 12, 12].item()  # how hard the loss pushes the lesion logit up
    assert grads["lesion_ce"] == pytest.approx(0.5, abs=1e-3)  # (1 - P) / 1 voxel, averaged over 2 lesions
    assert grads["dice"] < 1e-6 and grads["blob"] < 1e-6
