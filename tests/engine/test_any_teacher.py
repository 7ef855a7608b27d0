"""Any nn.Module as the teacher: the trainer, the cache builder and the diagnostics take
a model that maps the data's normalised images to logits of its classes, with a clear
error when the output does not fit; TeacherAdapter fits a model from another library."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darkknowledge.data import build_dataset
from darkknowledge.data.loader import eval_batches
from darkknowledge.engine.adapter import TeacherAdapter
from darkknowledge.engine.cache import CachedTeacher, build_cache
from darkknowledge.engine.teacher import teacher_from_module
from darkknowledge.engine.trainer import build_trainer
from darkknowledge.errors import UserError
from darkknowledge.runs.diagnose import diagnose_modules
from support import fast_config, read_metrics

DISTILL = [
    "model.name=cnn_w4",
    "data.train_per_class=10",
    "data.test_per_class=5",
    "data.batch_size=16",
    "optim.epochs=1",
    "method.name=kd",
]


class PlainNet(nn.Module):
    """A user's own model: no forward_features, no .classifier, just logits."""

    def __init__(self, outputs: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, outputs))

    def forward(self, x):
        return self.body(x)


class HubClassifier(nn.Module):
    """Stands in for a pretrained model of another library: 3-channel 16 x 16 inputs with
    its own normalisation, 1,000 outputs, and a dict as output (Hugging Face style)."""

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.head = nn.Linear(3 * 16 * 16, 1000)

    def forward(self, pixel_values):
        assert pixel_values.shape[1:] == (3, 16, 16)
        return {"logits": self.head(pixel_values.flatten(1)), "hidden": None}


@pytest.fixture(scope="module")
def digits_small():
    return build_dataset("digits", train=True, train_per_class=6)


def test_trainer_distils_from_a_plain_module(tmp_path):
    cfg = fast_config(tmp_path, *DISTILL, "name=plain")
    trainer = build_trainer(cfg, teacher=teacher_from_module(PlainNet(), num_classes=10))
    summary = trainer.fit()
    line = read_metrics(summary["run_dir"])[-1]
    assert line["loss/kd"] > 0 and "test/teacher_agreement" in line and "test/rank_fidelity" in line
    assert summary["teacher"] == {"kind": "live", "name": "PlainNet", "precision": "fp32"}


def test_wrong_output_width_is_a_clear_error(tmp_path):
    cfg = fast_config(tmp_path, *DISTILL, "name=wide")
    trainer = build_trainer(cfg, teacher=teacher_from_module(PlainNet(outputs=7), num_classes=10))
    with pytest.raises(UserError, match=r"shape \(16, 7\), expected \(batch, 10\) logits"):
        trainer.fit()
    with pytest.raises(UserError, match="the teacher has 7 classes but dataset 'digits' has 10"):
        build_trainer(
            fast_config(tmp_path, *DISTILL, "name=seven"), teacher=teacher_from_module(PlainNet(7), num_classes=7)
        )
    with pytest.raises(UserError, match="no .classifier layer; give num_classes"):
        from darkknowledge.engine.teacher import LiveTeacher

        LiveTeacher(PlainNet())


def test_cache_builder_takes_a_plain_module(tmp_path, digits_small):
    model = PlainNet()
    path = build_cache(
        model, digits_small, tmp_path / "c", num_views=2, precision="fp32", channels_last=False, dtype="float32"
    )
    cache = CachedTeacher(path)
    view0 = cache.logits(torch.arange(len(digits_small)), torch.zeros(len(digits_small), dtype=torch.long))
    batch = next(eval_batches(digits_small, len(digits_small), channels_last=False))
    torch.testing.assert_close(view0, model(batch.images), rtol=1e-5, atol=1e-5)  # view 0: the plain image
    with pytest.raises(UserError, match=r"expected \(batch, 10\) logits"):
        build_cache(PlainNet(outputs=12), digits_small, tmp_path / "d", num_views=2, precision="fp32")
    assert not (tmp_path / "d").exists()


def test_diagnose_takes_plain_modules(tmp_path, digits_small):
    result = diagnose_modules({"small": PlainNet(seed=0), "other": PlainNet(seed=3)}, digits_small, out_dir=tmp_path)
    assert [t.name for t in result.teachers] and result.ranks is not None
    assert (tmp_path / "report.html").is_file() and not result.geometry  # no features: no geometry
    with pytest.raises(UserError, match=r"model 'bad' returns \(\d+, 3\), expected \(batch, 10\)"):
        diagnose_modules({"bad": PlainNet(outputs=3)}, digits_small)


def test_adapter_fits_a_model_from_another_library(tmp_path, digits_small):
    hub = HubClassifier()
    picked = [7, 42, 100, 205, 311, 404, 512, 640, 777, 999]  # the hub model's index of each digit class
    spec = digits_small.spec
    adapter = TeacherAdapter(
        hub,
        classes=picked,
        input_size=(16, 16),
        in_channels=3,
        data_mean=spec.mean,
        data_std=spec.std,
        model_mean=HubClassifier.mean,
        model_std=HubClassifier.std,
    )
    batch = next(eval_batches(digits_small, 8, channels_last=False))
    # by hand: back to pixels, grey to RGB, resize, the hub's normalisation, its logits at the picked classes
    pixels = batch.images * spec.std[0] + spec.mean[0]
    x = F.interpolate(pixels.expand(-1, 3, -1, -1), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(HubClassifier.mean).view(1, 3, 1, 1)) / torch.tensor(HubClassifier.std).view(1, 3, 1, 1)
    expected = hub(x)["logits"][:, picked]
    torch.testing.assert_close(adapter(batch.images), expected)
    # and it distils like any teacher
    cfg = fast_config(tmp_path, *DISTILL, "name=hub")
    summary = build_trainer(cfg, teacher=teacher_from_module(adapter, num_classes=10)).fit()
    assert "test/teacher_agreement" in summary["final"]


def test_adapter_errors():
    with pytest.raises(UserError, match="give all of data_mean"):
        TeacherAdapter(PlainNet(), data_mean=(0.1,))
    with pytest.raises(UserError, match="out of range"):
        TeacherAdapter(PlainNet(), classes=[0, 12])(torch.zeros(2, 1, 8, 8))
    with pytest.raises(UserError, match="cannot find logits"):
        TeacherAdapter(nn.Identity(), output=None)._logits(("a", "b"))


class ConvBNNet(nn.Module):
    """A small convolutional model with BatchNorms (non-trivial statistics, eval mode), as a
    pretrained model of another library would be: 3-channel 16 x 16 inputs, 1,000 outputs."""

    def __init__(self, branch_on_shape: bool = False):
        super().__init__()
        torch.manual_seed(2)
        self.branch_on_shape = branch_on_shape
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x):
        if self.branch_on_shape and x.shape[1] != 3:  # Python control flow on a shape: torch.fx cannot trace this
            raise ValueError("3 channels expected")
        return self.body(x)


def test_batchnorms_inside_a_teacher_adapter_are_folded(tmp_path, digits_small):
    """prepare_for_inference (and so LiveTeacher, teacher_from_module and the cache builders)
    folds the BatchNorms of the model a TeacherAdapter wraps; the outputs stay the same."""
    from darkknowledge.engine.teacher import count_batchnorms, prepare_for_inference

    spec = digits_small.spec
    picked = [3, 50, 99, 150, 260, 333, 480, 600, 875, 990]
    adapter = TeacherAdapter(
        ConvBNNet(), classes=picked, input_size=(16, 16), in_channels=3,
        data_mean=spec.mean, data_std=spec.std, model_mean=(0.5, 0.5, 0.5), model_std=(0.25, 0.25, 0.25),
    )  # fmt: skip
    batch = next(eval_batches(digits_small, 16, channels_last=False))
    with torch.no_grad():
        reference = adapter(batch.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # folding works here: no warning
        prepared = prepare_for_inference(adapter, channels_last=False)
    assert count_batchnorms(adapter) == 2 and count_batchnorms(prepared) == 0  # the user's adapter is left alone
    with torch.no_grad():
        torch.testing.assert_close(prepared(batch.images), reference, rtol=1e-5, atol=1e-5)
    live = teacher_from_module(adapter, num_classes=10)
    assert count_batchnorms(live.model) == 0
    torch.testing.assert_close(live(batch), reference, rtol=1e-5, atol=1e-5)
    path = build_cache(adapter, digits_small, tmp_path / "c", num_views=1, precision="fp32", channels_last=False,
                       dtype="float32")  # fmt: skip
    cached = CachedTeacher(path).logits(torch.arange(16), torch.zeros(16, dtype=torch.long))
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    # not folding keeps them
    assert count_batchnorms(prepare_for_inference(adapter, fold_batchnorm=False)) == 2


class BranchingConvBN(nn.Module):
    """Convolution and BatchNorm called from a forward that branches on a shape: nothing
    that holds the BatchNorm can be traced."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-0.3, 0.3)
        self.bn.running_var.uniform_(0.5, 2.0)
        self.head = nn.Linear(8, 10)
        self.eval()

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.shape[-1] > 4:
            y = F.max_pool2d(y, 2)
        return self.head(y.mean((2, 3)))


def test_blocks_fold_inside_a_model_that_cannot_be_traced_and_what_cannot_warns_once():
    from darkknowledge.engine.teacher import count_batchnorms, prepare_for_inference

    x = torch.randn(4, 3, 16, 16)
    model = ConvBNNet(branch_on_shape=True)  # the model branches; its body is traceable and folds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = prepare_for_inference(TeacherAdapter(model), channels_last=False)
    assert count_batchnorms(prepared) == 0
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-5, atol=1e-5)
    stuck = BranchingConvBN()
    with pytest.warns(UserWarning, match="1 of its 1 BatchNorm layers are not folded") as caught:
        prepared = prepare_for_inference(TeacherAdapter(stuck), channels_last=False)
    assert len([w for w in caught if "BatchNorm" in str(w.message)]) == 1
    assert count_batchnorms(prepared) == 1
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), stuck(x))


def test_train_takes_a_module_teacher_live_or_as_the_source_of_a_cache(tmp_path):
    """runs.train(cfg, teacher=module): run live, or with teacher.cache + teacher.build the
    in-memory cache is built from the module and keyed by its weights."""
    from darkknowledge.engine.cache import read_cache_meta
    from darkknowledge.engine.checkpoint import state_digest
    from darkknowledge.runs import train

    model = PlainNet()
    live = train(fast_config(tmp_path, *DISTILL, "name=live"), teacher=model)
    assert live["teacher"] == {"kind": "live", "name": "PlainNet", "precision": "fp32"}
    cache = tmp_path / "module-cache"
    cfg = fast_config(tmp_path, *DISTILL, f"teacher.cache={cache}", "teacher.build=true", "teacher.views=2", "name=c")
    cached = train(cfg, teacher=model)
    assert cached["teacher"]["kind"] == "cache" and "test/teacher_agreement" in cached["final"]
    assert read_cache_meta(cache)["key"]["teacher_digest"] == state_digest(model.state_dict())
    with pytest.raises(UserError, match="other teacher"):
        build_trainer(cfg, teacher=PlainNet(seed=5))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_live_teachers_logits_are_ordinary_float32_tensors_autograd_can_save(precision):
    # inference-mode outputs cannot be saved for backward; the answer must be a normal tensor in
    # both precisions (bf16 logits are upcast, float32 ones cloned: never the model's own tensor)
    from darkknowledge.engine.teacher import LiveTeacher

    torch.manual_seed(0)
    teacher = LiveTeacher(nn.Linear(6, 4), num_classes=4, precision=precision, channels_last=False)

    class _Batch:
        inputs = torch.randn(3, 6)

    logits = teacher(_Batch())
    assert logits.dtype == torch.float32 and not logits.is_inference()
    student = torch.randn(3, 4, requires_grad=True)
    (student.log_softmax(-1) * logits.softmax(-1)).sum().backward()  # saves the teacher's tensor
    assert student.grad is not None
