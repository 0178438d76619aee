"""Augmentation keeps image and label aligned; CutMix mixes both alike; patch sampling finds lesions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from scipy import ndimage

from meddet.training.augment import (
    TEXTURE_SD_HU,
    RandGammad,
    RandTexturedNoised,
    build_augmentation,
    cutmix,
    LesionVoxels,
    forced_foreground,
    lesion_voxels,
    sample_patch,
    spatial_transforms,
    textured_noise,
)

SHAPE = (32, 32, 32)
BLOB_CENTRE = (7, 9, 23)  # well off-centre, so rotation, zoom and flips all move it


def _blob_case() -> tuple[np.ndarray, np.ndarray]:
    """A bright labelled ball of radius 3: image 1 inside, 0 outside; label 1 at exactly the same voxels."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ball = sum((g - c) ** 2 for g, c in zip((zz, yy, xx), BLOB_CENTRE)) <= 9
    return ball[None].astype(np.float32), ball[None].astype(np.int64)


def _centre(mask: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(mask))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_augmentation_keeps_image_and_label_aligned(seed: int) -> None:
    image, label = _blob_case()
    out = build_augmentation(prob=1.0, seed=seed)({"image": image, "label": label})
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int64
    assert out["image"].shape == (1, *SHAPE) and out["label"].shape == (1, *SHAPE)
    assert set(out["label"].unique().tolist()) == {0, 1}

    image_centre = _centre(out["image"][0].numpy() > 0.5)
    label_centre = _centre(out["label"][0].numpy() > 0)
    assert np.linalg.norm(image_centre - label_centre) < 1.0
    assert np.linalg.norm(label_centre - np.array(BLOB_CENTRE)) > 1.5  # it really moved: the test can fail


def test_spatial_transforms_alone_move_image_and_label_together() -> None:
    image, label = _blob_case()
    spatial = Compose(spatial_transforms(prob=1.0, flip_prob=1.0)).set_random_state(seed=7)
    out = spatial({"image": image, "label": label})
    image_centre = _centre(np.asarray(out["image"][0]) > 0.5)
    label_centre = _centre(np.asarray(out["label"][0]) > 0)
    assert np.linalg.norm(image_centre - label_centre) < 1.0
    # all three flips: the blob lands near the mirrored position (up to the rotation and zoom)
    mirrored = np.array([s - 1 - c for s, c in zip(SHAPE, BLOB_CENTRE)])
    assert np.linalg.norm(label_centre - mirrored) < np.linalg.norm(label_centre - np.array(BLOB_CENTRE))


def test_same_seed_same_augmentation() -> None:
    image, label = _blob_case()
    a = build_augmentation(prob=1.0, seed=3)({"image": image, "label": label})
    b = build_augmentation(prob=1.0, seed=3)({"image": image, "label": label})
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_gamma_keeps_each_channels_range_and_changes_contrast() -> None:
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(0, 1, SHAPE), 100 + 5 * rng.normal(0, 1, SHAPE)]).astype(np.float32)
    out = RandGammad("image", prob=1.0, gamma_range=(1.5, 1.5))({"image": torch.from_numpy(image)})["image"]
    for channel in range(2):
        before, after = image[channel], out[channel].numpy()
        assert after.min() == pytest.approx(before.min(), abs=1e-4)
        assert after.max() == pytest.approx(before.max(), abs=1e-3)
        assert not np.allclose(after, before, atol=1e-3)


def test_noise_has_the_configured_sigma() -> None:
    image = np.zeros((1, *SHAPE), np.float32)
    label = np.zeros((1, *SHAPE), np.int64)
    # rotation/zoom/flip of a constant image are identities, gamma of a constant image is too
    out = build_augmentation(prob=1.0, seed=0)({"image": image, "label": label})
    assert float(out["image"].std()) == pytest.approx(0.01, rel=0.05)


def _correlation(field: np.ndarray, axis: int) -> float:
    a, b = np.moveaxis(field, axis, 0)[:-1].ravel(), np.moveaxis(field, axis, 0)[1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_textured_noise_is_blotchy_within_its_ranges() -> None:
    """Its HU spread within TEXTURE_SD_HU, neighbouring voxels correlated (white noise is not), in-plane fields
    independent between slices, both kinds drawn."""
    rng = np.random.default_rng(3)
    kinds = set()
    for _ in range(12):
        field = textured_noise((24, 24, 24), rng, hu_per_unit=400.0)
        assert TEXTURE_SD_HU[0] - 0.5 <= field.std() * 400.0 <= TEXTURE_SD_HU[1] + 0.5
        assert _correlation(field, 2) > 0.3 and _correlation(field, 1) > 0.3
        kinds.add("3d" if _correlation(field, 0) > 0.3 else "inplane" if abs(_correlation(field, 0)) < 0.1 else "?")
    assert kinds == {"3d", "inplane"}


def test_textured_noise_grain_is_in_millimetres_whatever_the_voxel_size() -> None:
    """On a grid of 0.5 x 0.5 x 4 mm voxels (z, y, x) the same grain spans 8 times as many voxels along z as x
    (for 3D fields), so neighbours along z correlate more than along x: the blotch is round in mm, not in voxels."""
    rng = np.random.default_rng(0)
    along_z, along_x = [], []
    while len(along_z) < 6:
        field = textured_noise((40, 40, 40), rng, hu_per_unit=1.0, spacing_zyx_mm=(0.5, 0.5, 4.0))
        if _correlation(field, 0) > 0.3:  # a 3D field (in-plane fields are white along z)
            along_z.append(_correlation(field, 0))
            along_x.append(_correlation(field, 2))
    assert min(along_z) > 0.7 and max(along_x) < 0.4  # grain <= 2 mm is at most half a 4 mm voxel along x


def test_textured_noise_transform_changes_only_the_ct_channel_and_not_the_label() -> None:
    rng = np.random.default_rng(1)
    image = torch.as_tensor(rng.normal(0, 1, (2, *SHAPE)).astype(np.float32))
    label = torch.zeros((1, *SHAPE), dtype=torch.int64)
    label[0, 10:14, 10:14, 10:14] = 1
    out = RandTexturedNoised("image", 1.0, hu_per_unit=[373.6, None], spacing_zyx_mm=(2.4, 1.3, 1.3))(
        {"image": image, "label": label})
    added = (out["image"] - image).numpy()
    assert 5.0 / 373.6 * 0.9 <= added[0].std() <= 40.0 / 373.6 * 1.1
    assert np.all(added[1] == 0) and torch.equal(out["label"], label)
    assert torch.equal(RandTexturedNoised("image", 0.0, [373.6], (1, 1, 1))({"image": image})["image"], image)


def test_texture_probability_zero_draws_what_the_augmentation_drew_before() -> None:
    """build_augmentation without textured noise is the pipeline of before the option (same draws, same patch);
    with it the patch differs."""
    image, label = _blob_case()
    a = build_augmentation(prob=1.0, seed=3)({"image": image, "label": label})
    b = build_augmentation(prob=1.0, seed=3, texture_probability=0.0, hu_per_unit=[400.0])({"image": image, "label": label})
    c = build_augmentation(prob=1.0, seed=3, texture_probability=1.0, hu_per_unit=[400.0])({"image": image, "label": label})
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert torch.equal(a["label"], c["label"])


def test_cutmix_mixes_labels_exactly_where_it_mixes_images() -> None:
    rng = np.random.default_rng(0)
    image_a = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    image_b = rng.normal(size=(2, *SHAPE)).astype(np.float32) + 10
    label_a = np.zeros((1, *SHAPE), np.int64)
    label_b = np.ones((1, *SHAPE), np.int64)
    for _ in range(20):
        image, label, box = cutmix(image_a, label_a, image_b, label_b, rng)
        inside = np.zeros(SHAPE, bool)
        inside[box] = True
        assert np.array_equal(image[:, inside], image_b[:, inside])
        assert np.array_equal(image[:, ~inside], image_a[:, ~inside])
        assert np.array_equal(label[0] == 1, inside)  # label from b exactly inside the box, from a outside
    assert label_a.sum() == 0  # inputs untouched


def test_cutmix_fraction_follows_the_beta_draw() -> None:
    rng = np.random.default_rng(1)
    a = torch.zeros(1, *SHAPE)
    b = torch.ones(1, *SHAPE)
    fractions = [cutmix(a, a.long(), b, b.long(), rng, alpha=1.0)[1].float().mean().item() for _ in range(300)]
    assert np.mean(fractions) == pytest.approx(0.5, abs=0.05)  # Beta(1, 1) has mean 1/2
    assert min(fractions) < 0.1 and max(fractions) > 0.9  # spread over the whole range


def _tiny_lesion_case() -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(size=(1, 48, 48, 48)).astype(np.float32)
    label = np.zeros((1, 48, 48, 48), np.int64)
    label[0, 40, 5, 30] = 1  # one voxel near a corner: rarely hit by chance
    return image, label


def test_forced_patches_always_contain_the_lesion() -> None:
    image, label = _tiny_lesion_case()
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        patch = sample_patch(image, label, (16, 16, 16), rng, force_foreground=True)
        assert patch.forced and patch.label.sum() == 1
        assert patch.image.shape == (1, 16, 16, 16) and patch.label.shape == (1, 16, 16, 16)
        z, y, x = patch.start
        assert np.array_equal(patch.image, image[:, z : z + 16, y : y + 16, x : x + 16])
        starts.add(patch.start)
    assert len(starts) > 10  # jittered, not always the same crop


def test_every_batch_of_two_forces_exactly_one_lesion_patch() -> None:
    rng = np.random.default_rng(0)
    assert forced_foreground(2, 0.33, rng) == [False, True]  # nnU-Net: the last third of the batch
    assert forced_foreground(3, 0.33, rng) == [False, False, True]
    assert forced_foreground(4, 0.5, rng) == [False, False, True, True]
    assert forced_foreground(2, 0.0, rng) == [False, False]
    singles = np.mean([forced_foreground(1, 0.33, rng)[0] for _ in range(600)])
    assert singles == pytest.approx(0.33, abs=0.06)  # a batch of one: a coin per batch


def test_small_case_is_padded_and_lesion_kept() -> None:
    image = np.full((2, 10, 40, 40), 5.0, np.float32)
    image[1] = -3.0
    label = np.zeros((1, 10, 40, 40), np.int64)
    label[0, 9, 20, 20] = 1
    patch = sample_patch(image, label, (16, 16, 16), np.random.default_rng(0), force_foreground=True)
    assert patch.image.shape == (2, 16, 16, 16)
    assert patch.label.sum() == 1
    assert patch.start[0] == -3  # 6 slices of padding, 3 on each side
    assert set(np.unique(patch.image[0])) == {5.0} and set(np.unique(patch.image[1])) == {-3.0}  # padded with min


def test_case_without_lesion_falls_back_to_a_random_patch() -> None:
    image = np.zeros((1, 20, 20, 20), np.float32)
    label = np.zeros((1, 20, 20, 20), np.int64)
    patch = sample_patch(image, label, (8, 8, 8), np.random.default_rng(0), force_foreground=True)
    assert not patch.forced and patch.label.shape == (1, 8, 8, 8)


def test_patch_unpacks_and_keeps_a_channel_free_label_layout() -> None:
    """Cached cases store the label as (D, H, W); the patch comes back in the layout it was given."""
    image, label = _tiny_lesion_case()
    patch = sample_patch(image, label[0], (16, 16, 16), np.random.default_rng(0), force_foreground=True)
    image_patch, label_patch = patch
    assert image_patch.shape == (1, 16, 16, 16) and label_patch.shape == (16, 16, 16) and label_patch.sum() == 1


def test_precomputed_lesions_are_used() -> None:
    image, label = _tiny_lesion_case()
    elsewhere = LesionVoxels([np.array([[5, 40, 5]])], np.array([1]))  # not the labelled voxel: proves it is used
    patch = sample_patch(image, label, (16, 16, 16), np.random.default_rng(0), True, lesions=elsewhere)
    z, y, x = patch.start
    assert z <= 5 < z + 16 and y <= 40 < y + 16 and x <= 5 < x + 16


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.mgrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_lesion_voxels_separates_lesions_and_classes() -> None:
    label = np.zeros((40, 40, 40), np.uint8)
    label[_ball(label.shape, (10, 10, 10), 6)] = 1  # 925 voxels
    label[_ball(label.shape, (30, 30, 30), 1)] = 1  # 7 voxels
    label[2, 38, 2] = 2  # another class, one voxel
    lesions = lesion_voxels(label, max_points=100)
    assert sorted(len(v) for v in lesions.points) == [1, 7, 93]  # the big ball strided to at most 100 (every 10th of 925)
    assert sorted(lesions.sizes) == [1, 7, 925]  # full sizes kept for the voxel rule
    big = max(lesions.points, key=len)
    assert np.all(label[tuple(big.T)] == 1) and np.abs(big.mean(0) - 10).max() < 1.5  # spread over the whole ball
    assert len(lesion_voxels(np.zeros((5, 5, 5), np.uint8))) == 0


def test_patch_centre_rule_decides_how_often_a_small_lesion_is_seen() -> None:
    """A 3-voxel-radius nodule beside a 12-voxel one (64x the volume): "lesion" centres on it about half the time,
    "voxel" (nnU-Net) about once in 65."""
    shape = (64, 64, 64)
    label = np.zeros(shape, np.uint8)
    label[_ball(shape, (20, 20, 20), 12)] = 1
    label[_ball(shape, (52, 52, 52), 3)] = 1
    image = np.zeros((1, *shape), np.float32)
    lesions = lesion_voxels(label)
    share = {}
    for centre in ("lesion", "voxel"):
        rng = np.random.default_rng(0)
        # the small one's patches start near z=44, the big one's below 30
        share[centre] = np.mean([sample_patch(image, label, (16, 16, 16), rng, True, lesions, centre).start[0] > 32 for _ in range(1000)])
    expected_voxel_share = lesions.sizes.min() / lesions.sizes.sum()
    assert 0.45 < share["lesion"] < 0.55
    assert abs(share["voxel"] - expected_voxel_share) < 0.012 and share["voxel"] < 0.03
    with pytest.raises(ValueError, match="patch centre"):
        lesions.pick(np.random.default_rng(0), "middle")
