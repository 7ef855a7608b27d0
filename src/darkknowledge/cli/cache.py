"""``darkknowledge cache build|info``: build a teacher-output cache ahead of time."""

from __future__ import annotations

import json
from pathlib import Path

from darkknowledge.cli.main import command


def _add_cache(p):
    p.add_argument("action", choices=["build", "info"], help="build a cache, or print a cache's key and size")
    p.add_argument("path", help="cache directory")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="teacher.checkpoint=..., data.* (must match the distillation run)",
    )
    p.add_argument(
        "--config", "-c", help="the distillation run's YAML config / preset (its data and teacher sections are used)"
    )
    p.add_argument(
        "--views", type=int, default=None, help="augmentation views per sample (default teacher.cache_views)"
    )
    p.add_argument("--storage", choices=["full", "topk"], default="full", help="all logits, or top-k + log-partition")
    p.add_argument("--topk", type=int, default=20, help="classes kept per view with --storage topk")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing cache (the old one stays until the new one is complete)",
    )


@command(
    "cache",
    "build (or inspect) a teacher-output cache of K augmentation views per training sample",
    "darkknowledge cache build runs/cache-h1024 teacher.checkpoint=runs/demo/teacher-mlp_h1024/last.pt data.name=digits --views 8\n"
    "  darkknowledge distill teacher.cache=runs/cache-h1024 teacher.checkpoint=runs/demo/teacher-mlp_h1024/last.pt model.name=cnn_w4",
    add_args=_add_cache,
)
def cmd_cache(args) -> int:
    from darkknowledge.config import load_config
    from darkknowledge.engine.assembly import check_teacher_fits, load_datasets, resolve_device
    from darkknowledge.engine.cache import CachedTeacher, build_cache, read_cache_meta
    from darkknowledge.engine.checkpoint import load_model
    from darkknowledge.errors import UserError

    if args.action == "info":
        cache = CachedTeacher(args.path)
        print(json.dumps(cache.meta, indent=2))
        return 0
    if args.views is not None and args.views < 1:
        raise UserError(f"--views must be at least 1, got {args.views}")
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    cfg = load_config(args.config, args.overrides)
    if not cfg.teacher.checkpoint:
        raise UserError("cache build needs teacher.checkpoint=PATH")
    target = Path(args.path)
    if target.exists():
        if not target.is_dir():
            raise UserError(f"cache path {target} is a file; choose a directory path")
        if not args.overwrite:
            raise UserError(
                f"cache directory {target} already exists; pass --overwrite to replace it (only a cache is ever replaced) or choose another path"
            )
        if not (target / "meta.json").is_file():
            raise UserError(
                f"--overwrite: {target} is not a teacher cache (no meta.json); it is left as it is: choose another path"
            )
        read_cache_meta(target)  # a damaged meta.json is an error too: only a readable cache is replaced
    device = resolve_device(cfg.engine.device)
    train_set, test_set = load_datasets(cfg)
    model, ckpt = load_model(cfg.teacher.checkpoint, device)
    check_teacher_fits(ckpt, train_set.spec, cfg.teacher.checkpoint)
    path = build_cache(
        model,
        train_set,
        args.path,
        num_views=args.views or cfg.teacher.cache_views,
        view_seed=cfg.teacher.cache_view_seed,
        storage=args.storage,
        topk=args.topk,
        dtype=args.dtype,
        precision=cfg.engine.precision,
        batch_size=cfg.data.eval_batch_size,
        device=device,
        channels_last=cfg.engine.channels_last,
        fold_batchnorm=cfg.teacher.fold_batchnorm,
        eval_dataset=test_set,
        overwrite=args.overwrite,
        progress=cfg.engine.progress,
    )
    print(json.dumps(CachedTeacher(path, verify=False).meta, indent=2))
    return 0
