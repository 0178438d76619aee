"""The synthetic chest CT generator: exact ground truth, reproducibility, file formats, tissue values, statistics.

All cases here are ``small`` (256×256) so the module runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from meddet.errors import MeddetInputError
from meddet.phantom import (
    KINDS,
    LOCATIONS,
    SHAPES,
    TISSUE,
    case_seed,
    generate_case,
    generate_dataset,
    plan_case,
    sample_lesion_specs_for_seed,
)
from meddet.phantom.case import _ground_truth
from meddet.phantom.nodules import LesionSpec, build_nodule, nodule_occupancy

# A seed whose small case has several nodules of different kinds (checked when the test was written; the
# fixture asserts it so a generator change that removes them is noticed rather than silently testing nothing).
SEED_WITH_NODULES = 40


def _find_seed_with_nodules() -> int:
    for s in range(SEED_WITH_NODULES, SEED_WITH_NODULES + 200):
        if len(sample_lesion_specs_for_seed(s)) >= 3:
            return s
    raise AssertionError("no seed with 3 nodules in 200: the count distribution is broken")


@pytest.fixture(scope="module")
def case():
    return generate_case(_find_seed_with_nodules(), small=True, pet=True, keep_noiseless=True)


def _centre_index(vol, lesion) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.rint(vol.lps_to_index_zyx([lesion["center_mm"]])[0]))


# ---------------------------------------------------------------------------------------------------- ground truth
def test_case_has_lesions_and_expected_types(case):
    assert len(case.lesions) >= 2, "the fixture seed should give a case with several nodules"
    assert case.image.array.dtype == np.int16
    assert case.labels.array.dtype in (np.uint8, np.uint16)
    assert case.image.same_geometry(case.labels)
    for lesion in case.lesions:
        assert lesion["type"] in KINDS and lesion["location"] in LOCATIONS and lesion["shape"] in SHAPES
        assert 2.0 <= lesion["diameter_mm"] <= 40.0


def test_every_lesion_centre_lies_on_its_own_label(case):
    for lesion in case.lesions:
        idx = _centre_index(case.labels, lesion)
        assert case.labels.array[idx] == lesion["id"], lesion


def test_label_ids_match_lesion_list(case):
    ids = set(np.unique(case.labels.array).tolist()) - {0}
    assert ids == {lesion["id"] for lesion in case.lesions}
    for lesion in case.lesions:
        assert int((case.labels.array == lesion["id"]).sum()) == lesion["n_voxels"]


def test_lesion_volumes_match_voxel_counts(case):
    voxel_ml = float(np.prod(case.image.spacing)) / 1000.0
    for lesion in case.lesions:
        counted = int((case.labels.array == lesion["id"]).sum()) * voxel_ml
        rel = abs(counted - lesion["volume_ml"]) / lesion["volume_ml"]
        # partial volume: the ≥ half rule gains and loses boundary voxels about equally
        assert rel < (0.15 if lesion["n_voxels"] >= 50 else 0.5), (lesion, counted)
        d = (6 * lesion["volume_ml"] * 1000 / math.pi) ** (1 / 3)
        assert d == pytest.approx(lesion["diameter_mm"], rel=1e-3)


def test_occupancy_of_a_sphere_is_exact():
    """The supersampled occupancy of a sphere deep in the lung sums to its analytic volume."""
    plan = plan_case(3, small=True)
    an, geom = plan.anatomy, plan.geometry
    grid = geom.grid(1)
    rng = np.random.default_rng(0)
    pts, d = an.sample_lung_points(rng, 2000, max_depth=12.0)
    centre_idx = grid.to_index(pts)
    nz, ny, nx = grid.shape
    inside = np.all((centre_idx > 8) & (centre_idx < np.array([nx, ny, nz]) - 8), axis=1)
    assert inside.any()
    centre = pts[np.argmax(inside)]
    for diameter in (5.0, 9.0, 16.0):
        nod = build_nodule(rng, 1, LesionSpec(diameter, "solid", "sphere", "parenchymal"), centre)
        box, occ = nodule_occupancy(nod, an, grid, geom.spacing)
        vol = float(occ.sum()) * geom.voxel_volume_mm3
        assert vol == pytest.approx(math.pi / 6 * diameter**3, rel=0.03)


def test_nodules_never_leave_the_lung(case):
    assert case.lung_mask is not None and case.lung_mask.array.any()
    nodule = case.labels.array > 0
    assert nodule.any()
    assert not np.any(nodule & (case.lung_mask.array == 0))


def test_placed_nodule_centres_are_inside_the_lungs():
    for k in range(3):
        plan = plan_case(case_seed(11, k), small=True)
        for nod in plan.nodules:
            d = plan.anatomy.lung_sdf_points(nod.center[None])[0]
            assert d < 0, (nod.spec, d)


# ---------------------------------------------------------------------------------------------------- tissue values
def _eroded(mask: np.ndarray, it: int = 2) -> np.ndarray:
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool), iterations=it)


def test_tissue_hu_ranges_in_noiseless_image(case):
    hu, tis = case.noiseless.array, case.tissue.array
    expect = {  # median HU ranges from the spec (before noise; PSF blur shifts small structures, so median)
        "lung": (-920, -760),
        "fat": (-130, -70),
        "soft_tissue": (20, 70),
        "air": (-1001, -990),
    }
    for name, (lo, hi) in expect.items():
        m = _eroded(tis == TISSUE[name])
        assert m.sum() > 100, name
        med = float(np.median(hu[m]))
        assert lo <= med <= hi, (name, med)
    bone = _eroded(tis == TISSUE["bone"], 1)
    assert np.percentile(hu[bone], 95) > 500  # cortical rims
    assert 150 < np.median(hu[bone]) < 700  # mostly cancellous


def test_noise_level_matches_the_model(case):
    noise = case.image.array.astype(np.float32) - case.noiseless.array
    body = _eroded(np.isin(case.tissue.array, [TISSUE["soft_tissue"], TISSUE["fat"], TISSUE["organ"]]))
    sigma = float(noise[body].std())
    nominal = case.info["noise_sigma_hu"]
    assert 0.6 * nominal <= sigma <= 1.1 * nominal, (sigma, nominal)


def test_pet_channel(case):
    pet = case.pet
    assert pet is not None and pet.array.dtype == np.float32
    assert pet.same_geometry(case.image)
    assert float(pet.array.min()) >= 0
    lung = _eroded(case.lung_mask.array > 0, 3)
    soft = _eroded(np.isin(case.tissue.array, [TISSUE["organ"], TISSUE["soft_tissue"]]), 3)
    assert pet.array[lung].mean() < 0.9
    assert pet.array[lung].mean() < pet.array[soft].mean()


# ---------------------------------------------------------------------------------------------------- reproducibility
def test_same_seed_same_case_different_seed_different_case(case):
    again = generate_case(case.info["seed"], small=True, pet=True)
    assert np.array_equal(again.image.array, case.image.array)
    assert np.array_equal(again.labels.array, case.labels.array)
    assert np.array_equal(again.pet.array, case.pet.array)
    assert again.lesions == case.lesions
    assert again.image.same_geometry(case.image)
    other = plan_case(case.info["seed"] + 1, small=True)
    assert (other.geometry.shape, other.geometry.spacing) != (tuple(case.info["shape"]), tuple(case.info["spacing"])) \
        or other.anatomy.p != plan_case(case.info["seed"], small=True).anatomy.p


# ---------------------------------------------------------------------------------------------------- files
def test_dataset_files_dicom_equals_nifti(tmp_path):
    out = generate_dataset(tmp_path / "ds", 1, seed=7, small=True)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == {"background": 0, "nodule": 1}
    assert ds["numTraining"] == 1 and ds["file_ending"] == ".nii.gz"
    assert ds["generator"]["version"] == "phantom-spec-v1"
    nifti = sitk.ReadImage(str(out / "imagesTr" / "phantom_0000_0000.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / "dicom" / "phantom_0000")))
    dicom = reader.Execute()
    a_n, a_d = sitk.GetArrayFromImage(nifti), sitk.GetArrayFromImage(dicom)
    assert a_n.shape == a_d.shape
    assert np.array_equal(a_n.astype(np.int32), a_d.astype(np.int32))
    assert np.allclose(nifti.GetSpacing(), dicom.GetSpacing(), atol=1e-4)
    assert np.allclose(nifti.GetOrigin(), dicom.GetOrigin(), atol=1e-3)
    assert np.allclose(nifti.GetDirection(), dicom.GetDirection(), atol=1e-5)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "phantom_0000.nii.gz")))
    inst = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "instances" / "phantom_0000.nii.gz")))
    assert set(np.unique(lab).tolist()) <= {0, 1}
    assert np.array_equal(lab > 0, inst > 0)
    record = json.loads((out / "lesions" / "phantom_0000.json").read_text(encoding="utf-8"))
    assert {les["id"] for les in record["lesions"]} == set(np.unique(inst).tolist()) - {0}
    assert record["shape"] == list(a_n.shape)
    # the same seed gives byte-identical DICOM (UIDs included)
    out2 = generate_dataset(tmp_path / "ds2", 1, seed=7, small=True)
    first = sorted((out / "dicom" / "phantom_0000").iterdir())[0]
    assert first.read_bytes() == (out2 / "dicom" / "phantom_0000" / first.name).read_bytes()


def test_tilted_case_keeps_ground_truth_consistent():
    c = generate_case(SEED_WITH_NODULES, small=True, tilt_deg=15.0)
    assert not c.image.is_orthogonal
    assert c.image.direction[2, 1] == pytest.approx(math.sin(math.radians(15.0)))
    for lesion in c.lesions:
        assert c.labels.array[_centre_index(c.labels, lesion)] == lesion["id"]


# ---------------------------------------------------------------------------------------------------- statistics
def test_lesion_statistics_vary():
    specs = [sample_lesion_specs_for_seed(s) for s in range(300)]
    counts = Counter(len(s) for s in specs)
    assert counts[0] / len(specs) >= 0.20
    assert max(counts) <= 6 and len(counts) >= 5
    flat = [x for s in specs for x in s]
    assert {x.kind for x in flat} == set(KINDS)
    assert {x.shape for x in flat} == set(SHAPES)
    assert {x.location for x in flat} == set(LOCATIONS)
    d = np.array([x.diameter_mm for x in flat])
    assert d.min() >= 3.0 and d.max() <= 35.0
    assert 0.5 <= np.mean((d >= 4) & (d <= 12)) <= 0.9
    assert np.any(d > 30)


def test_ground_truth_over_several_plans_has_empty_and_varied_cases():
    sizes, n_lesions = [], []
    for k in range(10):
        plan = plan_case(case_seed(2, k), small=True)
        labels, kept = _ground_truth(plan)
        n_lesions.append(len(kept))
        sizes += [n.spec.diameter_mm for n, _, _ in kept]
        assert set(np.unique(labels).tolist()) - {0} == {n.id for n, _, _ in kept}
    assert 0 in n_lesions
    assert len(set(np.round(sizes))) >= 3


def test_append_adds_a_run_after_existing_cases(tmp_path):
    out = generate_dataset(tmp_path / "ds", 1, seed=7, small=True, dicom=False)
    generate_dataset(out, 1, seed=8, small=True, dicom=False, append=True, large_mass_probability=1.0)
    ds = json.loads((out / "dataset.json").read_text())
    assert [r.get("large_mass_probability", 0.0) for r in ds["generator"]["runs"]] == [0.0, 1.0]
    assert ds["numTraining"] == 2
    assert [t["label"] for t in ds["training"]] == ["./labelsTr/phantom_0000.nii.gz", "./labelsTr/phantom_0001.nii.gz"]
    assert [(r["seed"], r["first_case"]) for r in ds["generator"]["runs"]] == [(7, "phantom_0000"), (8, "phantom_0001")]
    first = json.loads((out / "lesions" / "phantom_0000.json").read_text())
    second = json.loads((out / "lesions" / "phantom_0001.json").read_text())
    assert first["seed"] == case_seed(7, 0) and second["seed"] == case_seed(8, 0)
    with pytest.raises(MeddetInputError, match="channels"):
        generate_dataset(out, 1, seed=9, small=True, pet=True, dicom=False, append=True)


# ---------------------------------------------------------------------------------------------------- beyond the spec
def test_large_masses_are_opt_in_and_leave_the_spec_draws_alone():
    seeds = range(100)
    with_masses = [sample_lesion_specs_for_seed(s, large_mass_probability=1.0) for s in seeds]
    for s, specs in zip(seeds, with_masses):
        spec_draws = sample_lesion_specs_for_seed(s)
        assert sample_lesion_specs_for_seed(s, large_mass_probability=0.0) == spec_draws
        assert specs[1:] == spec_draws  # the mass comes first, from its own stream
        mass = specs[0]
        assert 35.0 <= mass.diameter_mm <= 70.0
        assert mass.kind in ("solid", "part-solid") and mass.shape != "sphere"
    assert {specs[0].location for specs in with_masses} == {"juxtapleural", "parenchymal"}
    half = [len(sample_lesion_specs_for_seed(s, 0.5)) - len(sample_lesion_specs_for_seed(s)) for s in seeds]
    assert 30 <= sum(half) <= 70


def test_small_nodules_are_opt_in_and_come_after_the_spec_draws():
    seeds = range(100)
    extra = []
    for s in seeds:
        spec_draws = sample_lesion_specs_for_seed(s)
        assert sample_lesion_specs_for_seed(s, small_nodules=0) == spec_draws
        specs = sample_lesion_specs_for_seed(s, small_nodules=3)
        assert specs[:len(spec_draws)] == spec_draws and len(specs) == len(spec_draws) + 3
        extra += specs[len(spec_draws):]
    assert all(3.0 <= x.diameter_mm <= 6.0 and x.kind in ("solid", "ground-glass") for x in extra)
    locations = Counter(x.location for x in extra)
    assert 0.5 < locations["juxtavascular"] / len(extra) < 0.7
    assert set(locations) == {"juxtavascular", "parenchymal", "perifissural", "juxtapleural"}
    assert 0.4 < sum(x.kind == "solid" for x in extra) / len(extra) < 0.6


def test_extra_small_nodules_are_placed_and_leave_the_spec_nodules_where_they_were():
    for k in range(10):
        seed = case_seed(11, k)
        plain = plan_case(seed, small=True)
        if plain.nodules:
            break
    else:
        raise AssertionError("no nodule placed in 10 small cases")
    richer = plan_case(seed, small=True, small_nodules=4)
    assert len(richer.nodules) > len(plain.nodules)
    for before, after in zip(plain.nodules, richer.nodules):
        assert before.spec == after.spec
        np.testing.assert_allclose(before.center, after.center)
    added = richer.nodules[len(plain.nodules):]
    assert all(n.spec.diameter_mm <= 6.0 for n in added)
    labels, kept = _ground_truth(richer)
    added_with_voxels = {n.id for n in added} & set(np.unique(labels).tolist()) & {n.id for n, _, _ in kept}
    assert added_with_voxels, "none of the extra small nodules made it into the ground truth"


def test_a_placed_large_mass_has_ground_truth_beyond_35_mm():
    for k in range(20):
        plan = plan_case(case_seed(5, k), small=True, large_mass_probability=1.0)
        if plan.nodules and plan.nodules[0].spec is plan.specs[0]:
            break
    else:
        raise AssertionError("no large mass placed in 20 small cases: placement of masses is broken")
    labels, kept = _ground_truth(plan)
    mass_id = plan.nodules[0].id
    spacing = plan.geometry.spacing
    volume_mm3 = float(np.sum(labels == mass_id)) * spacing[0] * spacing[1] * spacing[2]
    assert (6 * volume_mm3 / math.pi) ** (1 / 3) > 30.0
    assert mass_id in {n.id for n, _, _ in kept}
