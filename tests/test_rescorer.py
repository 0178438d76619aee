"""The second stage: cubes in patient orientation, hit labels, score combination, training, calibration, predict."""

import numpy as np
import pytest
import torch

from meddet.detection.crops import AIR_HU, CROP_VOXELS, crops_around
from meddet.detection.lesions import extract_lesions
from meddet.detection.rescorer import COMBINATIONS, Rescorer, build_classifier, classify, combine
from meddet.training.candidates import CANDIDATE_THRESHOLDS, hit_diameters
from meddet.volume import Volume


def _ball_volume(direction, spacing, shape=(30, 50, 60), ball_index=(12, 20, 35), radius_mm=4.0):
    """A -800 HU volume with a 4 mm-radius 100 HU ball; returns it and the ball's LPS centre."""
    volume = Volume(np.full(shape, -800, np.int16), spacing=spacing, origin=(10.0, -20.0, 5.0), direction=direction)
    centre = volume.index_zyx_to_lps(np.array(ball_index, float))[0]
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    points = volume.index_zyx_to_lps(np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1).astype(float))
    inside = np.linalg.norm(points - centre, axis=1).reshape(shape) <= radius_mm
    volume.array[inside] = 100
    return volume, centre


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),
                                       np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])])
def test_cube_is_centred_on_the_candidate_in_patient_orientation(direction):
    """Flipped and oblique grids alike: the ball sits at the cube's centre, the cube axes are S, P, L."""
    volume, centre = _ball_volume(direction, spacing=(0.7, 0.8, 2.5))
    cube = crops_around(volume, centre[None])[0]
    assert cube.shape == (CROP_VOXELS,) * 3
    middle = (CROP_VOXELS - 1) / 2
    bright = np.argwhere(cube > -350)
    assert np.allclose(bright.mean(axis=0), middle, atol=0.75)
    # a point 10 mm to the patient's left (+x in LPS) of the ball lands 10 voxels along the cube's last axis
    shifted = crops_around(volume, (centre + [-10.0, 0.0, 0.0])[None])[0]
    assert np.allclose(np.argwhere(shifted > -350).mean(axis=0), [middle, middle, middle + 10], atol=0.75)


def test_cube_outside_the_scan_is_air():
    volume, centre = _ball_volume(np.eye(3), spacing=(1.0, 1.0, 1.0))
    far = crops_around(volume, (centre + [500.0, 0.0, 0.0])[None])[0]
    assert np.all(far == AIR_HU)
    assert crops_around(volume, np.zeros((0, 3))).shape == (0, CROP_VOXELS, CROP_VOXELS, CROP_VOXELS)


def test_lesions_wider_than_the_zoom_limit_are_seen_zoomed_out_to_that_width():
    """A 16 mm ball reported as 16 mm wide, with the limit at 8 mm: its cube is taken at 2 mm, so the ball looks
    8 mm wide, as a 4 mm-radius ball does at 1 mm; a lesion under the limit keeps its 1 mm cube."""
    volume, centre = _ball_volume(np.eye(3), spacing=(1.0, 1.0, 1.0), shape=(60, 60, 60), ball_index=(30, 30, 30),
                                  radius_mm=8.0)
    lesion = {"center_mm": list(centre), "score": 0.9}
    plain = Rescorer(build_classifier().eval(), "mean", 0.05)
    zoomed = Rescorer(build_classifier().eval(), "mean", 0.05, zoom_above_mm=8.0)
    wide = zoomed.cubes(volume, [{**lesion, "diameter_mm": 16.0}])[0]
    assert np.array_equal(wide, crops_around(volume, centre[None], spacing_mm=2.0)[0])
    bright = np.sum(wide > -350) * 2.0 ** 3
    assert bright == pytest.approx(4 / 3 * np.pi * 8.0 ** 3, rel=0.2)  # the ball, at 2 mm voxels
    assert np.sum(wide > -350) == pytest.approx(4 / 3 * np.pi * 4.0 ** 3, rel=0.25)  # voxels: a 4 mm-radius ball's
    narrow = zoomed.cubes(volume, [{**lesion, "diameter_mm": 6.0}])[0]
    assert np.array_equal(narrow, plain.cubes(volume, [{**lesion, "diameter_mm": 16.0}])[0])
    assert np.array_equal(narrow, crops_around(volume, centre[None])[0])


def test_hit_diameters_use_the_evaluation_hit_rule():
    truth = [{"center_mm": [0, 0, 0], "diameter_mm": 4.0}, {"center_mm": [50, 0, 0], "diameter_mm": 12.0}]
    centres = np.array([[2.9, 0, 0], [3.1, 0, 0], [55.9, 0, 0], [56.1, 0, 0], [25, 0, 0]])
    # a 4 mm nodule is hit within 3 mm (LUNA16's floor for small nodules), a 12 mm one within its 6 mm radius
    assert hit_diameters(centres, truth).tolist() == [4.0, 0.0, 12.0, 0.0, 0.0]
    assert hit_diameters(centres, []).tolist() == [0.0] * 5


def test_combinations():
    first, second = np.array([0.25, 1.0]), np.array([1.0, 0.04])
    assert combine(first, second, "first").tolist() == [0.25, 1.0]
    assert combine(first, second, "second").tolist() == [1.0, 0.04]
    assert np.allclose(combine(first, second, "geometric"), [0.5, 0.2])
    assert np.allclose(combine(first, second, "mean"), [0.625, 0.52])
    with pytest.raises(ValueError, match="Unknown combination"):
        combine(first, second, "max")
    assert set(COMBINATIONS) == {"first", "second", "geometric", "mean"}


def test_rescore_drops_low_final_scores_from_list_and_mask():
    """Kept lesions are renumbered 1..N by final score and the mask holds exactly their ids."""
    volume, centre = _ball_volume(np.eye(3), spacing=(1.0, 1.0, 1.0))
    probability = np.zeros(volume.shape, np.float32)
    probability[10:14, 18:22, 33:37] = 0.9
    probability[20:23, 40:43, 10:13] = 0.4
    lesions, instances = extract_lesions(volume.with_array(probability), 0.1)
    torch.manual_seed(0)
    rescorer = Rescorer(build_classifier().eval(), "geometric", 0.1)
    second = classify(rescorer.network, crops_around(volume, np.array([l["center_mm"] for l in lesions])))
    kept, mask = rescorer.rescore(lesions, instances, volume, threshold=0.0)
    assert len(kept) == 2 and [l["id"] for l in kept] == [1, 2]
    assert sorted(np.unique(mask.array[mask.array > 0]).tolist()) == [1, 2]
    expected = sorted(np.sqrt(np.array([0.9, 0.4]) * second), reverse=True)
    assert np.allclose([l["score"] for l in kept], expected, atol=1e-4)
    assert {l["candidate_score"] for l in kept} == {0.9, 0.4}
    cut = (expected[0] + expected[1]) / 2
    kept, mask = rescorer.rescore(lesions, instances, volume, threshold=cut)
    assert len(kept) == 1 and kept[0]["id"] == 1 and np.unique(mask.array).tolist() == [0, 1]
    assert (mask.array == 1).sum() == (instances.array == [l for l in lesions if l["score"] == kept[0]["candidate_score"]][0]["id"]).sum()


def test_train_rescorer_end_to_end(tmp_path):
    """A tiny first stage, its candidates, a few classifier steps, calibration, a model file that predicts."""
    from test_training import _plan

    from meddet.inference.export import export_model
    from meddet.inference.pipeline import predict_scan
    from meddet.inference.predictor import load_model
    from meddet.training.rescorer import train_rescorer
    from meddet.training.trainer import CHECKPOINT_LAST, train

    plan = _plan(tmp_path)
    train(plan, tmp_path / "run", num_workers=0, show_progress=False)
    export_model(tmp_path / "run" / CHECKPOINT_LAST, tmp_path / "first.pt", "tiny", "0.0.1")
    state = train_rescorer(tmp_path / "first.pt", tmp_path / "two.pt", iterations=4, log=lambda m: None,
                           texture_probability=0.5)
    assert state["provenance"]["rescorer"]["training"]["texture_probability"] == 0.5
    calibration = state["provenance"]["rescorer"]["calibration"]
    best = calibration["best"]
    assert best in calibration["grid"] and best["cpm"] == pytest.approx(max(g["cpm"] for g in calibration["grid"]), abs=0.011)
    assert {g["candidate_threshold"] for g in calibration["grid"]} == set(CANDIDATE_THRESHOLDS)
    assert state["postprocessing"]["threshold"] == best["threshold"] and state["version"] == "0.0.1+rescorer"
    candidates = tmp_path / "data" / "candidates" / "tiny-0.0.1"
    assert len(list(candidates.glob("*.npz"))) == 4  # every case: training and validation
    model = load_model(tmp_path / "two.pt")
    assert model.rescorer is not None and model.rescorer.combination == best["combination"]
    result = predict_scan(model, tmp_path / "data" / "imagesTr" / "case0_0000.nii.gz", tmp_path / "pred")
    assert result["schema_version"] == "1.4" and result["model"]["rescorer"]["combination"] == best["combination"]
    for lesion in result["lesions"]:
        assert {"candidate_score", "classifier_score"} <= set(lesion) and lesion["score"] >= best["threshold"]
    assert result["model"]["outline_threshold"] is None
    # the same model with an outline level: the same findings (scores), outlines inside the candidate regions
    state["postprocessing"]["outline_threshold"] = 0.5
    torch.save(state, tmp_path / "outlined.pt")
    outlined = predict_scan(load_model(tmp_path / "outlined.pt"), tmp_path / "data" / "imagesTr" / "case0_0000.nii.gz",
                            tmp_path / "pred-outlined")
    assert outlined["model"]["outline_threshold"] == 0.5 and outlined["lesions"]
    assert [l["score"] for l in outlined["lesions"]] == [l["score"] for l in result["lesions"]]
    assert all(a["volume_ml"] <= b["volume_ml"] for a, b in zip(outlined["lesions"], result["lesions"]))
    from meddet.io import read_volume

    wide = np.asarray(read_volume(tmp_path / "pred" / "mask.nii.gz").array) > 0
    narrow = np.asarray(read_volume(tmp_path / "pred-outlined" / "mask.nii.gz").array) > 0
    assert not (narrow & ~wide).any() and narrow.sum() < wide.sum()
    from meddet.errors import MeddetInputError

    with pytest.raises(MeddetInputError, match="already has a second stage"):
        train_rescorer(tmp_path / "two.pt", tmp_path / "three.pt", iterations=1, log=lambda m: None)


def test_negatives_lie_on_dense_lung_tissue_away_from_nodules():
    """A body with two air-filled lungs, a vessel in each and a nodule on one: negatives sit on the vessels (the
    only dense tissue inside the lungs) and keep their distance from the nodule."""
    from meddet.training.candidates import NEGATIVE_CLEARANCE_MM, sample_negatives

    shape = (40, 64, 96)
    array = np.full(shape, -1000, np.int16)
    array[2:-2, 6:-6, 6:-6] = 20  # body
    array[5:-5, 14:-14, 12:44] = -850  # right lung
    array[5:-5, 14:-14, 52:84] = -850  # left lung
    array[5:-5, 30:33, 26:29] = 40  # a vessel running head to foot through each lung
    array[5:-5, 30:33, 66:69] = 40
    array[18:23, 28:35, 64:71] = 40  # a nodule on the left vessel
    volume = Volume(array, spacing=(1.0, 1.0, 1.0))
    nodule = {"center_mm": volume.index_zyx_to_lps(np.array([20.0, 31.0, 67.0]))[0].tolist(), "diameter_mm": 7.0}
    points = sample_negatives(volume, [nodule], 30, seed=0)
    assert len(points) == 30
    index = volume.lps_to_index_zyx(points)
    assert np.all(np.isin(np.round(index[:, 1]), [30, 31, 32]))
    assert np.all(np.isin(np.round(index[:, 2]), [26, 27, 28, 66, 67, 68]))
    assert np.all(np.linalg.norm(points - nodule["center_mm"], axis=1) > 3.5 + NEGATIVE_CLEARANCE_MM)
    assert np.array_equal(points, sample_negatives(volume, [nodule], 30, seed=0))  # seeded: the cache is reproducible


def test_rescorer_setting_is_the_best_pipeline_and_the_middle_of_its_tied_thresholds():
    from meddet.training.rescorer import choose_rescorer_setting

    def g(candidates, how, threshold, cpm):
        return {"candidate_threshold": candidates, "combination": how, "threshold": threshold, "cpm": cpm}

    grid = [g(0.05, "mean", t, 0.9) for t in (0.0, 0.1, 0.2, 0.3, 0.5)] + [g(0.05, "mean", 0.6, 0.8),
            g(0.1, "first", 0.2, 0.85), g(0.1, "geometric", 0.0, 0.895)]
    assert choose_rescorer_setting(grid) == g(0.05, "mean", 0.2, 0.9)  # 0.895 ties on CPM but is another pipeline
    assert choose_rescorer_setting(grid[:2]) == g(0.05, "mean", 0.0, 0.9)  # two middles: the lower
    assert choose_rescorer_setting([g(0.2, "first", 0.2, 0.7), g(0.2, "first", 0.3, 0.5)]) == g(0.2, "first", 0.2, 0.7)


def test_bundled_model_carries_its_calibrated_second_stage():
    """The shipped file's second-stage settings are the ones its stored calibration chose (nothing edited by hand)."""
    from meddet.inference.models import resolve_model
    from meddet.inference.predictor import load_model
    from meddet.training.rescorer import choose_rescorer_setting

    path = resolve_model(None)
    model = load_model(path)
    calibration = torch.load(path, map_location="cpu", weights_only=False)["provenance"]["rescorer"]["calibration"]
    best = choose_rescorer_setting(calibration["grid"])
    assert model.rescorer is not None and calibration["best"] == best
    assert (model.rescorer.candidate_threshold, model.rescorer.combination, model.postprocessing["threshold"]) == (
        best["candidate_threshold"], best["combination"], best["threshold"])


def test_bundled_model_outline_level_is_the_one_its_record_chose():
    """The shipped outline level is the best of the development measurements stored with it (benchmarks/outline_levels.py)."""
    from meddet.inference.models import resolve_model
    from meddet.inference.predictor import load_model

    path = resolve_model(None)
    record = torch.load(path, map_location="cpu", weights_only=False)["provenance"]["outline"]
    best = max(record["mean_dice"], key=record["mean_dice"].get)
    assert load_model(path).postprocessing["outline_threshold"] == float(best)


def test_train_classifier_continues_from_a_given_network():
    """Fine-tuning: the given classifier is the one trained (its weights move), a fresh one otherwise."""
    from meddet.training.rescorer import train_classifier

    rng = np.random.default_rng(0)
    cubes = rng.integers(-1000, 200, (8, CROP_VOXELS, CROP_VOXELS, CROP_VOXELS)).astype(np.int16)
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0], np.float32)
    candidate_fp = np.array([0, 0, 1, 1, 0, 0, 0, 0], bool)
    torch.manual_seed(1)
    given = build_classifier()
    before = {k: v.clone() for k, v in given.state_dict().items()}
    trained = train_classifier(cubes, labels, candidate_fp, iterations=2, batch_size=4, log=lambda m: None, network=given)
    assert trained is given and not trained.training
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    fresh = train_classifier(cubes, labels, candidate_fp, iterations=1, batch_size=4, log=lambda m: None)
    assert fresh is not given


def test_augmented_batch_adds_textured_noise_only_where_asked():
    """augmented_batch adds correlated noise only with a texture probability, and with 0 draws exactly what it drew
    before the option existed."""
    from meddet.training.rescorer import augmented_batch

    def correlation(field: np.ndarray, axis: int) -> float:
        a, b = np.moveaxis(field, axis, 0)[:-1].ravel(), np.moveaxis(field, axis, 0)[1:].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    cubes = np.full((12, CROP_VOXELS, CROP_VOXELS, CROP_VOXELS), -800, np.int16)
    plain_a = augmented_batch(cubes, np.random.default_rng(5))
    plain_b = augmented_batch(cubes, np.random.default_rng(5), texture_probability=0.0)
    textured = augmented_batch(cubes, np.random.default_rng(5), texture_probability=1.0)
    assert np.array_equal(plain_a, plain_b)
    # the plain batch's noise is white; the textured cubes' is correlated in-plane (less so where a faint field
    # drowns in the white noise every cube gets)
    assert max(abs(correlation(cube[0], 2)) for cube in plain_a) < 0.1
    in_plane = [correlation(cube[0], 2) for cube in textured]
    assert min(in_plane) > 0.0 and np.mean(in_plane) > 0.2
