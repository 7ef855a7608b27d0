"""``darkknowledge cache build|info``: build a teacher-output cache ahead of time."""

from __future__ import annotations

import argparse
import json

from darkknowledge.cli.command import Command


def _add_cache(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--views", type=int, default=None, help="augmentation views per sample (default teacher.views: 8)")
    p.add_argument("--storage", choices=["full", "topk"], default="full", help="all logits, or top-k + log-partition")
    p.add_argument("--topk", type=int, default=20, help="classes kept per view with --storage topk")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing cache (the old one stays until the new one is complete)",
    )


def _cache(args: argparse.Namespace) -> int:
    from darkknowledge.config import load_config
    from darkknowledge.runs import build_teacher_cache, cache_info

    if args.action == "info":
        meta = cache_info(args.path)
    else:
        meta = build_teacher_cache(
            args.path,
            load_config(args.config, args.overrides),
            views=args.views,
            storage=args.storage,
            topk=args.topk,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
    print(json.dumps(meta, indent=2))
    return 0


CACHE = Command(
    "build (or inspect) a teacher-output cache of K augmentation views per training sample",
    "darkknowledge cache build runs/cache-h1024 teacher.checkpoint=runs/demo/teacher-mlp_h1024/last.pt data.name=digits --views 8\n"
    "  darkknowledge distill teacher.cache=runs/cache-h1024 teacher.checkpoint=runs/demo/teacher-mlp_h1024/last.pt model.name=cnn_w4",
    _add_cache,
    _cache,
)
