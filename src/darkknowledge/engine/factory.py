"""The one factory of a run's parts: device, dataset splits, model, method, teacher signal and
training loader, built from a :class:`~darkknowledge.config.RunConfig` in a fixed order.

Fair by construction: the student's initial weights and the global random stream depend only
on (seed, model, data); the method and the teacher are built on a forked generator. The
trainer receives the parts and builds nothing itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import darkknowledge.engine.distributed as distributed
from darkknowledge.config import (
    CacheTeacher,
    CheckpointTeacher,
    DataConfig,
    GGUFTeacher,
    HFTeacher,
    ModuleTeacher,
    NoTeacher,
    RunConfig,
    dataset_keys,
)
from darkknowledge.data.base import DataSpec
from darkknowledge.data.loader import BatchLoader
from darkknowledge.data.loaders import is_streamed, is_tokens, training_loader
from darkknowledge.data.splits import Splits, load_splits
from darkknowledge.engine.cache import CachedTeacher, build_cache
from darkknowledge.engine.checkpoint import load_checkpoint, load_model, state_digest
from darkknowledge.engine.precision import resolve_precision
from darkknowledge.engine.runtime import apply_runtime
from darkknowledge.engine.seeding import seed_everything
from darkknowledge.engine.teacher import LiveTeacher, TeacherSignal
from darkknowledge.errors import UserError
from darkknowledge.methods import DistillMethod, build_method
from darkknowledge.methods.tokens import CHUNK_TOKENS, TokenMethod
from darkknowledge.native import batchnorm_relu


@dataclass
class RunParts:
    """Everything a :class:`~darkknowledge.engine.trainer.Trainer` trains with."""

    cfg: RunConfig
    rank: int
    world_size: int
    device: torch.device
    precision: str
    splits: Splits
    model: nn.Module
    method: DistillMethod | TokenMethod
    teacher: TeacherSignal | None
    loader: BatchLoader  # or a StreamingLoader: the same interface

    @property
    def spec(self) -> DataSpec:
        return self.splits.train.spec


def build_parts(
    cfg: RunConfig, *, splits: Splits | None = None, teacher: TeacherSignal | nn.Module | None = None
) -> RunParts:
    """The parts of run ``cfg``; ``splits`` and ``teacher`` may be given (already loaded data, a
    teacher built by code: a signal, or an ``nn.Module`` run live or, with ``teacher.cache``, the
    source of that cache), everything else comes from the configuration."""
    from darkknowledge.models import build_model

    apply_runtime(cfg.engine.threads)
    # under torchrun: join the process group (one rank per process); else rank 0 of 1
    rank, world_size, device = distributed.setup(resolve_device(cfg.engine.device))
    precision = resolve_precision(cfg.engine.precision, device)
    if splits is None:
        splits = load_splits(cfg.data)
    elif cfg.data.val_per_class and splits.val is None:
        raise UserError("data.val_per_class is set but the given splits have no validation split; give Splits with one")
    spec = splits.train.spec
    if spec.num_classes < 2:
        raise UserError(
            f"dataset {spec.name!r} has {spec.num_classes} class (data.classes={cfg.data.classes}); "
            "classification needs at least 2"
        )

    seed_everything(cfg.seed, cfg.engine.deterministic)
    model = build_model(cfg.model.name, num_classes=spec.num_classes, in_channels=spec.in_channels)
    if cfg.model.init:
        load_initial_weights(model, cfg.model.init, cfg.model.name)
    model = model.to(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        built = build_method(cfg.method.name, cfg.method.params, num_classes=spec.num_classes)
        # a language model: the method's own loss over the valid tokens, chunked over the vocabulary
        method: DistillMethod | TokenMethod = (
            TokenMethod(built, chunk_tokens=cfg.engine.loss_chunk_tokens or CHUNK_TOKENS)
            if is_tokens(splits.train)
            else built
        )
        method = method.to(device)
        signal: TeacherSignal | None = None
        if not method.needs_teacher:
            pass
        elif teacher is None or (isinstance(teacher, nn.Module) and not isinstance(teacher, TeacherSignal)):
            # a cache built here: rank 0 builds it, the others open it afterwards
            shared_build = world_size > 1 and isinstance(cfg.teacher, CacheTeacher)
            if shared_build and rank != 0:
                distributed.barrier()
            signal = build_teacher_signal(cfg, splits, device, module=teacher)
            if shared_build and rank == 0:
                distributed.barrier()
        else:  # a signal given by code (any object with the TeacherSignal members)
            signal = teacher
            check_given_signal(cfg, signal)
    batchnorm_relu.use_kernel(model, cfg.engine.fused_bn_relu and device.type == "cpu")
    if cfg.engine.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    if signal is not None and signal.num_classes != spec.num_classes:
        raise UserError(
            f"the teacher has {signal.num_classes} classes but dataset {spec.name!r} has "
            f"{spec.num_classes}; use a teacher for the same data/classes"
        )
    loader = training_loader(
        splits.train,
        cfg.data,
        seed=cfg.seed,
        device=device,
        channels_last=cfg.engine.channels_last,
        view_table=signal.training_views(spec, cfg.data.augment) if signal is not None else None,
        rank=rank,
        world_size=world_size,
    )
    if len(loader) == 0:
        raise UserError(
            f"data.batch_size={cfg.data.batch_size} is larger than the training set ({len(splits.train)} samples); "
            "lower it"
        )
    return RunParts(cfg, rank, world_size, device, precision, splits, model, method, signal, loader)


def resolve_device(name: str) -> torch.device:
    """``engine.device`` / ``--device`` as a torch device that exists on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: this machine has no CUDA device; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here; "
                f"use cuda:0..{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise UserError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


# ---------------------------------------------------------------------------------------- teachers


def build_teacher_signal(
    cfg: RunConfig, splits: Splits, device: torch.device, *, module: nn.Module | None = None
) -> TeacherSignal:
    """The teacher signal of ``cfg.teacher``, by its kind; ``module``: a teacher given by code
    (``runs.train(cfg, teacher=module)``), see :func:`_given_module_teacher`."""
    if module is not None:
        return _given_module_teacher(cfg, splits, device, module)
    return TEACHER_BUILDERS[cfg.teacher.kind](cfg, splits, device)


def check_given_signal(cfg: RunConfig, signal: TeacherSignal) -> None:
    """A live signal given by code with ``teacher.cache`` set would leave the cache unused: an error."""
    if getattr(signal, "answers_any_input", False) and isinstance(cfg.teacher, CacheTeacher):
        raise UserError(
            f"teacher.cache={cfg.teacher.cache} is set but a live teacher signal was given, which would run instead "
            "of the cache: give the nn.Module itself (runs.train(cfg, teacher=model)) to build or check the cache "
            "from it, or leave teacher.cache out"
        )


def _given_module_teacher(cfg: RunConfig, splits: Splits, device: torch.device, module: nn.Module) -> TeacherSignal:
    """A teacher ``nn.Module`` given by code: with ``teacher.cache``, the model that cache is built
    from (``teacher.build``) and checked against (its weight digest); otherwise run live (it
    replaces ``teacher.checkpoint`` / ``teacher.module``, as a given signal does)."""
    if not isinstance(module, nn.Module):
        raise UserError(f"teacher= takes a TeacherSignal or a torch nn.Module, not a {type(module).__name__}")
    teacher = cfg.teacher
    if isinstance(teacher, CacheTeacher):
        if teacher.checkpoint:
            raise UserError(
                f"teacher.checkpoint={teacher.checkpoint} and a teacher module were both given for teacher.cache: "
                "give one teacher (the cache is keyed by its weights)"
            )
        if is_tokens(splits.train):
            raise UserError("a language-model teacher.cache is built from teacher.checkpoint, not from a given module")
        if is_streamed(splits.train):
            return _view_cache(cfg, teacher, splits, device, module)
        return _cache_teacher(cfg, splits, device, module)
    return LiveTeacher(
        module.to(device),
        num_classes=splits.train.spec.num_classes,
        precision=resolve_precision(cfg.engine.precision, device),
        channels_last=cfg.engine.channels_last,
        fold_batchnorm=getattr(teacher, "fold_batchnorm", True),
        compile=cfg.engine.compile_teacher,
        name=type(module).__name__,
    )


_NO_CACHE_SOURCE = (
    "teacher.build=true needs teacher.checkpoint=PATH or a teacher module given to runs.train(cfg, teacher=model) "
    "(the teacher whose outputs are cached)"
)


def _cache_source(
    teacher: CacheTeacher, spec: DataSpec, device: torch.device, module: nn.Module | None
) -> tuple[nn.Module | None, str | None]:
    """The model ``teacher.cache`` is built from and the digest of its weights (as given, before
    any folding) the cache must carry: the given ``module``, else ``teacher.checkpoint``'s model,
    else neither (an existing cache is opened without a teacher check)."""
    if module is not None:
        model = module.to(device)
    elif teacher.checkpoint:
        model, ckpt = load_model(teacher.checkpoint, device)
        check_teacher_fits(ckpt, spec, teacher.checkpoint)
    elif teacher.build:
        raise UserError(_NO_CACHE_SOURCE)
    else:
        return None, None
    return model, state_digest(model.state_dict())


def _no_teacher(cfg: RunConfig, splits: Splits, device: torch.device) -> TeacherSignal:
    raise UserError(
        f"method {cfg.method.name!r} needs a teacher: set teacher.checkpoint=PATH "
        "(a best.pt of `darkknowledge train`), teacher.cache=PATH or teacher.module=package.module:factory"
    )


def _checkpoint_teacher(cfg: RunConfig, splits: Splits, device: torch.device) -> TeacherSignal:
    teacher = cfg.teacher
    assert isinstance(teacher, CheckpointTeacher)
    model, ckpt = load_model(teacher.checkpoint, device)
    check_teacher_fits(ckpt, splits.train.spec, teacher.checkpoint)
    return LiveTeacher(
        model,
        precision=resolve_precision(cfg.engine.precision, device),
        channels_last=cfg.engine.channels_last,
        fold_batchnorm=teacher.fold_batchnorm,
        compile=cfg.engine.compile_teacher,
        name=ckpt["model_name"],
    )


def _module_teacher(cfg: RunConfig, splits: Splits, device: torch.device) -> TeacherSignal:
    teacher = cfg.teacher
    assert isinstance(teacher, ModuleTeacher)
    factory = import_factory(teacher.module, "teacher.module")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"teacher.module={teacher.module} returned a {type(model).__name__}, not a torch nn.Module")
    return LiveTeacher(
        model.to(device),
        num_classes=splits.train.spec.num_classes,
        precision=resolve_precision(cfg.engine.precision, device),
        channels_last=cfg.engine.channels_last,
        fold_batchnorm=teacher.fold_batchnorm,
        compile=cfg.engine.compile_teacher,
        name=teacher.module,
    )


def _cache_teacher(
    cfg: RunConfig, splits: Splits, device: torch.device, module: nn.Module | None = None
) -> TeacherSignal:
    """Open ``teacher.cache`` (building it first only when ``teacher.build``) and check that it
    belongs to this run's data and, when ``teacher.checkpoint`` (or a teacher ``module``) is given,
    to that teacher."""
    teacher = cfg.teacher
    assert isinstance(teacher, CacheTeacher)
    if is_tokens(splits.train):
        return _language_model_cache(cfg, teacher, splits, device)
    if teacher.pretrained_source:
        raise UserError("teacher.hf / teacher.gguf: a pretrained language model needs a text dataset (data.name)")
    if is_streamed(splits.train):
        return _view_cache(cfg, teacher, splits, device)
    path = Path(teacher.cache)
    model, digest = _cache_source(teacher, splits.train.spec, device, module)
    if model is not None and teacher.build and not (path / "meta.json").exists():
        build_cache(
            model,
            splits.train,
            path,
            num_views=teacher.views,
            view_seed=teacher.view_seed,
            precision=cfg.engine.precision,
            device=device,
            channels_last=cfg.engine.channels_last,
            fold_batchnorm=teacher.fold_batchnorm,
            eval_dataset=splits.test,
            progress=cfg.engine.progress,
        )
    if not (path / "meta.json").exists():
        raise UserError(
            f"teacher cache {path} does not exist: build it with `darkknowledge cache build {path} "
            "teacher.checkpoint=PATH ...` or set teacher.build=true (with teacher.checkpoint) to build it first"
        )
    cache = CachedTeacher(path, device=device)
    cache.check_matches(splits.train, digest)
    if cache.num_classes != splits.train.spec.num_classes:
        raise UserError(
            f"teacher cache {path} has {cache.num_classes} classes, dataset has {splits.train.spec.num_classes}"
        )
    return cache


def _view_cache(
    cfg: RunConfig, teacher: CacheTeacher, splits: Splits, device: torch.device, module: nn.Module | None = None
) -> TeacherSignal:
    """A streamed dataset's view-keyed cache: K stored views (boxes + flips) per image with the teacher's
    top-k logits, keyed by the images' digests and the teacher's weights (``teacher.checkpoint``'s, or
    those of a teacher ``module`` given by code)."""
    from darkknowledge.engine.view_cache import ViewCachedTeacher, build_view_cache

    path = Path(teacher.cache)
    source = splits.train.source
    spec = splits.train.spec
    model, digest = _cache_source(teacher, spec, device, module)
    if model is not None and teacher.build and not (path / "meta.json").exists():
        build_view_cache(
            model,
            source,
            path,
            mean=spec.mean,
            std=spec.std,
            image_size=cfg.data.crop_size,
            num_views=teacher.views,
            view_seed=teacher.view_seed,
            topk=min(teacher.topk, spec.num_classes - 1),
            precision=cfg.engine.precision,
            device=device,
            channels_last=cfg.engine.channels_last,
            progress=cfg.engine.progress,
        )
    if not (path / "meta.json").exists():
        raise UserError(
            f"teacher cache {path} does not exist: set teacher.build=true (with teacher.checkpoint, or with the "
            "teacher module given to runs.train) to build it first"
        )
    return ViewCachedTeacher(path, source=source, teacher_digest=digest, epochs=cfg.optim.epochs, device=device)


def _language_model_cache(cfg: RunConfig, teacher: CacheTeacher, splits: Splits, device: torch.device) -> TeacherSignal:
    """A language model's cache of top-k logits over the training windows (built from
    ``teacher.checkpoint``, ``teacher.hf`` or ``teacher.gguf`` with ``teacher.build``), keyed by
    corpus, tokenizer and teacher weights."""
    from darkknowledge.data.tokens import TokenBatchLoader
    from darkknowledge.engine.lm_cache import LMCachedTeacher, LMCacheKey, LMTeacherCache, write_lm_cache

    path = Path(teacher.cache)
    meta = splits.train.array.meta
    key = None
    model: nn.Module | None = None
    pretrained = teacher.pretrained_source
    if teacher.checkpoint:
        model, ckpt = load_model(teacher.checkpoint, device)
        check_teacher_fits(ckpt, splits.train.spec, teacher.checkpoint)
        key = LMCacheKey(meta["corpus_digest"], meta["tokenizer_digest"], state_digest(model.state_dict()))
    elif pretrained:
        from darkknowledge.models.lm import weights_digest

        check_teacher_tokenizer(cfg.data.tokenizer, pretrained[1])
        key = LMCacheKey(meta["corpus_digest"], meta["tokenizer_digest"], weights_digest(pretrained[1]))
    elif teacher.build:
        raise UserError(
            "teacher.build=true needs teacher.checkpoint=PATH, teacher.hf=DIR or teacher.gguf=FILE "
            "(the teacher whose outputs are cached)"
        )
    if key is not None and teacher.build and not (path / "meta.json").exists():
        if model is None:
            assert pretrained is not None
            model = load_language_model_teacher(cfg.data, *pretrained).to(device)
        precision = resolve_precision(cfg.engine.precision, device)
        live = LiveTeacher(
            model, precision=precision, channels_last=False, fold_batchnorm=False, compile=cfg.engine.compile_teacher
        )
        loader = TokenBatchLoader(splits.train, cfg.data.eval_batch_size, train=False, device=device)
        batches = ((b.tokens, live(b), b.targets) for b in loader.epoch(0))
        write_lm_cache(path, key, batches, k=min(teacher.topk, splits.train.spec.num_classes))
    if not (path / "meta.json").exists():
        raise UserError(
            f"teacher cache {path} does not exist: set teacher.build=true (with teacher.checkpoint, teacher.hf or "
            "teacher.gguf) to build it first"
        )
    cache = LMTeacherCache.open(path, key)
    if cache.num_windows != len(splits.train):
        raise UserError(
            f"teacher cache {path} holds {cache.num_windows} windows, the training split has {len(splits.train)} "
            "(another context length or packing); build a cache for this data"
        )
    return LMCachedTeacher(cache, device, teacher.missing_mass)


def check_teacher_tokenizer(tokenizer: str, teacher: str) -> None:
    """A pretrained teacher (``teacher.hf`` / ``teacher.gguf`` = ``teacher``) brings its own tokenizer:
    the data (``data.tokenizer``) must be tokenized with it, so that teacher and student share one vocabulary."""
    if Path(tokenizer).resolve() != Path(teacher).resolve():
        raise UserError(
            f"teacher {teacher} has its own tokenizer but the data is tokenized with data.tokenizer={tokenizer}; "
            f"set data.tokenizer={teacher} so that teacher and student share one vocabulary"
        )


def load_language_model_teacher(data: DataConfig, kind: str, path: str) -> nn.Module:
    """A pretrained causal LM (``kind`` ``hf`` or ``gguf``) whose tokenizer is ``data``'s, on the CPU."""
    from darkknowledge.models.lm import load_pretrained_lm

    check_teacher_tokenizer(data.tokenizer, path)
    return load_pretrained_lm(kind, path)


def _language_model_teacher(cfg: RunConfig, splits: Splits, device: torch.device) -> TeacherSignal:
    """A pretrained causal LM (``teacher.hf`` / ``teacher.gguf``) whose tokenizer is the data's."""
    source = cfg.teacher.pretrained_source
    assert source is not None
    model = load_language_model_teacher(cfg.data, *source)
    return LiveTeacher(
        model.to(device),
        precision=resolve_precision(cfg.engine.precision, device),
        channels_last=False,
        fold_batchnorm=False,
        compile=cfg.engine.compile_teacher,
        name=Path(source[1]).name,
    )


TEACHER_BUILDERS: dict[str, Callable[[RunConfig, Splits, torch.device], TeacherSignal]] = {
    NoTeacher.model_fields["kind"].default: _no_teacher,
    CheckpointTeacher.model_fields["kind"].default: _checkpoint_teacher,
    ModuleTeacher.model_fields["kind"].default: _module_teacher,
    CacheTeacher.model_fields["kind"].default: _cache_teacher,
    HFTeacher.model_fields["kind"].default: _language_model_teacher,
    GGUFTeacher.model_fields["kind"].default: _language_model_teacher,
}


def import_factory(spec: str, setting: str) -> Callable[[], Any]:
    """``package.module:name`` -> the callable it names (one-line errors)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{setting}={spec!r} is not of the form package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{setting}={spec}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{setting}={spec}: {module_name} has no callable {attr!r}")
    return factory


def check_teacher_fits(ckpt: dict[str, Any], spec: DataSpec, where: str) -> None:
    """A checkpoint's model takes this data: its classes, channels and input size."""
    if int(ckpt["num_classes"]) != spec.num_classes:
        raise UserError(
            f"teacher {where} predicts {ckpt['num_classes']} classes but dataset {spec.name!r} has "
            f"{spec.num_classes}; use a teacher trained on the same data/classes"
        )
    if int(ckpt["in_channels"]) != spec.in_channels:
        raise UserError(
            f"teacher {where} takes {ckpt['in_channels']}-channel images but dataset {spec.name!r} has {spec.in_channels}"
        )
    trained = (ckpt.get("data") or {}).get("image_size")
    if trained and tuple(trained) != tuple(spec.image_size):
        h, w = trained
        raise UserError(
            f"teacher {where} was trained on {h}x{w} images but the data gives {spec.image_size[0]}x"
            f"{spec.image_size[1]}; set data.image_size={h} (or use a teacher trained at this size)"
        )


def load_initial_weights(model: nn.Module, path: str, model_name: str) -> None:
    """``model.init``: copy a checkpoint's model weights into a freshly built ``model_name``."""
    ckpt = load_checkpoint(path)
    if ckpt["model_name"] != model_name:
        raise UserError(
            f"model.init={path} holds a {ckpt['model_name']!r} but model.name is {model_name!r}; "
            "set model.name to the checkpoint's architecture"
        )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(
            f"model.init={path}: its weights do not fit this {model_name!r} "
            f"({str(exc).splitlines()[0][:120]}); check the dataset's classes and channels"
        ) from None


# ---------------------------------------------------------------------------------------- saved data settings


def checkpoint_data_config(ckpt: dict[str, Any], overrides: list[str], command: str) -> DataConfig:
    """The data section a checkpoint was trained with, changed by ``data.*`` overrides
    (``command`` names the sub-command in errors; other keys are refused)."""
    from darkknowledge.config import apply_overrides, validate_config

    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise UserError(f"{command} only takes data.* overrides, got {bad[0]!r}")
    data = apply_overrides({"data": _saved_section(ckpt, "data", command)}, overrides)
    return validate_config(data, source=command).data


def teacher_data_section(path: str) -> dict[str, Any]:
    """The settings saying which data a teacher checkpoint was trained on (not how it was batched)."""
    data = _saved_section(load_checkpoint(path), "data", f"teacher checkpoint {path}")
    return {k: data[k] for k in dataset_keys() if k in data}


def _saved_section(ckpt: dict[str, Any], section: str, where: str) -> dict[str, Any]:
    """One section of the run configuration embedded in a checkpoint ({} if absent)."""
    import yaml

    try:
        saved = yaml.safe_load(ckpt.get("config") or "{}") or {}
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get(section, {}), dict):
        raise UserError(
            f"{where}: the configuration stored in the checkpoint is damaged (not a YAML mapping); "
            "pass the data settings as data.* overrides or re-create the checkpoint"
        )
    return saved.get(section) or {}
