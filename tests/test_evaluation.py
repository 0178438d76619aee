"""FROC/CPM against a hand-computed example, Dice/HD95 conventions, and the report end to end."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from meddet.errors import MeddetInputError
from meddet.evaluation.evaluate import evaluate
from meddet.evaluation.froc import HIT_FP, HIT_IGNORED, froc, match_case, operating_point
from meddet.evaluation.segmentation import dice, hd95
from meddet.io import write_volume
from meddet.volume import Volume


def _p(score, centre):
    return {"score": score, "center_mm": list(centre)}


def _t(centre, diameter, **extra):
    return {"center_mm": list(centre), "diameter_mm": diameter, **extra}


# Four scans, five nodules (hit radius in brackets):
#   A: N1 10 mm at the origin [5], N2 4 mm at x=50 [3 mm rule: 3, not its own 2]
#   B: N3 8 mm at the origin [4]          C: no nodule (still counts in "per scan")
#   D: N4 22 mm at the origin [11], N5 12 mm at z=14 [6]
SCAN_A = (
    [_p(0.9, (1, 0, 0)),      # hits N1
     _p(0.9, (100, 0, 0)),    # FP, tied with the N1 hit
     _p(0.8, (2, 0, 0)),      # second hit on N1: ignored, NOT a false positive
     _p(0.45, (52.5, 0, 0)),  # 2.5 mm from the 4 mm N2: a hit only by the 3 mm rule
     _p(0.4, (50, 3.5, 0))],  # 3.5 mm from N2: outside even 3 mm → FP
    [_t((0, 0, 0), 10, type="solid", location="parenchymal"), _t((50, 0, 0), 4, type="ground-glass", location="juxtapleural")],
)
SCAN_B = ([_p(0.6, (0, 0, 10)), _p(0.3, (0, 3, 0))],  # FP (10 mm away), then hits N3
          [_t((0, 0, 0), 8, type="solid", location="juxtavascular")])
SCAN_C = ([_p(0.5, (7, 7, 7))], [])                   # FP in a scan without nodules
SCAN_D = ([_p(0.95, (0, 0, 9)),    # inside N4 (9 ≤ 11) and N5 (5 ≤ 6): the nearest, N5
           _p(0.35, (0, 0, -3))],  # inside N4 only: hits N4 (it would be a duplicate had 0.95 taken N4)
          [_t((0, 0, 0), 22, type="solid", location="parenchymal"), _t((0, 0, 14), 12, type="part-solid", location="perifissural")])
SCANS = [SCAN_A, SCAN_B, SCAN_C, SCAN_D]


def test_froc_and_cpm_match_the_hand_computed_example():
    # Pooled over the 4 scans, one point per distinct score (FP/scan = FPs/4, sensitivity = hits/5):
    #   start             (0,    0)
    #   0.95  TP N5       (0,    0.2)
    #   0.9   TP N1 + FP  (0.25, 0.4)   tied: both at once, a diagonal from (0, 0.2)
    #   0.8   duplicate   —             ignored
    #   0.6   FP          (0.5,  0.4)
    #   0.5   FP          (0.75, 0.4)
    #   0.45  TP N2       (0.75, 0.6)
    #   0.4   FP          (1.0,  0.6)
    #   0.35  TP N4       (1.0,  0.8)
    #   0.3   TP N3       (1.0,  1.0)
    # Linear interpolation: 1/8 → halfway up the diagonal = 0.3; 1/4 → 0.4; 1/2 → 0.4; 1 → top of the rise at 1.0
    # = 1.0; 2, 4, 8 → beyond the curve, its last value 1.0. CPM = (0.3 + 0.4 + 0.4 + 4·1.0)/7 = 5.1/7 = 0.72857.
    # Each rule changes the answer: counting the duplicate as FP makes 1 FP/scan 0.6; dropping the 3 mm rule makes
    # it 0.4; crediting 0.95 to N4 instead of the nearest N5 caps everything at 0.8; ordering the tie instead of
    # taking it together makes 1/8 FP/scan 0.2 or 0.4; dropping scan C (no nodules) rescales every FP rate.
    result = froc(SCANS, bootstrap=0)
    np.testing.assert_allclose(result["sensitivity"], [0.3, 0.4, 0.4, 1.0, 1.0, 1.0, 1.0], atol=1e-4)
    assert result["cpm"] == pytest.approx(5.1 / 7, abs=1e-4)
    assert result["num_nodules"] == 5 and result["num_scans"] == 4 and result["ignored_hits"] == 1
    np.testing.assert_allclose(result["curve"]["fps_per_scan"], [0, 0, 0.25, 0.5, 0.75, 0.75, 1, 1, 1])
    np.testing.assert_allclose(result["curve"]["sensitivity"], [0, 0.2, 0.4, 0.4, 0.4, 0.6, 0.6, 0.8, 1.0])
    assert "cpm_ci95" not in result


def test_froc_over_nodules_of_6_mm_and_more_ignores_hits_on_smaller_ones():
    # Only N2 (4 mm) is under 6 mm: its 0.45 hit becomes ignored (neither TP nor FP), 4 nodules count:
    #   0.95 N5 (0, 0.25); 0.9 N1 + FP (0.25, 0.5); 0.6, 0.5 FPs (0.75, 0.5); 0.4 FP (1.0, 0.5); 0.35 N4, 0.3 N3 → 1.0
    # 1/8 → halfway up the diagonal = 0.375; 1/4, 1/2 → 0.5; 1 and beyond → 1.0. CPM = (0.375 + 1 + 4) / 7.
    result = froc(SCANS, bootstrap=0, min_diameter_mm=6.0)
    np.testing.assert_allclose(result["sensitivity"], [0.375, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0], atol=1e-4)
    assert result["cpm"] == pytest.approx(5.375 / 7, abs=1e-4)
    assert result["num_nodules"] == 4 and result["ignored_hits"] == 2
    assert match_case(*SCAN_A, min_diameter_mm=6.0).hit_index.tolist() == [0, HIT_FP, HIT_IGNORED, HIT_IGNORED, HIT_FP]


def test_matching_rules_duplicates_nearest_and_small_nodules():
    # ranks follow the score: 0.9 (N1), 0.9 (FP), 0.8 (duplicate), 0.45 (N2 by the 3 mm rule), 0.4 (FP)
    assert match_case(*SCAN_A).hit_index.tolist() == [0, HIT_FP, HIT_IGNORED, 1, HIT_FP]
    assert match_case(*SCAN_D).hit_index.tolist() == [1, 0]  # 0.95 → nearest N5, 0.35 → N4
    hit = lambda distance, diameter: match_case([_p(0.5, (distance, 0, 0))], [_t((0, 0, 0), diameter)]).hit_index.tolist()  # noqa: E731
    assert hit(2.9, 5.9) == [0] and hit(3.1, 5.9) == [HIT_FP]  # under 6 mm: 3 mm, whatever the diameter
    assert hit(2.9, 3.0) == [0]                                 # a 3 mm nodule's own radius would be 1.5
    assert hit(3.4, 7.0) == [0] and hit(3.6, 7.0) == [HIT_FP]  # 6 mm and over: the nodule's own radius


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    result = froc(SCANS, bootstrap=200, seed=1)
    low, high = result["cpm_ci95"]
    assert low <= result["cpm"] <= high and low < high
    assert froc(SCANS, bootstrap=200, seed=1)["cpm_ci95"] == result["cpm_ci95"]
    assert len(result["sensitivity_ci95"]) == 7 and result["bootstrap"]["draws"] <= 200
    perfect = froc([([_p(0.9, (0, 0, 0))], [_t((0, 0, 0), 8)])] * 3, bootstrap=50)
    assert perfect["cpm"] == 1.0 and perfect["cpm_ci95"] == [1.0, 1.0]


def test_operating_point_and_groups():
    op = operating_point(SCANS, threshold=0.42)
    # kept: 0.95 (N5), 0.9 (N1), 0.9 FP, 0.8 duplicate, 0.6 FP, 0.5 FP, 0.45 (N2) → 3/5 found, 3 FPs over 4 scans
    assert op["sensitivity"] == pytest.approx(0.6) and op["detected"] == 3
    assert op["false_positives_per_scan"] == pytest.approx(0.75)
    assert op["by_size"]["3-6 mm"] == {"nodules": 1, "detected": 1, "sensitivity": 1.0}   # N2
    assert op["by_size"]["6-10 mm"]["sensitivity"] == 0.0                                 # N3 (found at 0.3 only)
    assert op["by_size"]["10-20 mm"] == {"nodules": 2, "detected": 2, "sensitivity": 1.0}  # N1, N5
    assert op["by_size"][">20 mm"]["sensitivity"] == 0.0 and "<3 mm" not in op["by_size"]
    assert op["by_type"]["solid"] == {"nodules": 3, "detected": 1, "sensitivity": pytest.approx(1 / 3, abs=1e-4)}
    assert op["by_location"]["perifissural"]["sensitivity"] == 1.0


def test_dice_and_hd95_conventions():
    empty = np.zeros((10, 10, 10), bool)
    cube = empty.copy()
    cube[2:6, 2:6, 2:6] = True
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0  # both empty: perfect
    assert dice(cube, empty) == 0.0 and math.isnan(hd95(cube, empty, (1, 1, 1)))  # one empty: undefined
    assert math.isnan(hd95(empty, cube, (1, 1, 1)))
    shifted = np.roll(cube, 2, axis=2)
    assert dice(cube, shifted) == pytest.approx(2 * 32 / 128)
    assert hd95(cube, shifted * 3, (1.0, 1.0, 2.5)) == pytest.approx(5.0)  # 2 voxels along x at 2.5 mm; ids > 0 count


def test_hd95_matches_monai_including_a_small_far_blob():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    a = np.zeros((20, 24, 28), bool)
    a[3:12, 5:15, 4:20] = True
    b = a.copy()
    b[15:18, 20:23, 20:25] = True  # pooled percentiles would hide this blob (0.8 mm); the directed one does not
    spacing = (2.0, 0.8, 0.7)
    as_tensor = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    expected = compute_hausdorff_distance(as_tensor(a), as_tensor(b), percentile=95, spacing=spacing).item()
    assert expected > 5
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-4)


def _write_case(pred, truth, case, preds, nodules, pred_mask, truth_mask, timing):
    (truth / "lesions").mkdir(parents=True, exist_ok=True)
    (truth / "lesions" / f"{case}.json").write_text(json.dumps({"case": case, "lesions": nodules}))
    write_volume(Volume(truth_mask), truth / "instances" / f"{case}.nii.gz")
    (pred / case).mkdir(parents=True)
    write_volume(Volume(pred_mask), pred / case / "mask.nii.gz")
    result = {"lesions": preds, "timing_s": timing, "outputs": {"mask": "mask.nii.gz", "overlay": "overlay.png"},
              "model": {"name": "lung-nodule", "version": "9.9", "threshold": 0.2, "mirroring": "z"}}
    (pred / case / "lesions.json").write_text(json.dumps(result))


def test_evaluate_end_to_end_writes_report_and_cli_prints_table(tmp_path):
    truth, pred, report = tmp_path / "truth", tmp_path / "pred", tmp_path / "r"
    blob = np.zeros((8, 16, 16), np.uint8)
    blob[2:5, 4:8, 4:8] = 1
    empty = np.zeros_like(blob)
    masks = [(blob, blob), (empty, blob), (empty, empty), (blob, blob)]  # Dice 1, 0 (HD95 undefined), 1 (both empty), 1
    for k, (scan, (pred_mask, truth_mask)) in enumerate(zip(SCANS, masks)):
        _write_case(pred, truth, f"case{k}", *scan, pred_mask, truth_mask, {"inference": 1.0, "total": 2.0 + k})
    (pred / "case0" / "overlay.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    metrics = evaluate(pred, truth, report, bootstrap=100)
    assert metrics["froc"]["cpm"] == pytest.approx(5.1 / 7, abs=1e-4)
    seg = metrics["segmentation"]
    assert seg["dice_mean"] == pytest.approx(0.75) and seg["hd95_undefined_cases"] == 1 and seg["both_empty_cases"] == 1
    assert seg["hd95_mm_mean"] == 0.0
    assert metrics["per_case"][1]["hd95_mm"] is None and metrics["per_case"][1]["dice"] == 0.0
    assert metrics["latency_s"]["total"] == {"median": 3.5, "p90": pytest.approx(4.7), "cases": 4}
    on_disk = json.loads((report / "metrics.json").read_text())
    assert on_disk["froc"]["sensitivity"] == metrics["froc"]["sensitivity"]
    assert (report / "froc.png").read_bytes()[:4] == b"\x89PNG" and (report / "froc.png").stat().st_size > 5000
    page = (report / "report.html").read_text()
    assert "CPM" in page and 'src="froc.png"' in page and 'src="../pred/case0/overlay.png"' in page
    assert "case3" in page and "10-20 mm" in page and "perifissural" in page
    assert metrics["models"] == [{"name": "lung-nodule", "version": "9.9", "threshold": 0.2, "mirroring": "z"}]
    assert "lung-nodule 9.9 (threshold 0.2, mirroring z)" in page and "more than one model" not in page

    cli = subprocess.run([sys.executable, "-m", "meddet", "evaluate", "--pred", str(pred), "--truth", str(truth),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "CPM" in cli.stdout and "0.729" in cli.stdout and "sensitivity at 0.125 FP/scan" in cli.stdout
    assert "predicted by lung-nodule 9.9" in cli.stdout
    assert (tmp_path / "cli" / "report.html").is_file()

    mixed = json.loads((pred / "case1" / "lesions.json").read_text())
    mixed["model"]["mirroring"] = "none"  # one scan predicted with other settings: the report says so
    (pred / "case1" / "lesions.json").write_text(json.dumps(mixed))
    assert len(evaluate(pred, truth, tmp_path / "mixed", bootstrap=0)["models"]) == 2
    assert "more than one model or setting" in (tmp_path / "mixed" / "report.html").read_text()


def test_pairing_single_case_label_maps_only_and_failures(tmp_path):
    # a single-scan prediction folder named by the user: paired through input.path; truth only as a binary map
    truth, out = tmp_path / "truth", tmp_path / "my_run"
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[2:6, 12:16, 12:16] = 1  # two separate nodules in a binary labelsTr map
    write_volume(Volume(labels), truth / "labelsTr" / "lung_007.nii.gz")
    out.mkdir()
    write_volume(Volume(labels), out / "mask.nii.gz")
    centre = [3.5, 3.5, 3.5]  # x, y, z of the first cube's centre (identity grid)
    (out / "lesions.json").write_text(json.dumps({"lesions": [_p(0.9, centre)], "input": {"path": "/data/lung_007_0000.nii.gz"}}))
    metrics = evaluate(out, truth, bootstrap=0)
    assert metrics["cases"] == 1 and metrics["per_case"][0]["case"] == "lung_007"
    assert metrics["operating_point"]["nodules"] == 2 and metrics["operating_point"]["sensitivity"] == 0.5
    assert metrics["segmentation"]["dice_mean"] == 1.0

    # a case that failed in `meddet predict` is scored with no predictions: its nodules count as missed
    batch = tmp_path / "batch"
    (batch / "lung_007").mkdir(parents=True)
    (batch / "lung_007" / "error.txt").write_text("This file is empty (0 bytes).\n")
    failed = evaluate(batch, truth, bootstrap=0)
    assert failed["failed_cases"] == 1 and failed["operating_point"]["sensitivity"] == 0.0
    assert failed["per_case"][0]["dice"] == 0.0


def test_nothing_pairs_is_a_clear_input_error(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    (pred / "caseA").mkdir(parents=True)
    (pred / "caseA" / "lesions.json").write_text(json.dumps({"lesions": []}))
    (truth / "lesions").mkdir(parents=True)
    (truth / "lesions" / "caseB.json").write_text(json.dumps({"lesions": []}))
    with pytest.raises(MeddetInputError) as info:
        evaluate(pred, truth)
    assert "caseA" in str(info.value) and "caseB" in str(info.value)
    bad = subprocess.run([sys.executable, "-m", "meddet", "evaluate", "--pred", str(pred), "--truth", str(truth)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "No prediction matched" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("where, content, expected", [
    ("truth", {"lesions": [{"centre": [1, 2, 3], "diameter_mm": 5.0}]}, "no usable 'center_mm'"),
    ("truth", {"lesions": [{"center_mm": [1, 2], "diameter_mm": 5.0}]}, "no usable 'center_mm'"),
    ("truth", {"lesions": [{"center_mm": [1, 2, 3], "diameter_mm": "5"}]}, "no usable 'diameter_mm'"),
    ("truth", {"nodules": []}, "no 'lesions' list"),
    ("truth", "not json", "not valid JSON"),
    ("pred", {"lesions": [{"center_mm": [1, 2, 3]}]}, "no usable 'score'"),
    ("pred", {"lesions": [{"center_mm": [1, 2, float("nan")], "score": 0.5}]}, "no usable 'center_mm'"),
])
def test_unusable_lesion_lists_are_clear_input_errors(tmp_path, where, content, expected):
    # a truth file from another generator, or a hand-edited prediction: the file and the key, not a KeyError
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    (pred / "case1").mkdir(parents=True)
    (truth / "lesions").mkdir(parents=True)
    good = {"lesions": [{"center_mm": [1, 2, 3], "diameter_mm": 5.0, "score": 0.5}]}
    files = {"pred": pred / "case1" / "lesions.json", "truth": truth / "lesions" / "case1.json"}
    for name, path in files.items():
        text = content if name == where else good
        path.write_text(text if isinstance(text, str) else json.dumps(text))
    with pytest.raises(MeddetInputError) as info:
        evaluate(pred, truth, bootstrap=0)
    assert expected in str(info.value) and str(files[where]) in str(info.value)
    bad = subprocess.run([sys.executable, "-m", "meddet", "evaluate", "--pred", str(pred), "--truth", str(truth)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and expected in bad.stderr.replace("\n", " ") and "Traceback" not in bad.stderr


def test_case_names_ending_in_four_digits_pair_with_and_without_a_channel_suffix(tmp_path):
    # phantom cases are called phantom_0000; `meddet predict` on imagesTr/ names the folder phantom_0000_0000,
    # on a DICOM folder phantom_0001: both must pair, and neither may collapse to "phantom"
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    (truth / "lesions").mkdir(parents=True)
    for case, folder in (("phantom_0000", "phantom_0000_0000"), ("phantom_0001", "phantom_0001")):
        (truth / "lesions" / f"{case}.json").write_text(json.dumps({"lesions": [_t((0, 0, 0), 8)]}))
        (pred / folder).mkdir(parents=True)
        (pred / folder / "lesions.json").write_text(json.dumps({"lesions": [_p(0.9, (0, 0, 1))]}))
    metrics = evaluate(pred, truth, bootstrap=0)
    assert sorted(r["case"] for r in metrics["per_case"]) == ["phantom_0000", "phantom_0001"]
    assert metrics["operating_point"]["sensitivity"] == 1.0 and metrics["unpaired_truth_cases"] == []
