"""The coarse mass pass's merge: masses replace the main-pass parts inside them, everything else keeps its voxels."""

import numpy as np
import pytest

from meddet.detection.lesions import extract_lesions
from meddet.detection.masses import large_components, merge_masses
from meddet.volume import Volume


def _ball(shape, centre, radius):
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


SHAPE = (60, 60, 120)


def _main_pass() -> tuple[list[dict], Volume]:
    """Three main-pass lesions: a part inside the mass (score 0.9), one straddling its edge with most voxels
    outside (0.6), one far away (0.7)."""
    prob = np.zeros(SHAPE, np.float32)
    prob[_ball(SHAPE, (30, 30, 30), 4)] = 0.9  # inside the mass
    prob[_ball(SHAPE, (30, 30, 52), 5)] = 0.6  # centre 2 mm outside the 20 mm-radius mass: a fifth inside
    prob[_ball(SHAPE, (30, 30, 100), 3)] = 0.7  # far away
    return extract_lesions(Volume(prob), 0.5)


def _masses(score: float) -> tuple[list[dict], Volume]:
    prob = np.zeros(SHAPE, np.float32)
    prob[_ball(SHAPE, (30, 30, 30), 20)] = score
    prob[_ball(SHAPE, (30, 30, 100), 2)] = score  # a small component: not a mass
    lesions, instances = extract_lesions(Volume(prob), 0.5)
    return large_components(lesions, instances, min_diameter_mm=35.0)


def test_large_components_keeps_only_wide_ones_in_list_and_map():
    masses, instances = _masses(0.8)
    assert len(masses) == 1 and masses[0]["diameter_mm"] == pytest.approx(40.0, rel=0.05)
    assert set(np.unique(instances.array).tolist()) == {0, masses[0]["id"]}


def test_mass_replaces_its_parts_and_leaves_other_lesions_outside_it():
    lesions, instances = _main_pass()
    masses, mass_instances = _masses(0.8)
    merged, labels = merge_masses(lesions, instances, masses, mass_instances)
    labels = np.asarray(labels.array)
    assert [round(lesion["score"], 2) for lesion in merged] == [0.8, 0.7, 0.6]  # the part at 0.9 is gone
    assert [lesion.get("mass_pass", False) for lesion in merged] == [True, False, False]
    assert [lesion["id"] for lesion in merged] == [1, 2, 3]
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    mass_region = np.asarray(mass_instances.array) > 0
    assert np.all(labels[mass_region] == 1)
    straddling_voxels = [lesion["voxels"] for lesion in lesions if round(lesion["score"], 2) == 0.6][0]
    straddling = merged[2]  # kept without its voxels inside the mass, and measured again
    assert np.sum(labels == 3) == straddling["voxels"] < straddling_voxels
    assert straddling["center_mm"][0] > 52.0
    assert np.sum(labels == 2) == merged[1]["voxels"]


def test_no_masses_leaves_the_lesions_untouched():
    lesions, instances = _main_pass()
    before = [dict(lesion) for lesion in lesions]
    merged, labels = merge_masses(lesions, instances, [], Volume(np.zeros(SHAPE, np.uint16)))
    assert merged == before and labels is instances


def test_the_bundled_model_reports_a_mass_larger_than_its_training_lesions_whole(tmp_path):
    """A 45 mm soft-tissue mass pasted into a small phantom's lung: the bundled model's coarse pass reports one
    lesion from it, centred on it and about its size, marked as the pass's and ranked by the zoomed classifier as a
    lesion; lesions.json names the pass."""
    from scipy import ndimage

    from meddet.inference.models import resolve_model
    from meddet.inference.pipeline import predict_scan
    from meddet.inference.predictor import load_model
    from meddet.io import write_volume
    from meddet.phantom import generate_case
    from meddet.preprocess.crop import lung_mask

    scan = generate_case(3, small=True).image
    lung = lung_mask(scan)
    depth = ndimage.distance_transform_edt(lung, sampling=scan.spacing_zyx)
    centre = np.unravel_index(np.argmax(depth), depth.shape)
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in scan.shape)]
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre, scan.spacing_zyx)))
    inside = (distance <= 22.5) & ndimage.binary_dilation(lung, iterations=2)
    array = np.where(inside, 40.0 + np.random.default_rng(0).normal(0, 15, scan.shape), scan.array)
    image = scan.with_array(np.round(ndimage.gaussian_filter(array, 0.6)).astype(np.int16))
    write_volume(image, tmp_path / "mass.nii.gz")
    equivalent_mm = float((inside.sum() * np.prod(scan.spacing_zyx) * 6 / np.pi) ** (1 / 3))

    result = predict_scan(load_model(resolve_model(None)), tmp_path / "mass.nii.gz", tmp_path / "out")
    assert result["schema_version"] == "1.4" and result["model"]["mass_zoom"] == 2.0
    assert result["model"]["rescorer"]["zoom_above_mm"] == 24.0
    assert "mass_pass" in result["timing_s"]
    centre_lps = scan.index_zyx_to_lps(np.array([centre], float))[0]
    masses = [lesion for lesion in result["lesions"] if lesion.get("mass_pass")]
    assert len(masses) == 1
    assert np.linalg.norm(np.array(masses[0]["center_mm"]) - centre_lps) < 7.0
    assert masses[0]["diameter_mm"] == pytest.approx(equivalent_mm, rel=0.25)
    assert masses[0]["classifier_score"] > 0.5  # seen zoomed out, as a nodule-sized lesion
    inside_mass = [lesion for lesion in result["lesions"]
                   if np.linalg.norm(np.array(lesion["center_mm"]) - centre_lps) < equivalent_mm / 2]
    assert inside_mass == masses  # no fragment of it reported beside it
