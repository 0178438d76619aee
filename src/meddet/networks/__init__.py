"""Segmentation networks by name: ``build_model("unet", in_channels, out_channels, patch_size, **arch)``.

Why a package of small modules: each architecture is MONAI blocks plus a little glue, and the registry is the one
place that knows them all, so adding a model touches one new file and one table row.
"""

from meddet.networks.registry import (
    available_models,
    build_model,
    count_gflops,
    count_parameters,
    describe_models,
    required_divisor,
    resolve_arch,
)

__all__ = [
    "available_models",
    "build_model",
    "count_gflops",
    "count_parameters",
    "describe_models",
    "required_divisor",
    "resolve_arch",
]
