"""Synthetic chest CT with lung nodules and exact ground truth (spec: /work/shared/PHANTOM_SPEC.md, v1).

``generate_case(seed, small=False, pet=False, tilt_deg=0.0)`` gives one case in memory; ``generate_dataset`` writes
an nnU-Net-style dataset with NIfTI, DICOM and lesion lists. See docs/phantom.md for what is generated.
"""

from meddet.phantom.anatomy import TISSUE
from meddet.phantom.case import (
    GENERATOR_VERSION,
    PhantomCase,
    case_seed,
    generate_case,
    plan_case,
    sample_lesion_specs_for_seed,
)
from meddet.phantom.dataset import generate_dataset, write_case
from meddet.phantom.nodules import KINDS, LOCATIONS, SHAPES, LesionSpec

__all__ = [
    "GENERATOR_VERSION",
    "KINDS",
    "LOCATIONS",
    "SHAPES",
    "TISSUE",
    "LesionSpec",
    "PhantomCase",
    "case_seed",
    "generate_case",
    "generate_dataset",
    "plan_case",
    "sample_lesion_specs_for_seed",
    "write_case",
]
