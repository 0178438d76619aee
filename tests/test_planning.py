"""Plan decisions on synthetic fingerprints, and reading the dataset layouts."""

import json

import numpy as np
import pytest

from meddet.errors import MeddetInputError
from meddet.planning.dataset import load_dataset
from meddet.planning.fingerprint import Fingerprint, compute_fingerprint, context_shell
from meddet.planning.planner import Budget, choose_target_spacing, make_plan
from meddet.training.trainer import split_cases
from tiny_dataset import make_tiny_dataset


def _fingerprint(spacings, shapes, channels=("CT",)) -> Fingerprint:
    stats = {"mean": -100.0, "std": 300.0, "percentile_00_5": -800.0, "percentile_99_5": 200.0, "min": -1000.0, "max": 400.0}
    return Fingerprint("x", list(channels), [list(s) for s in spacings], [list(s) for s in shapes],
                       [dict(stats) for _ in channels], [5.0, 8.0, 12.0], [1, 2, 0])


def test_isotropic_data_uses_median_spacing():
    fp = _fingerprint([(0.7, 0.7, 1.0), (0.8, 0.8, 1.25), (0.9, 0.9, 1.5)], [(200, 256, 256)] * 3)
    spacing, reason = choose_target_spacing(fp)
    assert spacing == [0.8, 0.8, 1.25]
    assert "anisotropic" not in reason


def test_anisotropic_axis_uses_10th_percentile():
    z = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 1.0]  # median 5 mm > 3 × 0.7 mm in-plane
    fp = _fingerprint([(0.7, 0.7, s) for s in z], [(60, 256, 256)] * len(z))
    spacing, reason = choose_target_spacing(fp)
    assert spacing[:2] == [0.7, 0.7]
    assert spacing[2] == pytest.approx(np.percentile(z, 10))
    assert "anisotropic" in reason


def test_smaller_budget_gives_smaller_patch():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 3, [(160, 160, 160)] * 3)
    big = make_plan(fp, Budget(memory_gib=8.0, step_seconds=None, device="cuda"))
    small = make_plan(fp, Budget(memory_gib=0.25, step_seconds=None, device="cuda"))
    assert np.prod(small["patch_size"]) < np.prod(big["patch_size"])
    assert small["budget"]["estimated_step_memory_gib"] <= 0.25
    cpu = make_plan(fp, Budget(memory_gib=8.0, step_seconds=1.0, device="cpu"))
    assert cpu["budget"]["estimated_step_seconds"] <= 1.0
    fast = make_plan(fp, Budget(memory_gib=8.0, step_seconds=1.0, device="cpu", precision="bf16"))
    assert np.prod(fast["patch_size"]) > np.prod(cpu["patch_size"]) and fast["training"]["precision"] == "bf16"
    overridden = make_plan(fp, Budget(memory_gib=8.0, step_seconds=1.0, device="cpu", precision="bf16"), {"precision": "fp32"})
    assert overridden["patch_size"] == cpu["patch_size"] and overridden["training"]["precision"] == "fp32"
    for plan in (big, small, cpu):
        strides = np.array(plan["model"]["strides"])
        assert all(p % int(np.prod(strides[:, a])) == 0 for a, p in enumerate(plan["patch_size"]))
        assert plan["model"]["deep_supervision"] == len(strides) - 1  # unet: a head per decoder level but the coarsest


def test_plan_records_reasons_normalisation_and_overrides():
    fp = _fingerprint([(0.8, 0.8, 2.0)] * 3, [(100, 256, 256)] * 3, channels=("CT", "PET"))
    plan = make_plan(fp, Budget(2.0, 2.0, "cpu"), {"loss": "dice_focal", "patch_size": [32, 64, 64]}, {"background": 0, "nodule": 1})
    assert plan["normalization"][0] == {"channel": "CT", "scheme": "ct_clip_zscore", "low": -800.0, "high": 200.0, "mean": -100.0, "std": 300.0}
    assert plan["normalization"][1]["scheme"] == "zscore"
    assert plan["loss"]["name"] == "dice_focal" and plan["decisions"]["loss"] == "set by the user"
    assert plan["patch_size"] == [32, 64, 64] and plan["decisions"]["patch_size"] == "set by the user"
    assert plan["crop"] == "lung"
    assert all(isinstance(v, str) and v for v in plan["decisions"].values())


def test_patch_centre_defaults_to_nnunets_voxel_rule_and_can_be_set():
    fp = _fingerprint([(0.8, 0.8, 2.0)] * 3, [(100, 256, 256)] * 3)
    assert make_plan(fp, Budget(2.0, 2.0, "cpu"))["training"]["patch_centre"] == "voxel"
    plan = make_plan(fp, Budget(2.0, 2.0, "cpu"), {"patch_centre": "lesion"})
    assert plan["training"]["patch_centre"] == "lesion" and plan["decisions"]["patch_centre"] == "set by the user"
    with pytest.raises(ValueError, match="patch centre"):
        make_plan(fp, Budget(2.0, 2.0, "cpu"), {"patch_centre": "middle"})


def test_swin_unetr_patch_is_rounded_to_its_divisor():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 3, [(100, 150, 150)] * 3)
    plan = make_plan(fp, Budget(2.0, 3.0, "cpu"), {"model": "swin_unetr"})
    assert all(p % 32 == 0 and p >= 64 for p in plan["patch_size"])
    assert "deep_supervision" not in plan["model"]  # only the unet family has heads


def test_topology_models_keep_the_planned_patch_and_only_unet_gets_heads():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 3, [(100, 150, 150)] * 3)
    unet = make_plan(fp, Budget(2.0, 3.0, "cpu"))
    for name in ("hybrid", "unet_late_fusion"):
        plan = make_plan(fp, Budget(2.0, 3.0, "cpu"), {"model": name})
        assert plan["patch_size"] == unet["patch_size"] and plan["model"]["strides"] == unet["model"]["strides"]
        assert "rounded" not in plan["decisions"]["patch_size"] and "deep_supervision" not in plan["model"]


def test_msd_layout_with_channels_and_unlabelled(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("a", "b"):
        for ch in (0, 1):
            (tmp_path / "imagesTr" / f"{case}_{ch:04d}.nii.gz").write_bytes(b"x")
    (tmp_path / "labelsTr" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "nodule": 1}, "file_ending": ".nii.gz"}))
    index = load_dataset(tmp_path)
    assert index.channel_names == ["CT", "PET"]
    assert [c.name for c in index.cases] == ["a"] and [c.name for c in index.unlabelled] == ["b"]
    assert [p.name for p in index.cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    (tmp_path / "imagesTr" / "b_0001.nii.gz").unlink()
    with pytest.raises(MeddetInputError, match="lacks channel"):
        load_dataset(tmp_path)


def _empty_msd(root, names):
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for case in names:
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"x")
        (root / "labelsTr" / f"{case}.nii.gz").write_bytes(b"x")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))


def test_splits_json_fixes_the_validation_cases_when_the_dataset_grows(tmp_path):
    _empty_msd(tmp_path, [f"c{k:02d}" for k in range(10)])
    random_val = [c.name for c in split_cases(load_dataset(tmp_path), 0.2, 0)[1]]
    assert len(random_val) == 2 and load_dataset(tmp_path).validation is None
    (tmp_path / "splits.json").write_text(json.dumps({"validation": random_val}))
    _empty_msd(tmp_path, [f"c{k:02d}" for k in range(20)])  # ten cases appended
    train, val = split_cases(load_dataset(tmp_path), 0.2, 0)
    assert [c.name for c in val] == random_val
    assert len(train) == 18 and not {c.name for c in train} & set(random_val)
    (tmp_path / "splits.json").unlink()
    assert [c.name for c in split_cases(load_dataset(tmp_path), 0.2, 0)[1]] != random_val  # what splits.json prevents


@pytest.mark.parametrize("content, message", [
    ('{"validation": ["c00", "nope"]}', "no labelled images for: nope"),
    ('{"validation": []}', "non-empty list"),
    ('["c00"]', "not a JSON object"),
    ('{"validation": ["c00", "c01"]}', "every case"),
])
def test_bad_splits_json_is_a_clear_error(tmp_path, content, message):
    _empty_msd(tmp_path, ["c00", "c01"])
    (tmp_path / "splits.json").write_text(content)
    with pytest.raises(MeddetInputError, match=message):
        load_dataset(tmp_path)


def test_csv_dataset(tmp_path):
    (tmp_path / "img.nii.gz").write_bytes(b"x")
    (tmp_path / "lab.nii.gz").write_bytes(b"x")
    (tmp_path / "pairs.csv").write_text("image,label\nimg.nii.gz,lab.nii.gz\nimg.nii.gz,\n")
    index = load_dataset(tmp_path / "pairs.csv")
    assert len(index.cases) == 1 and len(index.unlabelled) == 1
    (tmp_path / "bad.csv").write_text("image,label\nmissing.nii.gz,lab.nii.gz\n")
    with pytest.raises(MeddetInputError, match="does not exist"):
        load_dataset(tmp_path / "bad.csv")
    with pytest.raises(MeddetInputError, match="no dataset.json"):
        load_dataset(tmp_path)


def test_context_shell_is_the_tissue_within_the_margin_in_mm():
    fg = np.zeros((9, 21, 21), bool)
    fg[4, 10, 10] = True
    shell = context_shell(fg, (1.0, 1.0, 2.0), margin_mm=2.5)  # x, y spacing 1 mm, z 2 mm
    assert not shell[4, 10, 10]
    assert shell[4, 10, 12] and not shell[4, 10, 13]  # 2 mm in-plane: in; 3 mm: out
    assert shell[5, 10, 10] and not shell[6, 10, 10]  # one slice (2 mm): in; two (4 mm): out
    assert not context_shell(np.zeros_like(fg), (1.0, 1.0, 2.0)).any()


def test_ct_intensity_statistics_keep_the_tissue_around_the_lesions(tmp_path):
    # tiny dataset: lesions at 30 ± 25 HU in "lung" at -850 ± 25 HU
    stats = compute_fingerprint(load_dataset(make_tiny_dataset(tmp_path / "tiny"))).intensity[0]
    assert stats["percentile_00_5"] < -850  # the lung the lesions are told apart from is not clipped away
    assert stats["percentile_99_5"] > 30
    assert -700 < stats["mean"] < -100  # lesions and context in equal parts


def test_texture_noise_is_off_unless_asked_for():
    fp = _fingerprint([(0.8, 0.8, 2.0)] * 3, [(100, 256, 256)] * 3)
    assert make_plan(fp, Budget(2.0, 2.0, "cpu"))["training"]["texture_noise_probability"] == 0.0
    plan = make_plan(fp, Budget(2.0, 2.0, "cpu"), {"texture_noise": 0.3})
    assert plan["training"]["texture_noise_probability"] == 0.3 and plan["decisions"]["texture_noise"] == "set by the user"
