"""Calibration's choice of post-processing: best CPM up to noise, then the tightest setting."""

from meddet.inference.export import CPM_TOLERANCE, choose_setting


def _g(threshold, min_volume, cpm):
    return {"threshold": threshold, "min_volume_mm3": min_volume, "cpm": cpm}


def test_choose_setting_prefers_the_highest_threshold_within_the_tolerance():
    grid = [_g(0.1, 0.0, 0.490), _g(0.6, 0.0, 0.490 - CPM_TOLERANCE / 2), _g(0.6, 10.0, 0.490 - CPM_TOLERANCE / 2),
            _g(0.8, 0.0, 0.490 - 2 * CPM_TOLERANCE)]
    assert choose_setting(grid) == grid[1]  # 0.8 is clearly worse; of the 0.6 pair the smaller minimum volume
    assert choose_setting([_g(0.3, 0.0, 0.7), _g(0.5, 0.0, 0.5)]) == _g(0.3, 0.0, 0.7)


def test_export_model_calibrates_on_validation_cases_and_loads_back(tmp_path):
    """A tiny run exported end to end: the stored post-processing is one of the searched settings and loads back."""
    from test_training import _plan

    from meddet.inference.export import MIN_VOLUMES_MM3, THRESHOLDS, export_model
    from meddet.inference.predictor import load_model
    from meddet.training.trainer import CHECKPOINT_LAST, train

    train(_plan(tmp_path), tmp_path / "run", num_workers=0, show_progress=False)
    exported = export_model(tmp_path / "run" / CHECKPOINT_LAST, tmp_path / "model.pt", "tiny", "0.0.1", mirroring="x")
    calibration = exported["provenance"]["calibration"]
    assert len(calibration["grid"]) == len(THRESHOLDS) * len(MIN_VOLUMES_MM3)
    assert calibration["validation_cases"] and "optimizer" not in exported
    best = calibration["best"]
    assert best in calibration["grid"] and best["cpm"] >= max(g["cpm"] for g in calibration["grid"]) - CPM_TOLERANCE
    # a one-stage export keeps the outlines it finds (no outline_threshold: meddet.detection.lesions.refine_outlines)
    # and has no coarse pass for masses (a setting chosen on masses, not by calibration)
    assert exported["postprocessing"] == {"threshold": best["threshold"], "min_volume_mm3": best["min_volume_mm3"],
                                          "outline_threshold": None, "mass_zoom": None, "mass_min_diameter_mm": None}
    assert calibration["mirroring"] == "x"  # the threshold is calibrated with the mirroring the model will run with
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.postprocessing == exported["postprocessing"] and loaded.mirroring == "x"


def test_export_model_refuses_an_unknown_mirroring(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "meddet", "export-model", str(tmp_path / "run.pt"), "--out", str(tmp_path / "m.pt"),
                             "--mirroring", "zx"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Unknown mirroring 'zx'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()
