"""Training end to end on tiny data: it learns, resume equals an uninterrupted run, DDP ranks agree, 2 channels."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from meddet.planning.dataset import load_dataset
from meddet.planning.fingerprint import compute_fingerprint
from meddet.planning.planner import Budget, make_plan, save_plan
from meddet.training.trainer import CHECKPOINT_BEST, CHECKPOINT_LAST, train, validate
from tiny_dataset import make_tiny_dataset

OVERRIDES = {"patch_size": [16, 32, 32], "iterations": 6, "crop": "none", "seed": 3}


def _plan(tmp_path, channels=1, **extra):
    root = make_tiny_dataset(tmp_path / "data", channels=channels)
    index = load_dataset(root)
    plan = make_plan(compute_fingerprint(index), Budget(1.0, 2.0, "cpu"), {**OVERRIDES, **extra}, index.labels)
    plan["model"]["channels"] = [8, 16, 32]  # tiny network for a fast test
    plan["model"]["strides"] = [[1, 2, 2], [2, 2, 2]]
    plan["model"]["deep_supervision"] = 1
    plan["training"]["validate_every"] = 3
    return save_plan(plan, tmp_path / "plan.json")


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_training_writes_checkpoints_log_and_curve(tmp_path):
    plan = _plan(tmp_path)
    summary = train(plan, tmp_path / "run", num_workers=0, show_progress=False)
    assert summary["iterations"] == 6
    run = tmp_path / "run"
    for name in (CHECKPOINT_LAST, CHECKPOINT_BEST, "log.jsonl", "training_curve.png", "summary.json"):
        assert (run / name).exists(), name
    records = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [3, 6]
    assert all(0.0 <= r["val_dice"] <= 1.0 and np.isfinite(r["loss"]) for r in records)
    assert all(r["val_fp_per_scan"] >= 0 and (np.isnan(r["val_sensitivity"]) or 0 <= r["val_sensitivity"] <= 1) for r in records)
    checkpoint = torch.load(run / CHECKPOINT_BEST, weights_only=False)
    assert checkpoint["plan"]["patch_size"] == [16, 32, 32]  # everything needed to predict travels with it


def test_training_writes_plain_progress_lines_to_a_log_file(tmp_path, capsys, monkeypatch):
    """Without a terminal (a background run with its output in a file) progress comes as plain lines."""
    import meddet.training.trainer as trainer

    monkeypatch.setattr(trainer, "PLAIN_EVERY", 2)
    train(_plan(tmp_path), tmp_path / "run", num_workers=0, show_progress=True)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("train ")]
    assert [l.split()[1] for l in lines] == ["2/6", "4/6", "6/6"] and all("it/s" in l for l in lines)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    plan = _plan(tmp_path)
    train(plan, tmp_path / "straight", num_workers=0, show_progress=False)
    train(plan, tmp_path / "resumed", until=4, num_workers=0, show_progress=False)  # stopped after 4 of 6
    halfway = _weights(tmp_path / "resumed" / CHECKPOINT_LAST)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT_LAST, weights_only=False)["iteration"] == 4
    summary = train(plan, tmp_path / "resumed", num_workers=1, show_progress=False)  # workers do not change batches
    assert summary["iterations"] == 6
    straight, resumed = _weights(tmp_path / "straight" / CHECKPOINT_LAST), _weights(tmp_path / "resumed" / CHECKPOINT_LAST)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    assert any(not torch.equal(halfway[k], straight[k]) for k in straight)  # the last two steps did change weights


def test_texture_noise_changes_the_ct_channel_of_the_batches_only(tmp_path):
    """The plan's texture_noise_probability reaches the batches: same patches and labels, the CT channel noisier
    by about what textured_noise adds (5-40 HU on the plan's HU scale); the PET channel untouched."""
    from meddet.planning.planner import load_plan
    from meddet.training.cache import build_cache, cache_dir_for, load_cached
    from meddet.training.data import IterationBatches
    from meddet.preprocess.prepare import hu_per_unit

    plan = load_plan(_plan(tmp_path, channels=2))
    assert hu_per_unit(plan)[0] > 0 and hu_per_unit(plan)[1] is None
    index = load_dataset(plan["dataset"])
    cases = load_cached(build_cache(index.cases, plan, cache_dir_for(plan, index.root)), [c.name for c in index.cases])

    def batches(texture):
        return IterationBatches(cases, tuple(plan["patch_size"]), 2, seed=0, augmentation_probability=0.2,
                                texture_noise_probability=texture, hu_per_unit=hu_per_unit(plan),
                                spacing_zyx_mm=tuple(reversed(plan["target_spacing"])))

    plain, textured = batches(0.0), batches(1.0)
    added = []
    for i in range(3):
        a, b = plain[i], textured[i]
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"][:, 1], b["image"][:, 1])
        added.append(float((b["image"][:, 0] - a["image"][:, 0]).std()) * hu_per_unit(plan)[0])
    assert all(3.0 < sd < 45.0 for sd in added), added


def test_two_channel_model_trains(tmp_path):
    plan = _plan(tmp_path, channels=2)
    summary = train(plan, tmp_path / "run", num_workers=0, show_progress=False)
    weights = _weights(tmp_path / "run" / CHECKPOINT_LAST)
    first_conv = next(v for k, v in weights.items() if v.ndim == 5)
    assert first_conv.shape[1] == 2 and summary["iterations"] == 6


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    plan = _plan(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "meddet", "train", str(plan), "--out", str(tmp_path / "ddp"), "--workers", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    rank1 = json.loads((tmp_path / "ddp" / "summary_rank1.json").read_text())
    assert rank0["world_size"] == 2 and rank1["rank"] == 1
    assert rank0["weights_sha1"] == rank1["weights_sha1"]
    assert rank0["iterations"] == rank1["iterations"] == 6


class _LabelEcho(torch.nn.Module):
    """Logits that reproduce the input as the lesion mask (an oracle when the input is the label), or never lesion."""

    def __init__(self, oracle: bool) -> None:
        super().__init__()
        self.oracle = oracle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = (x - 0.5) * 20 if self.oracle else torch.full_like(x, -10.0)
        return torch.cat([-lesion, lesion], dim=1)


def test_validation_reports_dice_and_lesion_sensitivity_and_false_positives():
    from types import SimpleNamespace

    label = np.zeros((16, 32, 32), np.uint8)
    label[4:8, 4:8, 4:8] = 1      # two separate nodules
    label[10:13, 20:24, 20:24] = 1
    image = label.astype(np.float32)[None]
    image_with_fp = image.copy()
    image_with_fp[0, 2:4, 25:28, 3:6] = 1.0  # the oracle also "finds" a blob the label does not have
    plan = {"target_spacing": [1.0, 1.0, 2.0], "patch_size": [16, 32, 32]}
    cases = [SimpleNamespace(image=image, label=label), SimpleNamespace(image=image_with_fp, label=label)]
    found = validate(_LabelEcho(oracle=True), cases, plan, torch.device("cpu"))
    assert found["val_sensitivity"] == 1.0 and found["val_fp_per_scan"] == 0.5
    assert found["val_dice_mean_case"] == pytest.approx((1.0 + 2 * 112 / (112 + 130)) / 2)
    blind = validate(_LabelEcho(oracle=False), cases, plan, torch.device("cpu"))
    assert blind["val_sensitivity"] == 0.0 and blind["val_fp_per_scan"] == 0.0 and blind["val_dice"] == 0.0
