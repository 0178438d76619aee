"""FROC/CPM against a hand-computed example, Dice/HD95 conventions, and the report end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

from meddet.evaluation.froc import froc, match_case, operating_point
from meddet.evaluation.segmentation import dice, hd95
from meddet.io import write_volume
from meddet.volume import Volume


def _p(score, centre):
    return {"score": score, "center_mm": list(centre)}


def _t(centre, diameter, **extra):
    return {"center_mm": list(centre), "diameter_mm": diameter, **extra}


# Scan A: N1 at the origin (10 mm, radius 5), N2 at x=50 (4 mm: the 3 mm rule applies, not its 2 mm radius).
# Scan B: N3 at the origin (8 mm, radius 4). Scan C: no nodule.
SCAN_A = ([_p(0.9, (1, 0, 0)), _p(0.8, (2, 0, 0)), _p(0.7, (100, 0, 0)), _p(0.4, (52.5, 0, 0))],
          [_t((0, 0, 0), 10, type="solid"), _t((50, 0, 0), 4, type="ground-glass")])
SCAN_B = ([_p(0.6, (0, 0, 10)), _p(0.3, (0, 3, 0))], [_t((0, 0, 0), 8, type="solid")])
SCAN_C = ([_p(0.5, (7, 7, 7))], [])


def test_froc_and_cpm_match_the_hand_computed_example():
    # Pooled by score: 0.9 TP(N1) | 0.8 duplicate on N1: ignored | 0.7 FP | 0.6 FP | 0.5 FP | 0.4 TP(N2, 2.5 mm ≤ 3)
    # | 0.3 TP(N3). Three scans, three nodules: the curve (FP/scan, sens) goes (0,1/3) (1/3,1/3) (2/3,1/3) (1,1/3)
    # (1,2/3) (1,1). At 1/8, 1/4, 1/2 FP/scan: 1/3; at 1, 2, 4, 8: 1. CPM = (3·1/3 + 4·1)/7 = 5/7.
    result = froc([SCAN_A, SCAN_B, SCAN_C], bootstrap=0)
    np.testing.assert_allclose(result["sensitivity"], [1 / 3, 1 / 3, 1 / 3, 1, 1, 1, 1], atol=1e-3)
    assert result["cpm"] == pytest.approx(5 / 7, abs=1e-3)
    assert result["num_nodules"] == 3 and result["num_scans"] == 3


def test_duplicate_hits_are_not_false_positives():
    matched = match_case(*SCAN_A)
    assert list(matched.hit_index) == [0, -2, -1, 1]


def test_bootstrap_interval_brackets_the_estimate():
    result = froc([SCAN_A, SCAN_B, SCAN_C], bootstrap=300, seed=1)
    low, high = result["cpm_ci95"]
    assert low <= result["cpm"] <= high and low < high


def test_operating_point_and_groups():
    op = operating_point([SCAN_A, SCAN_B, SCAN_C], threshold=0.45)
    assert op["sensitivity"] == pytest.approx(1 / 3, abs=1e-3)  # only N1 found above 0.45
    assert op["false_positives_per_scan"] == pytest.approx(3 / 3)
    assert op["by_size"]["3-6 mm"] == {"nodules": 1, "sensitivity": 0.0}
    assert op["by_type"]["solid"]["nodules"] == 2


def test_dice_and_hd95_conventions():
    empty = np.zeros((10, 10, 10), bool)
    cube = empty.copy()
    cube[2:6, 2:6, 2:6] = True
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(cube, empty) == 0.0 and hd95(cube, empty, (1, 1, 1)) is None
    shifted = np.roll(cube, 2, axis=2)
    assert dice(cube, shifted) == pytest.approx(2 * 32 / 128)
    assert hd95(cube, shifted, (1.0, 1.0, 2.5)) == pytest.approx(5.0)  # two voxels along x at 2.5 mm


def test_evaluate_writes_report_and_cli_prints_table(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for k, (preds, nodules) in enumerate([SCAN_A, SCAN_B]):
        case = f"case{k}"
        (truth / "lesions").mkdir(parents=True, exist_ok=True)
        (truth / "lesions" / f"{case}.json").write_text(json.dumps({"lesions": nodules}))
        labels = np.zeros((8, 16, 16), np.uint8)
        labels[2:5, 4:8, 4:8] = 1
        write_volume(Volume(labels), truth / "instances" / f"{case}.nii.gz")
        (pred / case).mkdir(parents=True)
        write_volume(Volume(labels), pred / case / "mask.nii.gz")
        (pred / case / "lesions.json").write_text(json.dumps({"lesions": preds, "timing_s": {"total": 2.0 + k}}))
    result = subprocess.run([sys.executable, "-m", "meddet", "evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "CPM" in result.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["cases"] == 2 and metrics["segmentation"]["dice_mean"] == 1.0
    assert metrics["latency_s"]["total"]["median"] == pytest.approx(2.5)
    assert (tmp_path / "r" / "froc.png").stat().st_size > 1000
    assert "CPM" in (tmp_path / "r" / "report.html").read_text()
    empty = tmp_path / "nothing"
    empty.mkdir()
    bad = subprocess.run([sys.executable, "-m", "meddet", "evaluate", "--pred", str(pred), "--truth", str(empty)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "No prediction matched" in bad.stderr and "Traceback" not in bad.stderr
