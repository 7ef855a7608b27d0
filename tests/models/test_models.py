"""Tests of the model zoo: registry, the ClassifierModel contract, published sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from darkknowledge.errors import UserError
from darkknowledge.models import (
    ClassifierModel,
    build_model,
    count_parameters,
    model_names,
    model_patterns,
)

REQUIRED = (
    [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)]
    + ["resnet8x4", "resnet32x4"]
    + [f"wrn_16_{w}" for w in (1, 2, 4, 8)]
    + [f"wrn_28_{w}" for w in (1, 2, 4, 8, 10)]
    + [f"wrn_40_{w}" for w in (1, 2, 4)]
    + [f"vgg{d}" for d in (8, 11, 13, 16, 19)]
    + ["mobilenetv2", "shufflenetv2"]
    + [f"cnn_w{w}" for w in (4, 8, 16, 32, 64, 128)]
    + ["mlp_h32", "mlp_h128", "mlp_h512"]
)
# one member of each family, for the (slower) checks that need not cover every size
REPRESENTATIVES = [
    "resnet8",
    "resnet8x4",
    "wrn_16_2",
    "vgg8",
    "mobilenetv2",
    "shufflenetv2",
    "cnn_w16",
    "mlp_h32",
]
CNN_LADDER = [f"cnn_w{w}" for w in (4, 8, 16, 32, 64, 128)]
MLP_LADDER = [f"mlp_h{h}" for h in (32, 64, 128, 256, 512)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batch-2 forwards gain nothing from intra-op threads, and a single thread keeps
    this file fast when other processes share the (2-core) machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_required_names_are_registered():
    names = model_names()
    assert names == sorted(names)
    missing = [n for n in REQUIRED if n not in names]
    assert not missing


@pytest.mark.parametrize("name", model_names())
def test_every_model_builds_and_honours_the_contract(name):
    """Round trip through the registry for 10 and 100 classes, and the features contract:
    ``model(x)`` is a logits tensor and equals ``classifier(forward_features(x))``."""
    for num_classes, size in ((10, 32), (100, 16)):
        model = build_model(name, num_classes=num_classes, in_channels=3).eval()
        assert isinstance(model, ClassifierModel)
        assert isinstance(model.classifier, nn.Linear)
        assert model.classifier.in_features == model.feature_dim
        assert model.classifier.out_features == num_classes
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            logits = model(x)
            feats = model.forward_features(x)
        assert isinstance(logits, torch.Tensor)
        assert logits.shape == (2, num_classes)
        assert torch.isfinite(logits).all()
        assert feats.shape == (2, model.feature_dim)
        torch.testing.assert_close(model.classifier(feats), logits)


# Parameter counts at 100 classes, in millions rounded to 2 decimals, as published by
# CRD (Tian et al. 2020) and the WRN paper (Zagoruyko & Komodakis 2016: WRN-28-10 36.5M).
PUBLISHED_MILLIONS = {
    "resnet8": 0.08,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "wrn_28_10": 36.54,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv2": 1.36,
}


@pytest.mark.parametrize("name,millions", sorted(PUBLISHED_MILLIONS.items()))
def test_published_parameter_counts(name, millions):
    assert round(count_parameters(build_model(name, num_classes=100)) / 1e6, 2) == millions


def test_vgg8_parameter_count_by_hand():
    # CRD's table prints 3.96M; the architecture gives 3,965,028 (3.97M rounded).
    convs = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 512)]
    expected = sum(9 * i * o + o + 2 * o for i, o in convs) + 512 * 100 + 100
    assert expected == 3_965_028
    assert count_parameters(build_model("vgg8", num_classes=100)) == expected


def test_count_parameters_counts_only_trainable():
    model = build_model("resnet8", num_classes=10)
    total = count_parameters(model)
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == total - (64 * 10 + 10)


def test_unknown_name_raises_user_error_listing_names():
    with pytest.raises(UserError) as err:
        build_model("resnet_does_not_exist", num_classes=10)
    message = str(err.value)
    assert "resnet_does_not_exist" in message
    for name in ("resnet20", "wrn_40_2", "vgg13", "mobilenetv2", "cnn_w16"):
        assert name in message
    for pattern in model_patterns():
        assert pattern in message


@pytest.mark.parametrize(
    "name,feature_dim",
    [
        ("wrn_22_3", 192),
        ("wrn_10_1", 64),
        ("cnn_w5", 10),
        ("mlp_h7", 7),
        ("resnet26", 64),
        ("resnet14x4", 256),
    ],
)
def test_parametric_names_parse(name, feature_dim):
    model = build_model(name, num_classes=10).eval()
    assert model.feature_dim == feature_dim
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("name", ["wrn_17_2", "wrn_16_0", "resnet9", "cnn_w0", "mlp_h0"])
def test_invalid_parametric_names_raise_user_error(name):
    with pytest.raises(UserError):
        build_model(name, num_classes=10)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": 10, "in_channels": 0}])
def test_invalid_sizes_raise_user_error(kwargs):
    with pytest.raises(UserError):
        build_model("resnet8", **kwargs)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_single_channel_inputs(name):
    model = build_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", CNN_LADDER + MLP_LADDER)
@pytest.mark.parametrize("in_channels,size", [(1, 8), (3, 8), (1, 12), (3, 32)])
def test_small_models_on_tiny_inputs(name, in_channels, size):
    model = build_model(name, num_classes=10, in_channels=in_channels)
    x = torch.randn(4, in_channels, size, size)
    out = model(x)  # train mode: BN must cope with the small spatial maps
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval().forward_features(x).shape == (4, model.feature_dim)


@pytest.mark.parametrize("ladder", [CNN_LADDER, MLP_LADDER])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_capacity_ladder_is_monotone(ladder, in_channels):
    counts = [count_parameters(build_model(n, num_classes=10, in_channels=in_channels)) for n in ladder]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_channels_last_matches_contiguous(name):
    model = build_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_bf16_autocast_channels_last(name):
    model = build_model(name, num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        feats = model.forward_features(x)
    assert out.shape == (2, 10)
    assert feats.shape == (2, model.feature_dim)
    assert torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_standard_initialisation():
    model = build_model("resnet32x4", num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.layer3[-1].conv2  # 256 -> 256, 3x3: Kaiming fan-out std sqrt(2 / (9 * 256))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.05)
