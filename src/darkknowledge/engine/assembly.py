"""Assembling a run's parts from its configuration: dataset splits, the data section of a
checkpoint, the teacher signal, and the checks that a teacher fits the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from darkknowledge.config import DataConfig, RunConfig
from darkknowledge.data.base import ArrayDataset
from darkknowledge.engine.cache import CachedTeacher, build_cache
from darkknowledge.engine.checkpoint import load_checkpoint, load_model, state_digest
from darkknowledge.engine.precision import resolve_precision
from darkknowledge.engine.teacher import LiveTeacher, TeacherSignal
from darkknowledge.errors import UserError


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
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0..{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise UserError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


SPLITS = ("train", "val", "test")


def build_split(data: DataConfig, split: str) -> ArrayDataset:
    """One split of the configured dataset: ``train`` (without the validation images),
    ``val`` (``data.val_per_class`` images per class held out of the training split) or ``test``."""
    from darkknowledge.data import build_dataset

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "val" and not data.val_per_class:
        raise UserError(
            "there is no validation split: set data.val_per_class=N (images per class held out of training)"
        )
    if split == "test":
        return build_dataset(
            data.name,
            root=data.root,
            train=False,
            download=data.download,
            classes=data.classes,
            train_per_class=data.test_per_class,
            image_size=data.image_size,
            seed=data.subset_seed,
        )
    train, val = split_validation(_training_files(data), data.val_per_class, data.subset_seed)
    return val if split == "val" else train


def _training_files(data: DataConfig) -> ArrayDataset:
    """The training split as read (``train_per_class`` applied), before the validation rows are held out."""
    from darkknowledge.data import build_dataset

    return build_dataset(
        data.name,
        root=data.root,
        train=True,
        download=data.download,
        classes=data.classes,
        train_per_class=data.train_per_class,
        image_size=data.image_size,
        seed=data.subset_seed,
    )


def split_validation(full: ArrayDataset, per_class: int | None, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(training rows, validation rows): ``per_class`` rows of each class, chosen by a generator
    seeded with (seed, class) — the same rows for every run, model and method."""
    if not per_class:
        return full, None
    held = []
    for c in range(full.spec.num_classes):
        rows = (full.targets == c).nonzero().flatten()
        if len(rows) <= per_class:
            raise UserError(
                f"data.val_per_class={per_class} leaves no training image of class {c} "
                f"({len(rows)} in the training split); lower it"
            )
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + c * 7919 + 424_242) % (2**63 - 1))
        held.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    val_rows = torch.cat(held).sort().values
    keep = torch.ones(len(full), dtype=torch.bool)
    keep[val_rows] = False
    return full.subset(keep.nonzero().flatten()), full.subset(val_rows)


def load_splits(data: DataConfig) -> tuple[ArrayDataset, ArrayDataset | None, ArrayDataset]:
    """(train, val or None, test), reading the training files once."""
    train, val = split_validation(_training_files(data), data.val_per_class, data.subset_seed)
    return train, val, build_split(data, "test")


def load_datasets(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """The configured training split (validation images removed) and the test split."""
    train, _, test = load_splits(cfg.data)
    return train, test


def checkpoint_data_config(ckpt: dict[str, Any], overrides: list[str], command: str) -> DataConfig:
    """The data section a checkpoint was trained with, changed by ``data.*`` overrides
    (``command`` names the sub-command in errors; other keys are refused)."""
    from darkknowledge.config import apply_overrides, validate_config

    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise UserError(f"{command} only takes data.* overrides, got {bad[0]!r}")
    return validate_config(
        apply_overrides({"data": _saved_section(ckpt, "data", command)}, overrides), source=command
    ).data


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


# The keys that say which data a model was trained on (not how it was batched).
DATASET_KEYS = (
    "name",
    "root",
    "download",
    "classes",
    "train_per_class",
    "test_per_class",
    "val_per_class",
    "image_size",
    "subset_seed",
)


def teacher_data_section(path: str) -> dict[str, Any]:
    """The dataset keys of the ``data`` section a teacher checkpoint was trained with."""
    data = _saved_section(load_checkpoint(path), "data", f"teacher checkpoint {path}")
    return {k: data[k] for k in DATASET_KEYS if k in data and k in DataConfig.model_fields}


def build_teacher_signal(
    cfg: RunConfig, train_set: ArrayDataset, device: torch.device, eval_set: ArrayDataset | None = None
) -> TeacherSignal:
    """Live teacher from ``teacher.checkpoint`` or a cache from ``teacher.cache`` (built with ``eval_set`` logits)."""
    spec = train_set.spec
    if cfg.teacher.cache:
        return open_cache_for_run(cfg, train_set, device, eval_set)
    if not cfg.teacher.checkpoint:
        raise UserError(
            f"method {cfg.method.name!r} needs a teacher: set teacher.checkpoint=PATH "
            "(a best.pt of `darkknowledge train`) or teacher.cache=PATH"
        )
    model, ckpt = load_model(cfg.teacher.checkpoint, device)
    check_teacher_fits(ckpt, spec, cfg.teacher.checkpoint)
    precision = resolve_precision(cfg.engine.precision, device)
    return LiveTeacher(
        model,
        precision=precision,
        channels_last=cfg.engine.channels_last,
        fold_batchnorm=cfg.teacher.fold_batchnorm,
        name=ckpt["model_name"],
    )


def load_initial_weights(model: torch.nn.Module, path: str, model_name: str) -> None:
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


def check_teacher_fits(ckpt: dict[str, Any], spec, where: str) -> None:
    if int(ckpt["num_classes"]) != spec.num_classes:
        raise UserError(
            f"teacher {where} predicts {ckpt['num_classes']} classes but dataset {spec.name!r} has "
            f"{spec.num_classes}; use a teacher trained on the same data/classes"
        )
    if int(ckpt["in_channels"]) != spec.in_channels:
        raise UserError(
            f"teacher {where} takes {ckpt['in_channels']}-channel images but dataset {spec.name!r} has {spec.in_channels}"
        )


def open_cache_for_run(
    cfg, train_set: ArrayDataset, device: torch.device, eval_set: ArrayDataset | None = None
) -> CachedTeacher:
    """``teacher.cache`` of a run: open it (building it first from ``teacher.checkpoint``
    if it does not exist yet, with the teacher's logits on ``eval_set`` for agreement and
    rank fidelity) and check that it belongs to this run's teacher and data."""
    path = Path(cfg.teacher.cache)
    digest = None
    if cfg.teacher.checkpoint:
        model, ckpt = load_model(cfg.teacher.checkpoint, device)
        check_teacher_fits(ckpt, train_set.spec, cfg.teacher.checkpoint)
        digest = state_digest(model.state_dict())
        if not (path / "meta.json").exists():
            build_cache(
                model,
                train_set,
                path,
                num_views=cfg.teacher.cache_views,
                view_seed=cfg.teacher.cache_view_seed,
                precision=cfg.engine.precision,
                device=device,
                channels_last=cfg.engine.channels_last,
                fold_batchnorm=cfg.teacher.fold_batchnorm,
                eval_dataset=eval_set,
                progress=cfg.engine.progress,
            )
    cache = CachedTeacher(path, device=device)
    cache.check_matches(train_set, digest)
    if cache.num_classes != train_set.spec.num_classes:
        raise UserError(
            f"teacher cache {path} has {cache.num_classes} classes, dataset has {train_set.spec.num_classes}"
        )
    return cache
