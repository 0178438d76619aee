"""Precision choice and bf16 autocast: numerically close to fp32, and refused where it makes no sense."""

import pytest
import torch

from meddet.networks.registry import build_model
from meddet.errors import MeddetInputError
from meddet.precision import autocast, choose_precision, native_bf16, parse_precision, resolve_precision


def test_resolve_precision_downgrades_without_native_bf16() -> None:
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision(None) == "fp32"
    assert resolve_precision("bf16") == ("bf16" if native_bf16("cpu") else "fp32")
    assert choose_precision("cpu")[0] == ("bf16" if native_bf16("cpu") else "fp32")
    with pytest.raises(ValueError):
        resolve_precision("fp16")


def test_bf16_autocast_matches_fp32_logits() -> None:
    torch.manual_seed(0)
    model = build_model("unet", 1, 2, (16, 32, 32), channels=[8, 16, 32], strides=[[2, 2, 2], [2, 2, 2]]).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        ref = torch.softmax(model(x), 1)
        with autocast("cpu", "bf16"):
            low = model(x)
    assert low.dtype == torch.bfloat16  # autocast really ran the convolutions in bf16
    diff = (torch.softmax(low.float(), 1) - ref).abs()
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 0.01
    with torch.no_grad(), autocast("cpu", "fp32"):
        assert model(x).dtype == torch.float32


def test_parse_precision_accepts_the_known_names_and_explains_the_rest() -> None:
    assert parse_precision(None) is None and parse_precision("bf16") == "bf16" and parse_precision("fp32") == "fp32"
    with pytest.raises(MeddetInputError, match="fp16"):
        parse_precision("fp16")
