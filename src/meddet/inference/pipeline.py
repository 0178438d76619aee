"""``meddet predict``: a scan (or a folder of scans) in, lesions.json, mask, DICOM SEG and overlay out.

Why a pipeline module apart from the predictor: reading inputs, choosing outputs and timing each stage is the
service-facing contract (the lesions.json schema in docs/lesions-json.md), while the predictor is the numerical core
that benchmarks and the web service reuse.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from meddet.detection.lesions import extract_lesions, refine_outlines
from meddet.detection.masses import large_components, merge_masses
from meddet.errors import MeddetInputError
from meddet.inference.predictor import (
    LoadedModel,
    lesion_probability,
    predict_probability,
    probability_on_scan,
    with_grid_scaled,
)
from meddet.io import read_volume, write_volume
from meddet.io.itk_formats import has_itk_suffix
from meddet.preprocess.prepare import crop_box_for, prepare_case
from meddet.volume import Volume

logger = logging.getLogger(__name__)

# 1.1 added model.mirroring; 1.2 the two stages' scores and model.rescorer; 1.3 outline_threshold; 1.4 the mass pass
SCHEMA_VERSION = "1.4"
LESION_KEYS = ("id", "center_mm", "diameter_mm", "volume_ml", "score", "bbox_mm", "candidate_score", "classifier_score",
               "mass_pass")


def find_cases(path: Path) -> list[tuple[str, Path]] | None:
    """Cases in a folder of scans (image files, or one sub-folder per DICOM series); None when ``path`` is one scan."""
    if not path.is_dir():
        return None
    entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    images = [p for p in entries if p.is_file() and (has_itk_suffix(p) or p.suffix.lower() == ".zip")]
    if images:
        return [(_case_name(p), p) for p in images]
    folders = [p for p in entries if p.is_dir()]
    if folders and not any(p.is_file() for p in entries):
        return [(p.name, p) for p in folders]
    return None


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom(volume: Volume) -> bool:
    return bool(volume.metadata.get("sop_instance_uids"))


def detect_lesions(model: LoadedModel, probability: Volume, volume: Volume) -> tuple[list[dict], Volume]:
    """Lesions and their instance map: the probability's components at the model's threshold, or, for a model with
    a second stage, its candidates re-scored by the classifier and kept at the model's threshold on the final score;
    outlines redrawn at the model's ``outline_threshold`` when it has one (``refine_outlines`` says why)."""
    post = model.postprocessing
    if model.rescorer is None:
        lesions, instances = extract_lesions(probability, post["threshold"], post["min_volume_mm3"])
    else:
        candidates, instances = extract_lesions(probability, model.rescorer.candidate_threshold, post["min_volume_mm3"])
        lesions, instances = model.rescorer.rescore(candidates, instances, volume, post["threshold"])
    if post["outline_threshold"] is not None:
        lesions, instances = refine_outlines(lesions, instances, probability, float(post["outline_threshold"]))
    return lesions, instances


# The coarse grid's components are measured first and the probability is only resampled onto the scan (~1.5 s on a
# 512² x 290 scan) when one is nearly wide enough: their equivalent diameters on the two grids differ by far less.
NEARLY_A_MASS = 0.8


def detect_masses(model: LoadedModel, volume: Volume, mirroring: str,
                  box: tuple[slice, slice, slice]) -> tuple[list[dict], Volume] | None:
    """The model's coarse pass for masses (``mass_zoom``, ``mass_min_diameter_mm``; ``meddet.detection.masses``
    says why) over the main pass's crop ``box``: components of that pass's probability at the model's threshold, at
    least that wide, scored as the main pass's are (the second stage, when the model has one). None when the model
    has no such pass or it finds no mass."""
    post = model.postprocessing
    if post["mass_zoom"] is None:
        return None
    coarse = with_grid_scaled(model, float(post["mass_zoom"]))
    prepared = prepare_case([volume], coarse.plan, box=box)
    probability = lesion_probability(coarse, prepared.image, mirroring)
    min_diameter = float(post["mass_min_diameter_mm"])
    on_grid, _ = extract_lesions(prepared.grid.with_array(probability), post["threshold"], post["min_volume_mm3"])
    if not any(lesion["diameter_mm"] >= NEARLY_A_MASS * min_diameter for lesion in on_grid):
        return None
    components, instances = extract_lesions(probability_on_scan(probability, prepared, volume), post["threshold"],
                                            post["min_volume_mm3"])
    masses, instances = large_components(components, instances, min_diameter)
    if model.rescorer is not None:
        masses, instances = model.rescorer.rescore(masses, instances, volume, post["threshold"])
    return (masses, instances) if masses else None


NO_AIR_ABOVE_HU = -500.0  # a CT in HU has air (about -1000) around the body and in the lungs, far below this


def check_ct_intensities(model: LoadedModel, volume: Volume, source: Path) -> None:
    """Refuse a scan a CT model cannot read: no voxel below ``NO_AIR_ABOVE_HU`` means no air at all.

    Why: a model normalised for CT (HU clipped and z-scored) given an MR image, or a CT stored without its rescale
    intercept (air at 0 instead of -1024), still outputs probabilities, and they are garbage; this is the cheap
    test that catches both before anything is computed.
    """
    if model.plan["normalization"][0]["scheme"] != "ct_clip_zscore":
        return
    lowest = float(volume.array.min())
    if lowest > NO_AIR_ABOVE_HU:
        raise MeddetInputError(
            f"This scan does not look like a CT in Hounsfield units: its lowest value is {lowest:g}, and a CT has air "
            f"at about -1000 HU (model '{model.name}' reads CT).",
            source,
            "Give a CT scan; if it is one, its rescale slope/intercept was lost on export (air should read -1000).",
        )


THICK_VOXEL_MM = 2.5  # LUNA16 left out scans with thicker slices; Fleischner asks for thin (<= 1.5 mm) sections


def detection_warnings(volume: Volume) -> list[str]:
    """Warnings about the scan's fitness for small-lesion detection, beside the reader's ``volume.warnings``.

    Why: a lesion not much larger than the voxel's long side spans one or two voxels along it, and partial volume
    fades it; on 3-5 mm slices the bundled lung-nodule model finds about half the nodules under 6 mm, against three
    in four on thinner slices (model card, "Sensitivity by slice thickness"). What it finds is still right, so this is
    a warning (in lesions.json, and logged like the reader's), not a refusal.
    """
    longest = max(volume.spacing)
    if longest <= THICK_VOXEL_MM:
        return []
    return [f"Voxels {longest:.2f} mm long along one axis (slices thicker than {THICK_VOXEL_MM:g} mm): small lesions "
            "(lung nodules under 6 mm) are missed more often; use a thin-slice reconstruction where there is one."]


def predict_scan(
    model: LoadedModel, source: Path, out: Path, mirroring: str | None = None, series_uid: str | None = None
) -> dict[str, Any]:
    """Predict one scan into ``out``; returns the lesions.json content. ``mirroring`` defaults to the model's."""
    mirroring = mirroring or model.mirroring
    timing: dict[str, float] = {}
    start = time.perf_counter()
    volume = read_volume(source, series_uid=series_uid)
    if len(model.plan["channel_names"]) != 1:
        raise MeddetInputError(
            f"Model '{model.name}' needs {len(model.plan['channel_names'])} co-registered channels "
            f"({', '.join(model.plan['channel_names'])}); `meddet predict` takes single-channel models.",
        )
    check_ct_intensities(model, volume, source)
    warnings = detection_warnings(volume)
    for warning in warnings:
        logger.warning("%s: %s", source.name, warning)  # which scan, in a folder of many
    timing["load"] = time.perf_counter() - start
    start = time.perf_counter()
    box = crop_box_for(volume, model.plan.get("crop", "none"))
    box_s = time.perf_counter() - start
    probability, stages = predict_probability(model, [volume], mirroring, box)
    timing["preprocess"] = box_s + stages["preprocess"]
    timing["inference"] = stages["inference"] + stages["resample"]
    start = time.perf_counter()
    lesions, instances = detect_lesions(model, probability, volume)
    timing["postprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    found = detect_masses(model, volume, mirroring, box)
    if found is not None:
        lesions, instances = merge_masses(lesions, instances, *found)
    if model.postprocessing["mass_zoom"] is not None:
        timing["mass_pass"] = time.perf_counter() - start

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    mask_name = "mask.nii.gz" if volume.is_orthogonal else "mask.nrrd"  # NIfTI cannot hold a gantry-tilted grid
    write_volume(instances, out / mask_name)
    outputs = {"mask": mask_name}
    if _is_dicom(volume):
        from meddet.export.dicom_seg import write_dicom_seg

        seg = write_dicom_seg(instances, volume, out / "seg.dcm", lesions=lesions, algorithm_version=model.version)
        if seg is not None:
            outputs["seg"] = "seg.dcm"
    from meddet.export.overlay import render_overlay

    render_overlay(volume, instances, lesions, out / "overlay.png")
    outputs["overlay"] = "overlay.png"
    timing["write"] = time.perf_counter() - start
    timing["total"] = sum(timing.values())
    result = {
        "schema_version": SCHEMA_VERSION,
        "lesions": [
            {k: lesion[k] for k in LESION_KEYS if k in lesion}
            for lesion in lesions
        ],
        "input": {
            "path": str(source), "shape": list(volume.shape[::-1]), "spacing": list(volume.spacing),
            "origin": list(volume.origin), "direction": volume.direction.round(6).tolist(),
            "series_uid": volume.metadata.get("series_uid"),
            "warnings": volume.warnings + warnings,
        },
        "model": {"name": model.name, "version": model.version, **model.postprocessing,
                  "tta": mirroring != "none", "mirroring": mirroring, "precision": model.precision,
                  "rescorer": _rescorer_summary(model)},
        "outputs": outputs,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
    }
    (out / "lesions.json").write_text(json.dumps(result, indent=1))
    return result


def _rescorer_summary(model: LoadedModel) -> dict[str, Any] | None:
    if model.rescorer is None:
        return None
    summary = {"combination": model.rescorer.combination, "candidate_threshold": model.rescorer.candidate_threshold}
    if model.rescorer.zoom_above_mm is not None:
        summary["zoom_above_mm"] = model.rescorer.zoom_above_mm
    return summary


def predict_path(
    model: LoadedModel, source: Path, out: Path, mirroring: str | None = None, series_uid: str | None = None
) -> list[dict[str, Any]]:
    """One scan → ``out/``; a folder of scans → ``out/<case>/``. A bad case in a batch is reported, not fatal."""
    cases = find_cases(source)
    if cases is None:
        return [predict_scan(model, source, out, mirroring, series_uid)]
    results = []
    for name, path in cases:
        try:
            results.append(predict_scan(model, path, out / name, mirroring))
        except MeddetInputError as exc:
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "error.txt").write_text(str(exc) + "\n")
            results.append({"case": name, "error": str(exc)})
    return results
