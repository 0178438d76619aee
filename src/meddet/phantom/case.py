"""One synthetic chest CT case: plan (all random choices), render, image formation, ground truth.

Why a plan separate from rendering: every random choice is drawn from its own seeded stream (geometry, anatomy,
trees, lesions, placement, noise, PET, identity), so a case is reproducible from its seed alone, and the lesion
statistics can be sampled without rendering anything (``sample_lesion_specs_for_seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from meddet.phantom.anatomy import Anatomy, build_anatomy, sample_params
from meddet.phantom.geometry import ScanGeometry, sample_inplane, sample_scan_geometry
from meddet.phantom.imaging import NoiseModel, add_noise, average_sub_slices, noise_sigma_map, psf_blur, quantize
from meddet.phantom.nodules import (
    LesionSpec,
    Nodule,
    nodule_occupancy,
    place_nodules,
    sample_large_mass,
    sample_lesion_specs,
    sample_small_nodule,
)
from meddet.phantom.pet import make_pet
from meddet.phantom.vessels import build_pulmonary_trees
from meddet.volume import Volume

GENERATOR_VERSION = "phantom-spec-v1"
_STREAMS = ("geometry", "anatomy", "trees", "lesions", "placement", "noise", "pet", "identity", "texture", "large_mass", "small_nodules")
SUB_SLICE_MM = {False: 1.0, True: 1.5}  # thickest sub-slice of the slice-profile integration (full, small)
CHUNK_VOXELS = 8_000_000

PATIENT_NAMES = (
    "PHANTOM^CHEST", "DOE^JANE", "SMITH^JOHN", "Müller^Jürgen", "García^José", "Østergård^Åse", "Dvořák^Antonín",
    "NGUYEN^AN", "O'BRIEN^SEAN", "Łukasz^Żółć", "KIM^MIN-JUN", "Çelik^Gül",
)


def _texture_model(rng: np.random.Generator) -> dict:
    """Tissue heterogeneity: a smooth random field (wavelengths 3–20 mm) scaled per tissue class (HU)."""
    from meddet.phantom.anatomy import TISSUE

    amp = np.zeros(256, dtype=np.float32)
    amp[TISSUE["fat"]] = rng.uniform(4, 10)
    amp[TISSUE["soft_tissue"]] = rng.uniform(3, 8)
    amp[TISSUE["organ"]] = rng.uniform(3, 7)
    amp[TISSUE["blood"]] = rng.uniform(1, 4)
    amp[TISSUE["bone"]] = rng.uniform(40, 90)
    terms = [[(rng.uniform(3, 20), rng.uniform(0, 2 * np.pi)) for _ in range(3)] for _ in range(3)]
    return {"amp": amp, "terms": terms}


def _texture(tex: dict, X, Y, Z) -> np.ndarray:
    out = None
    for term in tex["terms"]:
        f = [np.cos(C * np.float32(2 * np.pi / w) + np.float32(ph)) for (w, ph), C in zip(term, (X, Y, Z))]
        t = (f[0] * f[1]) * f[2]
        out = t if out is None else out + t
    return out * np.float32(1.0 / np.sqrt(len(tex["terms"]) / 8.0))


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """The seeded random stream ``stream`` of case ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, _STREAMS.index(stream)]))


def case_seed(dataset_seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset: independent of the other cases, reproducible."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index), 0x5EED]).generate_state(1, dtype=np.uint32)[0])


def sample_lesion_specs_for_seed(seed: int, large_mass_probability: float = 0.0,
                                 small_nodules: int = 0) -> list[LesionSpec]:
    """The lesions case ``seed`` asks for (before placement), without building or rendering anything.

    With ``large_mass_probability`` > 0 the case gets, with that probability, one extra mass beyond the spec
    (35-70 mm, :func:`meddet.phantom.nodules.sample_large_mass`) from its own random stream, placed first so the
    smaller nodules fit around it; at 0 the lesions are exactly the spec's draws. ``small_nodules`` > 0 adds that
    many 3-6 mm nodules (:func:`meddet.phantom.nodules.sample_small_nodule`, also beyond the spec) from another
    stream, after the spec's, so those are placed exactly where they would be without them.
    """
    specs = sample_lesion_specs(rng_for(seed, "lesions"))
    if large_mass_probability > 0:
        rng = rng_for(seed, "large_mass")
        if rng.random() < large_mass_probability:
            specs = [sample_large_mass(rng), *specs]
    if small_nodules > 0:
        rng = rng_for(seed, "small_nodules")
        specs = [*specs, *(sample_small_nodule(rng) for _ in range(small_nodules))]
    return specs


@dataclass
class CasePlan:
    seed: int
    small: bool
    geometry: ScanGeometry
    anatomy: Anatomy
    specs: list[LesionSpec]
    nodules: list[Nodule]
    noise: NoiseModel


@dataclass
class PhantomCase:
    """A generated case. ``image`` is int16 HU; ``labels`` holds one instance id per nodule (0 background).

    ``lesions`` list the nodules (LPS centre, equivalent-sphere diameter, volume, type, location, shape).
    ``lung_mask`` (uint8), ``tissue`` (uint8, :data:`meddet.phantom.anatomy.TISSUE` codes) and, when asked for,
    ``noiseless`` (float32 HU after the PSF, before noise) share the image grid.
    """

    image: Volume
    labels: Volume
    lesions: list[dict]
    pet: Volume | None = None
    lung_mask: Volume | None = None
    tissue: Volume | None = None
    noiseless: Volume | None = None
    info: dict = field(default_factory=dict)


def plan_case(seed: int, small: bool = False, tilt_deg: float = 0.0, large_mass_probability: float = 0.0,
              small_nodules: int = 0) -> CasePlan:
    """All random choices of a case: geometry, anatomy, trees, nodules (placed), noise."""
    rg = rng_for(seed, "geometry")
    inplane = sample_inplane(rg, small)
    ra = rng_for(seed, "anatomy")
    params = sample_params(ra, inplane.fov_mm)
    an = build_anatomy(ra, params)
    geom = sample_scan_geometry(rg, inplane, small, (params.z_rec, params.z_apex), tilt_deg)
    an.vessels, an.bronchi = build_pulmonary_trees(rng_for(seed, "trees"), an)
    specs = sample_lesion_specs_for_seed(seed, large_mass_probability, small_nodules)
    nodules = place_nodules(rng_for(seed, "placement"), specs, an, geom)
    noise = NoiseModel.sample(rng_for(seed, "noise"))
    return CasePlan(seed=seed, small=small, geometry=geom, anatomy=an, specs=specs, nodules=nodules, noise=noise)


def _volume(geom: ScanGeometry, array: np.ndarray, modality: str, metadata: dict | None = None) -> Volume:
    return Volume(array=array, spacing=geom.spacing, origin=geom.origin, direction=geom.direction.copy(),
                  modality=modality, metadata=dict(metadata or {}))


def _ground_truth(plan: CasePlan) -> tuple[np.ndarray, list[tuple[Nodule, tuple, np.ndarray]]]:
    """Instance label map and per-nodule occupancy; nodules that fill no voxel by half are dropped."""
    geom = plan.geometry
    grid = geom.grid(1)
    labels = np.zeros(geom.shape, dtype=np.uint8)
    kept = []
    for nod in plan.nodules:
        res = nodule_occupancy(nod, plan.anatomy, grid, geom.spacing)
        if res is None:
            continue
        box, occ = res
        m = (occ >= 0.5) & (labels[box] == 0)
        if not m.any():
            continue
        nod.id = len(kept) + 1
        labels[box][m] = nod.id
        kept.append((nod, box, occ))
    return labels, kept


def _lesion_records(kept, labels: np.ndarray, ref: Volume, voxel_mm3: float) -> list[dict]:
    records = []
    for nod, box, occ in kept:
        lab = labels[box] == nod.id
        if not lab.any():
            continue
        vol_mm3 = float(occ.sum()) * voxel_mm3
        idx = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), axis=-1)
        w = occ / occ.sum()
        centroid = (idx * w[..., None]).reshape(-1, 3).sum(axis=0)
        centre_idx = np.rint(centroid).astype(int)
        inside = all(0 <= centre_idx[a] < labels.shape[a] for a in range(3))
        if not (inside and labels[tuple(centre_idx)] == nod.id):
            # a non-convex nodule: report the labelled voxel nearest to the centroid
            cand = idx[lab]
            mm = ref.index_zyx_to_lps(cand) - ref.index_zyx_to_lps(centroid[None])
            centroid = cand[int(np.argmin((mm * mm).sum(axis=1)))].astype(float)
        centre = ref.index_zyx_to_lps(centroid[None])[0]
        records.append({
            "id": int(nod.id),
            "center_mm": [round(float(c), 3) for c in centre],
            "diameter_mm": round(float((6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0)), 3),
            "volume_ml": round(vol_mm3 / 1000.0, 6),
            "type": nod.spec.kind,
            "location": nod.spec.location,
            "shape": nod.spec.shape,
            "nominal_diameter_mm": round(nod.spec.diameter_mm, 3),
            "n_voxels": int(lab.sum()),
        })
    return records


def generate_case(seed: int, small: bool = False, pet: bool = False, tilt_deg: float = 0.0,
                  keep_noiseless: bool = False, large_mass_probability: float = 0.0,
                  small_nodules: int = 0) -> PhantomCase:
    """Generate one synthetic chest CT (and optionally its PET channel) with exact nodule ground truth."""
    plan = plan_case(seed, small, tilt_deg, large_mass_probability, small_nodules)
    geom, an = plan.geometry, plan.anatomy
    labels, kept = _ground_truth(plan)
    nodules = [k[0] for k in kept]

    # Render on sub-slices spanning each slice's thickness, a chunk of slices at a time.
    sz = geom.spacing[2]
    n_sub = max(1, math.ceil(sz / SUB_SLICE_MM[small] - 1e-9))
    fine = geom.grid(n_sub)
    nz, ny, nx = geom.shape
    aa = min(geom.spacing[0], geom.spacing[1])
    per = max(1, CHUNK_VOXELS // (ny * nx * n_sub))
    hu = np.empty(geom.shape, dtype=np.float32)
    lung = np.empty(geom.shape, dtype=np.float32)
    cls = np.empty(geom.shape, dtype=np.uint8)
    suv = np.empty(geom.shape, dtype=np.float32) if pet else None
    tex = _texture_model(rng_for(seed, "texture"))
    grid1 = geom.grid(1)
    for k0 in range(0, nz, per):
        k1 = min(nz, k0 + per)
        out = an.render(fine, slice(k0 * n_sub, k1 * n_sub), aa, pet, nodules)
        hu[k0:k1] = average_sub_slices(out["hu"], n_sub)
        lung[k0:k1] = average_sub_slices(out["lung_occ"], n_sub)
        cls[k0:k1] = out["cls"][n_sub // 2 :: n_sub]
        hu[k0:k1] += _texture(tex, *grid1.coords(slice(k0, k1), slice(None), slice(None))) * tex["amp"][cls[k0:k1]]
        if pet:
            suv[k0:k1] = average_sub_slices(out["suv"], n_sub)
        del out
    lung_mask = (lung >= 0.5).astype(np.uint8)
    del lung
    # A nodule label never leaves the lung mask.
    labels[lung_mask == 0] = 0

    # Image formation.
    img = psf_blur(hu, geom.psf_fwhm_mm, (geom.spacing[1], geom.spacing[0]))
    del hu
    noiseless = img.copy() if keep_noiseless else None
    p = an.p
    centre_idx = geom.grid(1).to_index(np.array([[p.body_dx, 0.0, 0.0]]))[0]
    sig_map = noise_sigma_map((ny, nx), (centre_idx[1], centre_idx[0]),
                              (p.B0 / geom.spacing[1], p.A0 / geom.spacing[0]), plan.noise)
    add_noise(img, rng_for(seed, "noise"), plan.noise, sig_map)
    image = quantize(img)
    del img

    ri = rng_for(seed, "identity")
    name = str(ri.choice(PATIENT_NAMES))
    meta = {
        "patient_name": name,
        "patient_id": f"PHANTOM-{seed:010d}",
        "series_description": "meddet synthetic chest CT",
        "slice_thickness": geom.slice_thickness,
        "phantom_seed": int(seed),
        "generator": GENERATOR_VERSION,
    }
    image_vol = _volume(geom, image, "CT", meta)
    label_vol = _volume(geom, labels, "OT")
    lesions = _lesion_records(kept, labels, image_vol, geom.voxel_volume_mm3)
    info = {
        "seed": int(seed), "small": bool(small), "tilt_deg": float(tilt_deg),
        "large_mass_probability": float(large_mass_probability), "small_nodules": int(small_nodules),
        "spacing": list(geom.spacing), "shape": list(geom.shape), "slice_thickness": geom.slice_thickness,
        "psf_fwhm_mm": round(geom.psf_fwhm_mm, 3), "noise_sigma_hu": round(plan.noise.sigma_hu, 2),
        "noise_corr_px": round(plan.noise.corr_px, 3), "n_sub": n_sub,
        "requested_lesions": len(plan.specs), "placed_lesions": len(plan.nodules),
        "table": bool(p.table), "vessel_segments": len(an.vessels) if an.vessels is not None else 0,
    }
    pet_vol = None
    if pet:
        suv_img, pet_info = make_pet(suv, geom.spacing[::-1], rng_for(seed, "pet"))
        del suv
        pet_vol = _volume(geom, suv_img, "PT", {"units": "SUVbw-like", **pet_info})
        info["pet"] = pet_info
    return PhantomCase(
        image=image_vol, labels=label_vol, lesions=lesions, pet=pet_vol,
        lung_mask=_volume(geom, lung_mask, "OT"), tissue=_volume(geom, cls, "OT"),
        noiseless=_volume(geom, noiseless, "CT") if noiseless is not None else None, info=info,
    )
