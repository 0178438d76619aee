"""Model registry: every model runs forward and backward on a tiny patch, and describe_models adds up."""

from __future__ import annotations

import pytest
import torch

from meddet.errors import MeddetInputError
from meddet.networks import available_models, build_model, count_parameters, describe_models, required_divisor
from meddet.networks.topology import default_topology
from meddet.networks.unet import deep_supervision_heads

# Tiny widths keep each case well under a second on a CPU; swin_unetr needs sides that are multiples of 32 and a
# bottleneck of more than one voxel, so its smallest patch is 64x64x32.
SMALL = {"channels": (4, 8, 16), "strides": (2, 2)}
TINY_ARCH = {
    "unet": SMALL,
    "unet_late_fusion": SMALL,
    "hybrid": {**SMALL, "hidden_size": 16, "num_heads": 2, "num_layers": 1},
    "swin_unetr": {"feature_size": 12},
}
PATCH = {"swin_unetr": (64, 64, 32)}
CUBE = (32, 32, 32)

CASES = [
    ("unet", 1),
    ("unet", 2),
    ("unet_late_fusion", 1),
    ("unet_late_fusion", 2),
    ("hybrid", 1),
    ("hybrid", 2),
    ("swin_unetr", 1),
    ("swin_unetr", 2),
]


def test_registry_lists_every_model() -> None:
    assert available_models() == ["hybrid", "swin_unetr", "unet", "unet_late_fusion"]
    assert {name for name, _ in CASES} == set(available_models())


@pytest.mark.parametrize(("name", "in_channels"), CASES)
def test_forward_and_backward(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    patch = PATCH.get(name, CUBE)
    model = build_model(name, in_channels, 3, patch, **TINY_ARCH[name]).train()
    x = torch.randn(1, in_channels, *patch)
    target = torch.randint(0, 3, (1, *patch))

    logits = model(x)
    assert logits.shape == (1, 3, *patch)
    torch.nn.functional.cross_entropy(logits, target).backward()

    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient (unused parameter)"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"
    assert any(param.grad.abs().sum() > 0 for param in model.parameters())


def test_describe_models_counts_match_the_built_models() -> None:
    rows = {row["name"]: row for row in describe_models(CUBE, 2, 2, arch=TINY_ARCH)}
    assert set(rows) == set(available_models())
    for name in ("unet", "unet_late_fusion", "hybrid"):
        row = rows[name]
        model = build_model(name, 2, 2, CUBE, **TINY_ARCH[name])
        assert row["parameters"] == sum(p.numel() for p in model.parameters()) > 0
        assert row["gflops"] > 0
    # 32**3 is too small for swin_unetr: reported, not dropped
    assert rows["swin_unetr"]["parameters"] is None and "too small" in rows["swin_unetr"]["note"]
    # late fusion runs one encoder per channel, so it is bigger than the single-encoder U-Net
    assert rows["unet_late_fusion"]["parameters"] > rows["unet"]["parameters"]


def test_gflops_scale_with_patch_volume() -> None:
    """A fully convolutional net does the same work per voxel: twice the voxels, about twice the FLOPs."""
    small = describe_models((32, 32, 32), 1, 2, arch=TINY_ARCH)
    large = describe_models((64, 32, 32), 1, 2, arch=TINY_ARCH)
    unet_small = next(r for r in small if r["name"] == "unet")
    unet_large = next(r for r in large if r["name"] == "unet")
    assert unet_large["gflops"] == pytest.approx(2 * unet_small["gflops"], rel=0.02)
    assert unet_large["parameters"] == unet_small["parameters"]


def test_swin_unetr_parameters_match_and_are_positive() -> None:
    row = next(r for r in describe_models((64, 64, 32), 1, 2, arch=TINY_ARCH) if r["name"] == "swin_unetr")
    model = build_model("swin_unetr", 1, 2, (64, 64, 32), feature_size=12)
    assert row["parameters"] == count_parameters(model) > 0
    assert row["gflops"] > 0


def test_required_divisor() -> None:
    assert required_divisor("unet", {"strides": ((2, 2, 2), (1, 2, 2))}) == (2, 4, 4)
    assert required_divisor("hybrid", {"strides": (2, 2, 2)}) == (8, 8, 8)
    assert required_divisor("swin_unetr") == (32, 32, 32)
    with pytest.raises(ValueError, match="strides"):
        required_divisor("unet", {})


def test_bad_patch_size_and_unknown_name_are_explained() -> None:
    with pytest.raises(MeddetInputError, match="multiple of"):
        build_model("unet", 1, 2, (30, 32, 32), **SMALL)
    with pytest.raises(MeddetInputError, match="too small"):
        build_model("swin_unetr", 1, 2, (32, 32, 32))
    with pytest.raises(MeddetInputError, match="Unknown model"):
        build_model("resnet", 1, 2, CUBE)


def test_default_topology_follows_the_patch() -> None:
    channels, strides = default_topology((96, 96, 96))
    assert channels == (32, 64, 128, 256, 320)  # capped at 320 like nnU-Net
    assert strides == ((2, 2, 2),) * 4  # 96 -> 6 voxels at the bottleneck
    _, flat = default_topology((16, 128, 128))
    assert flat[0] == (2, 2, 2) and flat[-1] == (1, 2, 2)  # the short axis stops halving first


def test_late_fusion_rejects_wrong_channel_count() -> None:
    model = build_model("unet_late_fusion", 2, 2, CUBE, **SMALL)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.zeros(1, 3, *CUBE))


def test_hybrid_runs_at_another_size_by_resizing_its_positional_embedding() -> None:
    model = build_model("hybrid", 1, 2, CUBE, **TINY_ARCH["hybrid"]).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 32, 32)).shape == (1, 2, 64, 32, 32)


def test_unet_deep_supervision_stacks_heads_in_training_and_returns_plain_logits_in_eval() -> None:
    torch.manual_seed(0)
    heads = deep_supervision_heads(SMALL["strides"])
    assert heads == 1 and deep_supervision_heads([(2, 2, 2)] * 4) == 3  # every decoder level but the coarsest
    model = build_model("unet", 1, 2, CUBE, **SMALL, deep_supervision=heads).train()
    x = torch.randn(2, 1, *CUBE)
    outputs = model(x)
    assert outputs.shape == (2, 1 + heads, 2, *CUBE)
    outputs.sum().backward()
    assert all(param.grad is not None for param in model.parameters())  # the heads are trained too
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, *CUBE)


def test_unet_rejects_more_heads_than_decoder_levels() -> None:
    with pytest.raises(ValueError, match="at most 1 heads"):
        build_model("unet", 1, 2, CUBE, **SMALL, deep_supervision=2)
