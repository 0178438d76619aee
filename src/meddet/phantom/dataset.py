"""Writing a phantom dataset in the nnU-Net / Medical Segmentation Decathlon layout, plus DICOM and lesion lists.

Layout under ``out_dir``::

    dataset.json
    imagesTr/phantom_XXXX_0000.nii.gz   CT (HU)            _0001.nii.gz  PET (SUV-like), when asked for
    labelsTr/phantom_XXXX.nii.gz        binary nodule mask (0 background, 1 nodule), as nnU-Net expects
    instances/phantom_XXXX.nii.gz       one id per nodule (matches the lesion list)
    lesions/phantom_XXXX.json           lesion list (LPS centre, diameter, volume, type, location, shape)
    dicom/phantom_XXXX/                 the CT as a DICOM series (one file per slice)

Case k of a run uses the seed ``case_seed(seed, k)``: cases are independent, and the same (seed, k) always gives the
same files (DICOM UIDs included). ``append=True`` adds a run to an existing dataset (numbered after its cases), so one
training set can mix, say, small and full-size phantoms; ``dataset.json`` lists every run under ``generator.runs``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meddet.errors import MeddetInputError
from meddet.io import write_volume
from meddet.io.dicom_writer import SeriesIdentity, write_dicom_series
from meddet.phantom.case import GENERATOR_VERSION, PhantomCase, case_seed, generate_case


def case_name(index: int) -> str:
    return f"phantom_{index:04d}"


def write_case(case: PhantomCase, out_dir: str | Path, name: str, uid_seed: str, dicom: bool = True) -> dict:
    """Write one case's files into the dataset layout; returns its ``training`` entry for dataset.json."""
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "instances", "lesions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_volume(case.image, out / "imagesTr" / f"{name}_0000.nii.gz")
    if case.pet is not None:
        write_volume(case.pet, out / "imagesTr" / f"{name}_0001.nii.gz")
    binary = case.labels.with_array((case.labels.array > 0).astype(np.uint8))
    write_volume(binary, out / "labelsTr" / f"{name}.nii.gz")
    write_volume(case.labels, out / "instances" / f"{name}.nii.gz")
    record = {
        "case": name,
        "seed": case.info.get("seed"),
        "lesions": case.lesions,
        "spacing": [float(s) for s in case.image.spacing],
        "shape": [int(s) for s in case.image.shape],
        "origin": [float(o) for o in case.image.origin],
        "direction": [float(v) for v in case.image.direction.ravel()],
        "slice_thickness": float(case.info.get("slice_thickness", case.image.spacing[2])),
        "imaging": {k: case.info[k] for k in ("psf_fwhm_mm", "noise_sigma_hu", "noise_corr_px") if k in case.info},
    }
    (out / "lesions" / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    if dicom:
        meta = case.image.metadata
        identity = SeriesIdentity(
            patient_name=str(meta.get("patient_name", "PHANTOM^CHEST")),
            patient_id=str(meta.get("patient_id", name)),
            series_description=f"meddet synthetic chest CT {name}",
            uid_seed=uid_seed,
        )
        write_dicom_series(case.image, out / "dicom" / name, identity)
    return {"image": f"./imagesTr/{name}_0000.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def _existing_dataset(out: Path) -> dict | None:
    path = out / "dataset.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MeddetInputError("Cannot append: dataset.json is unreadable.", path) from exc


def _runs_of(dataset: dict) -> list[dict]:
    """The generator runs recorded in a dataset.json (a single-run record from before ``runs`` existed counts as one)."""
    generator = dataset.get("generator", {})
    if "runs" in generator:
        return list(generator["runs"])
    if "seed" in generator:
        return [{"seed": generator["seed"], "n": dataset.get("numTraining", 0), "first_case": case_name(0),
                 "small": generator.get("small", False), "pet": generator.get("pet", False)}]
    return []


def generate_dataset(out_dir: str | Path, n: int, seed: int = 0, small: bool = False, pet: bool = False,
                     dicom: bool = True, append: bool = False, large_mass_probability: float = 0.0,
                     small_nodules: int = 0) -> Path:
    """Generate ``n`` cases into ``out_dir`` (created if needed), after its existing cases if ``append``.

    ``large_mass_probability`` > 0 goes beyond the spec (each case may get one 35-70 mm mass), as does ``small_nodules``
    > 0 (that many extra 3-6 mm nodules per case): training data only.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    channels = {"0": "CT"}
    if pet:
        channels["1"] = "PET"
    existing = _existing_dataset(out) if append else None
    if existing is not None and existing.get("channel_names") != channels:
        raise MeddetInputError(
            f"Cannot append: the dataset has channels {existing.get('channel_names')}, this run would have {channels}.",
            out / "dataset.json", "Use --pet for both runs or for neither.",
        )
    training = list(existing["training"]) if existing else []
    runs = _runs_of(existing) if existing else []
    first = len(training)
    for k in range(n):
        name = case_name(first + k)
        cs = case_seed(seed, k)
        case = generate_case(cs, small=small, pet=pet, large_mass_probability=large_mass_probability,
                             small_nodules=small_nodules)
        case.image.metadata["patient_id"] = f"PHANTOM-{seed}-{k:04d}"
        training.append(write_case(case, out, name, uid_seed=f"meddet-phantom-{seed}-{k}-{cs}", dicom=dicom))
        del case
    run = {"seed": int(seed), "n": int(n), "first_case": case_name(first), "small": bool(small), "pet": bool(pet)}
    if large_mass_probability > 0:
        run["large_mass_probability"] = float(large_mass_probability)
    if small_nodules > 0:
        run["small_nodules"] = int(small_nodules)
    runs.append(run)
    dataset = {
        "name": "MeddetPhantomChestCT",
        "description": "Synthetic non-contrast chest CT with lung nodules (meddet phantom, spec v1)",
        "reference": "meddet.phantom; see docs/phantom.md",
        "licence": "synthetic data, no patient information",
        "tensorImageSize": "3D",
        "channel_names": channels,
        "labels": {"background": 0, "nodule": 1},
        "numTraining": len(training),
        "numTest": 0,
        "file_ending": ".nii.gz",
        "training": training,
        "test": [],
        "generator": {"version": GENERATOR_VERSION, "runs": runs},
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return out
