"""`meddet predict` end to end on a small phantom with a tiny model trained here: every output, the schema."""

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch

from meddet.inference.pipeline import find_cases
from meddet.inference.predictor import MIRRORINGS, lesion_probability, load_model, predict_probability
from meddet.io import read_volume, write_volume
from meddet.phantom import generate_dataset
from meddet.planning.dataset import load_dataset
from meddet.planning.fingerprint import compute_fingerprint
from meddet.planning.planner import Budget, make_plan, save_plan
from meddet.training.trainer import CHECKPOINT_BEST, train
from meddet.volume import Volume

LESION_KEYS = {"id", "center_mm", "diameter_mm", "volume_ml", "score", "bbox_mm"}
TIMING_KEYS = {"load", "preprocess", "inference", "postprocess", "write", "total"}


@pytest.fixture(scope="module")
def phantom_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = generate_dataset(root / "data", n=2, seed=7, small=True)
    index = load_dataset(data)
    plan = make_plan(compute_fingerprint(index), Budget(1.0, 2.0, "cpu"), {"patch_size": [32, 96, 96], "iterations": 2, "seed": 1}, index.labels)
    plan["model"].update(channels=[4, 8, 16], strides=[[2, 2, 2], [2, 2, 2]], deep_supervision=1)
    plan["training"]["validate_every"] = 2
    train(save_plan(plan, root / "plan.json"), root / "run", num_workers=0, show_progress=False)
    checkpoint = root / "run" / CHECKPOINT_BEST
    state = torch.load(checkpoint, weights_only=False)
    state["postprocessing"] = {"threshold": 0.3, "min_volume_mm3": 0.0}
    torch.save(state, checkpoint)
    return data, checkpoint


def _check_schema(result: dict) -> None:
    assert {"schema_version", "lesions", "input", "model", "outputs", "timing_s"} <= set(result)
    assert TIMING_KEYS <= set(result["timing_s"])
    assert all(v >= 0 for v in result["timing_s"].values())
    assert result["timing_s"]["total"] >= result["timing_s"]["inference"]
    assert result["model"]["mirroring"] in MIRRORINGS and result["model"]["tta"] == (result["model"]["mirroring"] != "none")
    scores = [lesion["score"] for lesion in result["lesions"]]
    assert scores == sorted(scores, reverse=True)
    for lesion in result["lesions"]:
        assert set(lesion) == LESION_KEYS
        assert len(lesion["center_mm"]) == 3 and lesion["diameter_mm"] > 0 and 0 < lesion["score"] <= 1


def test_predict_dicom_writes_every_output(phantom_and_model, tmp_path):
    data, checkpoint = phantom_and_model
    case = data / "dicom" / "phantom_0000"
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "meddet", "predict", str(case), "-o", str(out), "--model", str(checkpoint), "--threads", "2",
                             "--tta"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lesions = json.loads((out / "lesions.json").read_text())
    _check_schema(lesions)
    assert lesions["model"]["mirroring"] == "xyz"
    source = read_volume(case)
    mask = read_volume(out / "mask.nii.gz")
    assert mask.same_geometry(source, atol=1e-3)
    assert set(np.unique(mask.array)) == {0, *[l["id"] for l in lesions["lesions"]]}
    assert (out / "overlay.png").stat().st_size > 1000
    if lesions["lesions"]:
        seg = pydicom.dcmread(out / "seg.dcm")
        assert seg.Modality == "SEG"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.metadata["series_uid"]


def test_probability_is_on_the_input_grid_and_zero_outside_lungs(phantom_and_model):
    data, checkpoint = phantom_and_model
    volume = read_volume(data / "imagesTr" / "phantom_0001_0000.nii.gz")
    probability, timings = predict_probability(load_model(checkpoint), [volume])
    assert probability.same_geometry(volume)
    assert probability.array.dtype == np.float32
    assert 0.0 <= probability.array.min() and probability.array.max() <= 1.0
    assert probability.array[:, :3, :3].max() == 0.0  # image corner: air outside the lung box
    assert set(timings) == {"preprocess", "inference", "resample"}


def test_mirroring_x_makes_the_probability_left_right_symmetric(phantom_and_model):
    """Averaging a scan with its left-right mirror: mirroring the input mirrors the output (a single pass does not).

    The x size (144 = 96 + 48) tiles into two windows that mirror onto each other, so only the network differs."""
    _, checkpoint = phantom_and_model
    model = load_model(checkpoint, "fp32")
    image = np.random.default_rng(0).normal(size=(1, 32, 96, 144)).astype(np.float32)
    mirrored = np.ascontiguousarray(image[..., ::-1])
    for mirroring, symmetric in (("x", True), ("none", False)):
        p = lesion_probability(model, image, mirroring)
        q = lesion_probability(model, mirrored, mirroring)[..., ::-1]
        assert np.allclose(p, q, atol=1e-4) == symmetric, mirroring
    with pytest.raises(ValueError, match="Unknown mirroring"):
        lesion_probability(model, image, "zx")


def test_model_mirroring_is_the_default_and_a_bad_one_is_refused(phantom_and_model, tmp_path):
    _, checkpoint = phantom_and_model
    assert load_model(checkpoint).mirroring == "none"  # a `meddet train` checkpoint
    state = torch.load(checkpoint, weights_only=False)
    for mirroring in ("x", "upside-down"):
        state["inference"] = {"mirroring": mirroring}
        torch.save(state, tmp_path / f"{mirroring}.pt")
    assert load_model(tmp_path / "x.pt").mirroring == "x"
    result = subprocess.run([sys.executable, "-m", "meddet", "predict", str(tmp_path), "-o", str(tmp_path / "o"), "--model",
                             str(tmp_path / "upside-down.pt")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown test-time mirroring" in result.stderr and "Traceback" not in result.stderr


def test_folder_of_cases_writes_one_folder_each(phantom_and_model, tmp_path):
    data, checkpoint = phantom_and_model
    assert [name for name, _ in find_cases(data / "imagesTr")] == ["phantom_0000_0000", "phantom_0001_0000"]
    assert find_cases(data / "dicom" / "phantom_0000") is None  # a series folder is one case
    (data / "imagesTr" / "broken.nii.gz").write_bytes(b"not an image")
    try:
        result = subprocess.run([sys.executable, "-m", "meddet", "predict", str(data / "imagesTr"), "-o", str(tmp_path / "o"), "--model", str(checkpoint)],
                                capture_output=True, text=True, timeout=600)
    finally:
        (data / "imagesTr" / "broken.nii.gz").unlink()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (tmp_path / "o" / "broken" / "error.txt").exists()  # a bad case is reported, the others still done
    for name in ("phantom_0000_0000", "phantom_0001_0000"):
        _check_schema(json.loads((tmp_path / "o" / name / "lesions.json").read_text()))


def test_bad_model_path_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"nonsense")
    result = subprocess.run([sys.executable, "-m", "meddet", "predict", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(bogus)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a meddet model" in result.stderr and "Traceback" not in result.stderr


def test_a_scan_without_air_is_refused_as_not_ct(phantom_and_model, tmp_path):
    # an MR image, or a CT stored without its rescale intercept (air at 0): probabilities would be garbage
    data, checkpoint = phantom_and_model
    scan = read_volume(data / "imagesTr" / "phantom_0000_0000.nii.gz")
    write_volume(scan.with_array(np.asarray(scan.array, dtype=np.int16) + 1024), tmp_path / "no_intercept.nii.gz")
    result = subprocess.run([sys.executable, "-m", "meddet", "predict", str(tmp_path / "no_intercept.nii.gz"), "-o",
                             str(tmp_path / "o"), "--model", str(checkpoint)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not look like a CT" in result.stderr and not (tmp_path / "o" / "lesions.json").exists()


def test_thick_slices_are_warned_about_in_lesions_json_and_the_log(phantom_and_model, tmp_path):
    # small nodules fade on thick slices (model card, "Sensitivity by slice thickness"): the output says so
    data, checkpoint = phantom_and_model
    scan = read_volume(data / "imagesTr" / "phantom_0000_0000.nii.gz")
    for name, slice_mm in (("thin", 1.0), ("thick", 4.0)):
        spacing = (*scan.spacing[:2], slice_mm)
        write_volume(Volume(np.asarray(scan.array), spacing, scan.origin, scan.direction), tmp_path / "in" / f"{name}.nii.gz")
    result = subprocess.run([sys.executable, "-m", "meddet", "predict", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                             "--model", str(checkpoint), "--no-tta"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    thick = json.loads((tmp_path / "o" / "thick" / "lesions.json").read_text())["input"]["warnings"]
    thin = json.loads((tmp_path / "o" / "thin" / "lesions.json").read_text())["input"]["warnings"]
    assert any("Voxels 4.00 mm long" in w and "under 6 mm" in w for w in thick)
    assert not any("Voxels" in w for w in thin)
    logged = " ".join(result.stderr.split())  # the log handler wraps long lines
    assert "WARNING thick.nii.gz: Voxels 4.00 mm long" in logged and "thin.nii.gz:" not in logged
